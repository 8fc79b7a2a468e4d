"""Shared pieces of the Triton ternary kernels: the optional Triton import, device checks,
M bucketing and the autotune configurations.

This module never imports Triton at module level, so it is safe to import with Triton absent.
The kernel modules (``triton_gemm``, ``triton_gemv``, ``triton_quant``) do import Triton and are
only imported lazily, by :mod:`.triton_backend`, once :func:`triton_usable` said yes.

Autotuning is keyed by ``(M_BUCKET, N, K, GROUP_SIZE)`` plus the tensors' dtypes (Triton adds
those). The configuration lists were chosen for the FLUX.1-dev linear shapes
(N x K in 18432x3072, 9216x3072, 3072x3072, 12288x3072, 3072x12288, 21504x3072, 3072x15360;
M in 1, 2, 256, 1024, 4096, 4608). Under ``TRITON_INTERPRET=1`` every list collapses to one
interpreter-friendly configuration (several configs would make the autotuner ask a GPU driver
for timings, and the interpreter costs ~5 ms per program x K-iteration, so blocks are large).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)

MIN_TRITON: tuple[int, int] = (3, 1)
"""Oldest Triton the kernels are written for (``tl.dot`` with ``input_precision``, 3-D reductions)."""

SMALL_M_MAX = 16
"""Calls with at most this many rows (tokens) take the small-M (GEMV / split-K) kernel."""

PACK_BLOCK = 128  # weights per 32-byte pack block of the runtime layout (see core/packing.py)


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the Triton CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def triton_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the importable Triton, or ``None`` if it is missing or broken."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except Exception as e:  # a broken install must not break `import ternaryflux.kernels`
        log.info("triton is installed but cannot be imported (%s: %s)", type(e).__name__, e)
        return None
    try:
        major, minor = (int(p) for p in triton.__version__.split(".")[:2])
    except ValueError:
        return None
    return major, minor


def triton_usable() -> bool:
    """Triton imports and is at least :data:`MIN_TRITON`."""
    v = triton_version()
    return v is not None and v >= MIN_TRITON


@functools.cache
def cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device (``(0, 0)`` for anything else)."""
    if device.type != "cuda":
        return (0, 0)
    return cuda_capability(device.index if device.index is not None else torch.cuda.current_device())


def m_bucket(m: int) -> int:
    """Autotune bucket of the row count: the next power of two, clamped to [1, 8192]."""
    b = 1
    while b < m and b < 8192:
        b *= 2
    return b


# --------------------------------------------------------------------------- configurations
# Plain tuples so this module needs no Triton: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages)
_GEMM_LARGE_M = [  # M >= 512: compute bound (FLUX M = 1024, 4096, 4608)
    (128, 128, 128, 8, 8, 3),
    (128, 256, 128, 8, 8, 3),
    (256, 128, 128, 8, 8, 3),
    (128, 128, 128, 8, 4, 4),
    (128, 128, 256, 8, 8, 3),
    (128, 256, 256, 8, 8, 3),
]
_GEMM_MID_M = [  # 16 < M < 512 (FLUX M = 256)
    (64, 128, 128, 8, 4, 4),
    (128, 128, 128, 8, 8, 3),
    (64, 256, 128, 8, 8, 3),
    (128, 64, 128, 8, 4, 4),
    (64, 128, 256, 8, 4, 3),
]
_GEMM_INTERPRET = (64, 64, 128, 8, 4, 1)

# (BLOCK_N, BLOCK_K, warps, stages); BLOCK_M is the M bucket itself
_GEMV = [
    (16, 512, 4, 3),
    (32, 256, 4, 3),
    (16, 1024, 4, 2),
    (32, 512, 8, 3),
    (64, 256, 8, 3),
    (8, 1024, 4, 3),
    (32, 128, 4, 4),  # group_size 128
    (64, 128, 4, 4),
]
_GEMV_INTERPRET = (64, 128, 4, 1)


def _config(kw: dict[str, Any], warps: int, stages: int) -> Any:
    import triton

    return triton.Config(kw, num_warps=warps, num_stages=stages)


def gemm_configs() -> list[Any]:
    """Autotune list of the tiled GEMM (A16 and A8)."""
    if interpreting():
        bm, bn, bk, gm, w, s = _GEMM_INTERPRET
        return [_config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm}, w, s)]
    seen, out = set(), []
    for bm, bn, bk, gm, w, s in _GEMM_LARGE_M + _GEMM_MID_M:
        if (bm, bn, bk, gm, w, s) in seen:
            continue
        seen.add((bm, bn, bk, gm, w, s))
        out.append(_config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm}, w, s))
    return out


def prune_gemm_configs(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Keep the configs of the call's M bucket whose K tile fits inside one scale group."""
    args = {**named_args, **kwargs}
    mb, gs = int(args["M_BUCKET"]), int(args["GROUP_SIZE"])
    wanted = set(_GEMM_LARGE_M if mb >= 512 else _GEMM_MID_M)
    keep = []
    for c in configs:
        kw = c.kwargs
        key = (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw["GROUP_M"], c.num_warps, c.num_stages)
        if key not in wanted or (gs and gs % kw["BLOCK_K"]):
            continue
        if kw["BLOCK_M"] > 2 * mb:  # never tile far beyond the rows there are
            continue
        keep.append(c)
    return keep or [c for c in configs if not gs or gs % c.kwargs["BLOCK_K"] == 0][:1]


def gemv_configs() -> list[Any]:
    """Autotune list of the small-M kernel."""
    rows = [_GEMV_INTERPRET] if interpreting() else _GEMV
    return [_config({"BLOCK_N": bn, "BLOCK_K": bk}, w, s) for bn, bk, w, s in rows]


def prune_gemv_configs(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """K tile inside one scale group, and the per-program product tile bounded for larger M."""
    args = {**named_args, **kwargs}
    bm, gs = int(args["BLOCK_M"]), int(args["GROUP_SIZE"])
    keep = []
    for c in configs:
        bn, bk = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        if gs and gs % bk:
            continue
        if args.get("USE_DOT") and bn < 16:  # tl.dot needs every dim >= 16 on a GPU
            continue
        if not args.get("USE_DOT") and bm * bn * bk // 4 > 16384:
            continue
        keep.append(c)
    return keep or [min(configs, key=lambda c: (c.kwargs["BLOCK_K"], -c.kwargs["BLOCK_N"]))]
