"""Shared pieces of the Triton ternary kernels: the optional Triton import, device checks,
M bucketing and the autotune configurations.

This module never imports Triton at module level, so it is safe to import with Triton absent.
The kernel modules (``triton_gemm``, ``triton_gemv``, ``triton_quant``) do import Triton and are
only imported lazily, by :mod:`.triton_backend`, once :func:`triton_usable` said yes.

Autotuning is keyed by ``(M_BUCKET, N, K, GROUP_SIZE)`` plus the tensors' dtypes (Triton adds
those). The candidate lists were chosen for the FLUX.1-dev linear shapes (N x K in 18432x3072,
9216x3072, 3072x3072, 12288x3072, 3072x12288, 21504x3072, 3072x15360) and FLUX.2 [klein]'s
(hidden H = 3072 / 4096: 9H x H, H x 4H, 6H x H, H x 3H, 3H x H), M in 1, 2, 256, 1024, 4096,
4608; the prune hooks keep, per device, only what ``bench/aot_check.py`` compiled cleanly for
that target (:data:`GEMM_PASSED`, :data:`GEMV_PASSED`). Under ``TRITON_INTERPRET=1`` every list
collapses to one interpreter-friendly configuration (several configs would make the autotuner
ask a GPU driver for timings, and the interpreter costs ~5 ms per program x K-iteration, so
blocks are large).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Any

import torch

from ..core.packing import PACK_BLOCK  # noqa: F401  (re-exported: K tiles are whole pack blocks)

log = logging.getLogger(__name__)

MIN_TRITON: tuple[int, int] = (3, 1)
"""Oldest Triton the kernels are written for (``tl.dot`` with ``input_precision``, 3-D reductions)."""

SMALL_M_MAX = 16
"""Calls with at most this many rows (tokens) take the small-M (GEMV / split-K) kernel."""


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


# --------------------------------------------------------------------------- targets
MIN_CAPABILITY: tuple[int, int] = (8, 0)
"""Oldest GPU the Triton path runs on (Ampere): bf16/fp16/int8 tensor cores. sm70/75 compile
but get no tensor cores and spill (see docs/KERNELS.md); they take the torch reference."""


def target_family(capability: tuple[int, int]) -> str:
    """The AOT-checked target whose config table a device uses.

    ``sm_80`` (A100, 163 KB shared memory per block), ``sm_86`` (RTX 30xx / A-series, 99 KB),
    ``sm_89`` (RTX 40xx / L40, 99 KB), ``sm_90`` (H100 / H200, 227 KB), ``sm_120`` (RTX 50xx,
    99 KB). Anything else from sm80 on (sm_87, sm_100, ...) gets the ``sm_86`` table: the
    smallest shared memory and plain ``mma.sync`` (checked by the AOT matrix under sm_86 only).
    """
    major, minor = capability
    if (major, minor) == (8, 0):
        return "sm_80"
    if (major, minor) == (8, 9):
        return "sm_89"
    if (major, minor) == (9, 0):
        return "sm_90"
    if major == 12:
        return "sm_120"
    return "sm_86"


def kind_of(x_dtype: torch.dtype, int8: bool = False) -> str:
    """Operand kind of a kernel call: ``int8`` (A8), ``bf16``, ``fp16`` or ``tf32`` (fp32 x)."""
    if int8 or x_dtype == torch.int8:
        return "int8"
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "tf32"}[x_dtype]


# --------------------------------------------------------------------------- configurations
# Plain tuples so this module needs no Triton. GEMM: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages),
# GROUP_M = 8. The kernel computes the transposed product, so BLOCK_N is the tensor-core M side
# (tall BLOCK_N is cheap: the weight tile is 2 bits a weight) and BLOCK_M the N side.
GEMM_LARGE_M: list[tuple[int, int, int, int, int]] = [  # M >= 512 (FLUX M = 1024, 4096, 4608)
    (128, 128, 128, 8, 3),
    (128, 256, 128, 8, 3),
    (256, 128, 128, 8, 3),
    (128, 128, 128, 4, 4),
    (128, 128, 256, 8, 3),
    (128, 256, 128, 8, 2),
    (128, 128, 128, 8, 2),
    (64, 256, 128, 8, 3),
    (128, 128, 256, 8, 2),
]
GEMM_MID_M: list[tuple[int, int, int, int, int]] = [  # 16 < M < 512 (FLUX M = 256)
    (64, 128, 128, 4, 4),
    (64, 128, 128, 4, 3),
    (64, 256, 128, 8, 3),
    (32, 128, 128, 4, 4),
    (64, 128, 256, 4, 3),
    (128, 128, 128, 8, 3),
    (32, 256, 128, 8, 3),
]
GEMM_GROUP_M = 8
_GEMM_INTERPRET = (64, 64, 128, 4, 1)

# GEMV: (BLOCK_N, BLOCK_K, warps, stages); BLOCK_M is the M bucket (16 with tl.dot)
GEMV: list[tuple[int, int, int, int]] = [
    (32, 512, 4, 3),
    (64, 256, 4, 3),
    (16, 1024, 4, 2),
    (32, 256, 4, 3),
    (64, 512, 8, 3),
    (128, 256, 8, 3),
    (32, 128, 4, 4),
    (64, 128, 4, 4),
]
_GEMV_INTERPRET = (64, 128, 4, 1)
GEMV_ACC_REGS_MAX = 64
"""CUDA-core path: the register accumulator ``[BLOCK_M, BLOCK_N, BLOCK_K/4]`` may use at most
this many fp32 registers per thread."""


def gemm_candidates() -> list[tuple[int, int, int, int, int]]:
    """Every GEMM config of any list, once, in list order (the autotuner's full list)."""
    return list(dict.fromkeys(GEMM_LARGE_M + GEMM_MID_M))


def gemv_block_ok(block_m: int, cfg: tuple[int, int, int, int], use_dot: bool) -> bool:
    """Static rules of the small-M kernel (independent of the target)."""
    bn, bk, warps, _stages = cfg
    if use_dot:
        return bn >= 16  # tl.dot needs every dimension >= 16
    return block_m * bn * (bk // 4) <= GEMV_ACC_REGS_MAX * 32 * warps


def _config(kw: dict[str, Any], warps: int, stages: int) -> Any:
    import triton

    return triton.Config(kw, num_warps=warps, num_stages=stages)


def _gemm_key(c: Any) -> tuple[int, int, int, int, int]:
    kw = c.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], c.num_warps, c.num_stages)


