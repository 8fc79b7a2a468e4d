"""Bench-only helpers: random full-size FLUX models built on the device, and exact file sizes.

Nothing here allocates a dense weight for the ternary model: the model is constructed on the
``meta`` device, every block Linear becomes a :class:`TernaryLinear`, and then each tensor is
materialized directly on the target device from a seeded device generator (packed codes as
random bytes whose four 2-bit fields are each in {0, 1, 2}). So FLUX.1-dev (11.9 B parameters)
builds on a GPU in seconds without 24 GB of host RAM or a download.

The file-size calculator reproduces what :func:`ternaryflux.core.checkpoint.write_checkpoint`
writes (a safetensors file: 8-byte length + JSON header padded to 8 bytes + tensor data) from
shapes alone, so the exact FLUX.1-dev checkpoint size needs no GPU and no weights.

``random_ternary_flux`` / ``checkpoint_file_size`` would fit in ``core`` one day; they live in
``bench/`` for now so the library has no bench-only code.

This module works both with ``ternaryflux`` installed (``pip install -e .``) and from a bare
checkout (e.g. a GPU machine with only torch): it then loads the repository root as the package.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]


def _bootstrap_ternaryflux() -> None:
    """Make ``import ternaryflux`` resolve to the checkout this file lives in."""
    if "ternaryflux" in sys.modules:
        return
    spec = importlib.util.find_spec("ternaryflux")
    if spec is not None and spec.origin and Path(spec.origin).resolve() == REPO_ROOT / "__init__.py":
        return  # the installed package is this checkout (editable install)
    spec = importlib.util.spec_from_file_location(
        "ternaryflux", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ternaryflux"] = mod
    spec.loader.exec_module(mod)


_bootstrap_ternaryflux()

from ternaryflux.core.checkpoint import METADATA_KEY, TernaryMetadata, layer_specs  # noqa: E402
from ternaryflux.core.flux_layout import FluxConfig, ternary_layer_names  # noqa: E402
from ternaryflux.core.flux_model import Flux, model_class  # noqa: E402
from ternaryflux.core.packing import padded_k  # noqa: E402
from ternaryflux.core.ternary_linear import TernaryLinear, set_submodule  # noqa: E402
from ternaryflux.core.ternary_weight import check_group_size, round_scale_to_fp16  # noqa: E402

__all__ = [
    "REPO_ROOT",
    "checkpoint_file_size",
    "dense_file_size",
    "meta_ternary_flux",
    "model_bytes",
    "param_counts",
    "random_bf16_flux",
    "random_ternary_flux",
    "safetensors_file_size",
]

# ----------------------------------------------------------------------------- model builders


def _pack_lut(device: torch.device | str) -> torch.Tensor:
    """``lut[v]`` for v in 0..80 = the byte whose four 2-bit fields are v's base-3 digits."""
    v = torch.arange(81)
    byte = sum(((v // 3**s) % 3) << (2 * s) for s in range(4))
    return byte.to(torch.uint8).to(device)


def _swap_in_ternary(
    model: Flux, group_size: int, bias_dtype: torch.dtype, policy: str | None = None
) -> list[str]:
    """Replace every ternary-layer Linear of a meta model (FLUX.1 or FLUX.2; ``policy`` None =
    the architecture's default) by a meta :class:`TernaryLinear`."""
    c = model.config
    names = ternary_layer_names(c.depth, c.depth_single_blocks, c.architecture, policy)
    for name in names:
        old = model.get_submodule(name)
        assert isinstance(old, nn.Linear), name
        check_group_size(old.in_features, group_size)
        new = TernaryLinear(
            old.in_features,
            old.out_features,
            old.bias is not None,
            group_size,
            device="meta",
            bias_dtype=bias_dtype,
        )
        set_submodule(model, name, new)
    return names


def meta_ternary_flux(
    config: FluxConfig, dtype: torch.dtype = torch.bfloat16, group_size: int = 0, policy: str | None = None
) -> Flux:
    """FLUX (or FLUX.2) with ternary Linears, every tensor on the meta device (shapes and dtypes only)."""
    with torch.device("meta"):
        model = model_class(config)(config, dtype=dtype)
    _swap_in_ternary(model, group_size, dtype, policy)
    return model


@torch.no_grad()
def _fill_float_(name: str, t: torch.Tensor, gen: torch.Generator) -> None:
    """Seeded values in place: RMSNorm scales ~1, biases small, weights ~ N(0, 1/fan_in)."""
    if name.endswith(".scale"):
        t.fill_(1.0)
    elif name.endswith(".bias") or t.dim() < 2:
        t.normal_(0.0, 0.02, generator=gen)
    else:
        t.normal_(0.0, 1.0 / math.sqrt(t.shape[1]), generator=gen)


@torch.no_grad()
def _fill_ternary_(m: TernaryLinear, gen: torch.Generator, lut: torch.Tensor) -> None:
    n, k = m.out_features, m.in_features
    rows = 8192  # bounded temporaries (int64 indices) even for the 21504-row linear1
    for r0 in range(0, n, rows):
        idx = torch.randint(
            0, 81, (min(rows, n - r0), m.weight.shape[1]), device=m.weight.device, generator=gen
        )
        m.weight[r0 : r0 + rows] = lut[idx]
    kp = padded_k(k)
    if kp != k:  # padding codes must be 1 (zero weight): redo the last pack block's tail
        from ternaryflux.core.packing import pack_2bit, unpack_2bit

        codes = unpack_2bit(m.weight, kp)
        codes[:, k:] = 1
        m.weight.copy_(pack_2bit(codes[:, :k]))
    # random codes have E[w^2] = 2/3 * s^2: s ~ sqrt(1.5 / K) keeps activations at unit scale
    m.weight_scale.normal_(0.0, 0.1, generator=gen).add_(1.0).mul_(math.sqrt(1.5 / k))
    # as every quantizer does (TernaryWeight.from_codes): float16 precision, stored in 2 bytes
    m.weight_scale.copy_(round_scale_to_fp16(m.weight_scale))
    m.weight_shape.copy_(torch.tensor([n, k], dtype=torch.int64))
    if m.bias is not None:
        m.bias.normal_(0.0, 0.02, generator=gen)


@torch.no_grad()
def _materialize_(model: nn.Module, device: torch.device | str, seed: int) -> nn.Module:
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    lut = _pack_lut(device)
    ternary = {n: m for n, m in model.named_modules() if isinstance(m, TernaryLinear)}
    for m in ternary.values():
        _fill_ternary_(m, gen, lut)
    for name, p in model.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in ternary:
            continue  # bias, done above
        _fill_float_(name, p, gen)
    return model.eval().requires_grad_(False)


def random_bf16_flux(
    config: FluxConfig, device: torch.device | str, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Flux:
    """A dense FLUX (or FLUX.2) with seeded random weights, allocated straight on ``device``."""
    with torch.device("meta"):
        model = model_class(config)(config, dtype=dtype)
    return _materialize_(model, device, seed)


def random_ternary_flux(
    config: FluxConfig,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    group_size: int = 0,
    policy: str | None = None,
) -> Flux:
    """A ternary FLUX or FLUX.2 (every layer of ``policy`` — None: the architecture's default —
    a :class:`TernaryLinear` with ``group_size`` scales) with random packed codes and scales
    generated on ``device``; embedders, norms, biases and the final layer in ``dtype``.
    No dense block weight is ever allocated."""
    model = meta_ternary_flux(config, dtype, group_size, policy)
    return _materialize_(model, device, seed)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the weights occupy on the device)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def param_counts(config: FluxConfig, policy: str | None = None) -> dict[str, int]:
    """Logical parameter counts: total, ternary (block Linear weights) and the rest."""
    with torch.device("meta"):
        model = model_class(config)(config)
    total = sum(p.numel() for p in model.parameters())
    names = ternary_layer_names(config.depth, config.depth_single_blocks, config.architecture, policy)
    ternary = sum(model.get_submodule(n).weight.numel() for n in names)
    return {"total": total, "ternary": ternary, "other": total - ternary}


# ----------------------------------------------------------------------------- file sizes

# safetensors writes tensors sorted by dtype (this order, descending) then by name; the order
# only changes how many digits the offsets take in the header.
_ST_DTYPE = {
    torch.int64: ("I64", 0),
    torch.float64: ("F64", 1),
    torch.float32: ("F32", 2),
    torch.bfloat16: ("BF16", 3),
    torch.float16: ("F16", 4),
    torch.int32: ("I32", 3),
    torch.int8: ("I8", 6),
    torch.uint8: ("U8", 7),
}


def safetensors_file_size(
    entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Exact size of the safetensors file holding tensors ``(name, dtype, shape)``.

    Returns ``{"total", "header", "data"}`` bytes (header = 8-byte length + padded JSON).
    """
    items = sorted(entries, key=lambda e: (_ST_DTYPE[e[1]][1], e[0]))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in items:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": _ST_DTYPE[dtype][0],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    n = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    n += (8 - n % 8) % 8
    return {"total": 8 + n + offset, "header": 8 + n, "data": offset}


def default_metadata(
    config: FluxConfig, packing: str, group_size: int = 0, policy: str | None = None
) -> TernaryMetadata:
    """The header a typical quantized FLUX.1 / FLUX.2 checkpoint carries (for the header estimate)."""
    flux2 = config.architecture == "flux2"
    return TernaryMetadata(
        packing=packing,
        group_size=group_size,
        architecture=config.architecture,
        ternary_policy=(policy or "blocks") if flux2 else policy,
        variant=config.variant,
        source_name=f"flux{'-2' if flux2 else '1'}-{config.variant}.safetensors",
        source_sha256="0" * 64,
        method="absmean",
    )


def checkpoint_file_size(
    config: FluxConfig,
    packing: str = "2bit",
    group_size: int = 0,
    metadata: TernaryMetadata | None = None,
    dtype: torch.dtype = torch.bfloat16,
    policy: str | None = None,
) -> dict[str, int]:
    """Exact size of the TernaryFLUX checkpoint ``write_checkpoint`` writes for ``config``
    (FLUX.1 or FLUX.2; ``policy`` None = the architecture's default ternary layers).

    The layer tensors of ``core.checkpoint.layer_specs`` (packed codes, float16 scales as the
    writer stores quantizer-made scales, int64 shapes), everything else (biases, embedders, norms, final layer) in ``dtype``, and the
    header with ``metadata`` (default: :func:`default_metadata`). Returns bytes: ``total``,
    ``header``, ``data``, ``codes``, ``scales``, ``shapes``, ``other``.
    """
    if packing not in ("2bit", "base3"):
        raise ValueError(f"packing must be '2bit' or 'base3', got {packing!r}")
    metadata = metadata or default_metadata(config, packing, group_size, policy)
    model = meta_ternary_flux(config, dtype, group_size, policy)
    ternary = {n: m for n, m in model.named_modules() if isinstance(m, TernaryLinear)}
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    parts = {"codes": 0, "scales": 0, "shapes": 0, "other": 0}
    stored = {
        name: (dt, shp)
        for owner, m in ternary.items()
        for name, dt, shp in layer_specs(owner, (m.out_features, m.in_features), m.group_size, packing)
    }
    part_of = {"weight": "codes", "weight_scale": "scales", "weight_shape": "shapes"}
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        dt, shape = stored.get(key, (t.dtype, tuple(t.shape)))
        part = part_of[leaf] if key in stored else "other"
        entries.append((key, dt, shape))
        parts[part] += math.prod(shape) * dt.itemsize
    size = safetensors_file_size(entries, {METADATA_KEY: metadata.to_json()})
    return {**size, **parts}


def dense_file_size(config: FluxConfig, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Size of a plain safetensors file of the dense transformer in ``dtype`` (no metadata)."""
    with torch.device("meta"):
        model = model_class(config)(config, dtype=dtype)
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in model.state_dict().items()]
    return safetensors_file_size(entries)


def resident_weight_bytes(
    config: FluxConfig,
    ternary: bool,
    dtype: torch.dtype = torch.bfloat16,
    group_size: int = 0,
    policy: str | None = None,
) -> int:
    """Bytes the model's weights occupy on a device, from shapes (no allocation)."""
    if ternary:
        return model_bytes(meta_ternary_flux(config, dtype, group_size, policy))
    with torch.device("meta"):
        return model_bytes(model_class(config)(config, dtype=dtype))


def config_dict(config: FluxConfig) -> dict:
    return asdict(config)