def _gemv_key(c: Any) -> tuple[int, int, int, int]:
    return (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)


def gemm_configs() -> list[Any]:
    """Autotune list of the tiled GEMM (A16 and A8): every candidate; pruned per call."""
    if interpreting():
        bm, bn, bk, w, s = _GEMM_INTERPRET
        return [_config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GEMM_GROUP_M}, w, s)]
    return [
        _config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GEMM_GROUP_M}, w, s)
        for bm, bn, bk, w, s in gemm_candidates()
    ]


def _passed(table: dict, key: tuple) -> set | None:
    """The AOT-passed set for a route: ``None`` (everything) when no tables are recorded at all;
    fp16 routes the check did not reach use bf16's (same tiles, same shared memory); any other
    unchecked route gets nothing (it runs on torch)."""
    if not table:
        return None
    if key not in table and key[1] == "fp16":
        key = (key[0], "bf16", *key[2:])
    return table.get(key, set())


def allowed_gemm(
    family: str, kind: str, grouped: bool, m_bucket_: int
) -> list[tuple[int, int, int, int, int]]:
    """GEMM configs for one target / operand kind / scale kind / M bucket, in preference order:
    the bucket's list, minus what the AOT check found to spill or overflow shared memory there
    (:data:`GEMM_PASSED`)."""
    wanted = GEMM_LARGE_M if m_bucket_ >= 512 else GEMM_MID_M
    passed = _passed(GEMM_PASSED, (family, kind, grouped))
    return [c for c in wanted if passed is None or c in passed]


def allowed_gemv(family: str, kind: str, grouped: bool, block_m: int) -> list[tuple[int, int, int, int]]:
    """Small-M configs for one target / kind / scale kind / M block (see :func:`allowed_gemm`)."""
    use_dot = block_m > 4
    checked_m = 16 if use_dot else 1 if block_m == 1 else 4  # M = 2 runs under M = 4's results
    passed = _passed(GEMV_PASSED, (family, kind, grouped, checked_m))
    return [c for c in GEMV if gemv_block_ok(block_m, c, use_dot) and (passed is None or c in passed)]


def _call_family_kind(args: dict[str, Any]) -> tuple[str, str]:
    x = args["x_ptr"]
    fam = "interpret" if interpreting() else target_family(device_capability(x.device))
    return fam, kind_of(x.dtype)


def prune_gemm_configs(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Keep the configs the AOT check passed for this device, operand kind and M bucket, and
    (A8 per-group) whose K tile lies inside one scale group."""
    args = {**named_args, **kwargs}
    mb, gs = int(args["M_BUCKET"]), int(args["GROUP_SIZE"])
    int8 = bool(args.get("INT8_DOT"))
    if interpreting():
        return list(configs)
    fam, kind = _call_family_kind(args)
    order = allowed_gemm(fam, kind, gs > 0, mb)
    by_key = {_gemm_key(c): c for c in configs}
    keep = []
    for key in order:
        c = by_key.get(key)
        if c is None or (int8 and gs and gs % key[2]):
            continue
        if key[0] > 2 * mb:  # never tile far beyond the rows there are
            continue
        keep.append(c)
    if not keep:
        raise RuntimeError(f"no AOT-checked GEMM config for {fam}/{kind}/group={gs}/M~{mb}")
    return keep


def gemv_configs() -> list[Any]:
    """Autotune list of the small-M kernel."""
    rows = [_GEMV_INTERPRET] if interpreting() else GEMV
    return [_config({"BLOCK_N": bn, "BLOCK_K": bk}, w, s) for bn, bk, w, s in rows]


def prune_gemv_configs(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """The AOT-checked configs of this device / kind / M block whose K tile fits the group rule."""
    args = {**named_args, **kwargs}
    bm, gs = int(args["BLOCK_M"]), int(args["GROUP_SIZE"])
    if interpreting():
        return list(configs)
    fam, kind = _call_family_kind(args)
    if kind == "tf32" and bm <= 4:
        kind = "fp32"  # CUDA-core path: exact fp32, no tensor cores
    order = allowed_gemv(fam, kind, gs > 0, bm)
    by_key = {_gemv_key(c): c for c in configs}
    keep = [by_key[k] for k in order if k in by_key and not (args.get("INT8_DOT") and gs and gs % k[1])]
    if not keep:
        raise RuntimeError(f"no AOT-checked small-M config for {fam}/{kind}/group={gs}/BLOCK_M={bm}")
    return keep


# --------------------------------------------------------------------------- AOT results
# What `python bench/aot_check.py` found (Triton 3.7.1): for each (target, kind, grouped) the
# GEMM configs that compile with no register spill and within the target's shared memory, and
# likewise for the small-M kernel keyed (target, kind, grouped, M block 1 / 4 / 16). ``None`` / missing
# keys mean "not checked": every candidate is allowed. tests/test_aot.py re-checks a subset.
GEMM_PASSED: dict[tuple[str, str, bool], set[tuple[int, int, int, int, int]]] = {
    ("sm_120", "bf16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_120", "bf16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_120", "fp16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_120", "fp16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_120", "int8", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_120", "int8", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_120", "tf32", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
    },
    ("sm_120", "tf32", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
    },
    ("sm_80", "bf16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_80", "bf16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_80", "fp16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_80", "fp16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_80", "int8", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_80", "int8", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_80", "tf32", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_80", "tf32", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_86", "bf16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_86", "bf16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_86", "fp16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_86", "fp16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_86", "int8", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_86", "int8", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_86", "tf32", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
    },
    ("sm_86", "tf32", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
    },
    ("sm_89", "bf16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_89", "bf16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_89", "fp16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
    },
    ("sm_89", "fp16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_89", "int8", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_89", "int8", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_89", "tf32", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
    },
    ("sm_89", "tf32", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
    },
    ("sm_90", "bf16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
    },
    ("sm_90", "bf16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
    },
    ("sm_90", "fp16", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
    },
    ("sm_90", "fp16", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
    },
    ("sm_90", "int8", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 128, 256, 4, 3),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 256, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
    },
    ("sm_90", "int8", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
    },
    ("sm_90", "tf32", False): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
    ("sm_90", "tf32", True): {
        (32, 128, 128, 4, 4),
        (32, 256, 128, 8, 3),
        (64, 128, 128, 4, 3),
        (64, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
        (128, 128, 128, 8, 2),
        (128, 128, 128, 8, 3),
        (128, 256, 128, 8, 2),
        (128, 256, 128, 8, 3),
    },
}
GEMV_PASSED: dict[tuple[str, str, bool, int], set[tuple[int, int, int, int]]] = {
    ("sm_120", "bf16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "bf16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "bf16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "bf16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "bf16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "bf16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "fp16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "fp16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp32", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp32", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "fp32", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "fp32", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "int8", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "int8", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "int8", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "int8", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "int8", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_120", "int8", True, 16): {(32, 128, 4, 4), (64, 128, 4, 4)},
    ("sm_120", "tf32", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_120", "tf32", True, 16): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3)},
    ("sm_80", "bf16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_80", "bf16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "bf16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "bf16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "bf16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "bf16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "fp16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_80", "fp16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "fp16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "fp16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "fp16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "fp16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "fp32", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
    },
    ("sm_80", "fp32", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "fp32", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "fp32", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "int8", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_80", "int8", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "int8", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "int8", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_80", "int8", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_80", "int8", True, 16): {(32, 128, 4, 4), (64, 128, 4, 4)},
    ("sm_80", "tf32", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_80", "tf32", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "bf16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_86", "bf16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "bf16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "bf16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "bf16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "bf16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "fp16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_86", "fp16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "fp16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "fp16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "fp16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "fp16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "fp32", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
    },
    ("sm_86", "fp32", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "fp32", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "fp32", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "int8", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_86", "int8", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "int8", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "int8", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_86", "int8", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_86", "int8", True, 16): {(32, 128, 4, 4), (64, 128, 4, 4)},
    ("sm_86", "tf32", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_86", "tf32", True, 16): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3)},
    ("sm_89", "bf16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_89", "bf16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "bf16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "bf16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "bf16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "bf16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "fp16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_89", "fp16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "fp16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "fp16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "fp16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "fp16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "fp32", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
    },
    ("sm_89", "fp32", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "fp32", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "fp32", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "int8", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_89", "int8", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "int8", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "int8", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_89", "int8", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_89", "int8", True, 16): {(32, 128, 4, 4), (64, 128, 4, 4)},
    ("sm_89", "tf32", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_89", "tf32", True, 16): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3)},
    ("sm_90", "bf16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "bf16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "bf16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "bf16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
    },
    ("sm_90", "bf16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "bf16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "fp16", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "fp16", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "fp16", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "fp16", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
    },
    ("sm_90", "fp16", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "fp16", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "fp32", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "fp32", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "fp32", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "fp32", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "int8", False, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "int8", False, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "int8", False, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "int8", True, 1): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
    },
    ("sm_90", "int8", True, 4): {(32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4)},
    ("sm_90", "int8", True, 16): {(32, 128, 4, 4), (64, 128, 4, 4)},
    ("sm_90", "tf32", False, 16): {
        (16, 1024, 4, 2),
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (64, 512, 8, 3),
        (128, 256, 8, 3),
    },
    ("sm_90", "tf32", True, 16): {
        (32, 128, 4, 4),
        (32, 256, 4, 3),
        (32, 512, 4, 3),
        (64, 128, 4, 4),
        (64, 256, 4, 3),
        (128, 256, 8, 3),
    },
}
