"""Importing published ternary FLUX.2 checkpoints (Bonsai Image) into the TernaryFLUX format,
losslessly: the imported checkpoint's dequantized weights equal the published ones bit for bit.

Two layouts, both known only from public descriptions (PrismML's model cards and vendored
pipeline, gemlite's bit-packing code); the checks below are strict so that a file laid out
differently fails with one sentence instead of giving a wrong model (see docs/FORMAT.md,
"Importing Bonsai Image"):

* **unpacked** (:func:`import_bonsai_unpacked`): a diffusers ``Flux2Transformer2DModel`` folder
  or file (bf16/fp16/fp32) whose ternary Linears hold, in every group of 128 input weights, at
  most the three values {-s, 0, +s}. Codes and the group scale are recovered exactly; the scale
  must round-trip through float16 (the format stores float16 scales).
* **gemlite-int2** (:func:`import_bonsai_gemlite`): ``transformer-gemlite-int2/state_dict.pt``,
  a torch pickle read **only** with ``torch.load(weights_only=True)``. Per ternary layer ``P``:
  ``P.W_q`` uint8 ``(K/4, N)`` (4 codes per byte along the input dimension, code of input
  ``k`` in bits ``2*(k % 4)``, as gemlite's ``pack_weights_over_rows`` packs), ``P.scales``
  ``(K/128, N)``, ``P.zeros`` (all 1), ``P.metadata`` int32 (gemlite's meta arguments: bits,
  group size, unpack mask, elements per byte, ...), ``P.orig_shape`` ``[N, K]``; the weight is
  ``(q - 1) * scale`` with q in {0, 1, 2}. Other tensors use diffusers keys.

Output: a TernaryFLUX checkpoint (``architecture: flux2``, group size 128, policy ``blocks`` or
``blocks+modulation`` as found), written atomically by :func:`core.checkpoint.write_checkpoint`.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.checkpoint import TernaryMetadata, write_checkpoint
from ..core.flux_layout import (
    FLUX2,
    POLICY_BLOCKS,
    POLICY_BLOCKS_MODULATION,
    architecture_of_keys,
    config_from_shapes,
)
from ..core.flux_model import model_class
from ..core.ternary_weight import TernaryWeight
from .errors import QuantizeError
from .sources import (
    DIFFUSERS_FLUX2,
    Recipe,
    check_output_concat,
    diffusers_recipes,
    open_source,
)

log = logging.getLogger(__name__)

BONSAI_GROUP = 128  # one fp16 scale per 128 input weights (Bonsai's published layout)
GEMLITE_FIELDS = ("W_q", "scales", "zeros", "metadata", "orig_shape")


@dataclass
class ImportReport:
    """What an import found and wrote."""

    output: str
    layout: str  # "bonsai-unpacked" | "bonsai-gemlite-int2"
    policy: str
    ternary_layers: int
    float_tensors: int
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- unpacked


def recover_ternary(
    w: torch.Tensor, group_size: int = BONSAI_GROUP
) -> tuple[torch.Tensor, torch.Tensor] | str:
    """Codes ``[N, K]`` (uint8 in {0, 1, 2}) and float32 scales ``[N, K/group]`` of a dense weight
    that holds at most {-s, 0, +s} per group, exactly; or a sentence saying why it is not one.

    Each group's scale is its largest magnitude; it must be exactly a float16 value (finite, not
    below float16's normal range), and every weight in the group must be 0 or +-scale."""
    n, k = w.shape
    if k % group_size:
        return f"its {k} inputs are not a multiple of the group size {group_size}"
    wf = w.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    if not torch.isfinite(wf).all():
        return "it holds non-finite values"
    s = wf.abs().amax(dim=2)
    ok = (wf == 0) | (wf.abs() == s[..., None])
    if not bool(ok.all()):
        bad = (~ok).any(dim=2).nonzero()[0].tolist()
        vals = torch.unique(wf[bad[0], bad[1]])
        shown = ", ".join(f"{v:.6g}" for v in vals[:6].tolist())
        return (
            f"input group {bad[1]} of output row {bad[0]} holds {len(vals)} distinct values ({shown}"
            f"{', ...' if len(vals) > 6 else ''}), not at most {{-s, 0, +s}}"
        )
    s16 = s.to(torch.float16)
    tiny = (s > 0) & (s < torch.finfo(torch.float16).tiny)
    if not bool(torch.equal(s16.to(torch.float32), s)) or bool(tiny.any()):
        i = ((s16.to(torch.float32) != s) | tiny).nonzero()[0].tolist()
        return (
            f"the scale {s[i[0], i[1]].item():.9g} of output row {i[0]}, group {i[1]} does not round-trip "
            "through float16 (outside float16's normal range or finer than its precision)"
        )
    codes = (torch.sign(wf) + 1).to(torch.uint8).reshape(n, k)
    return codes, s


def _ternary_from_parts(
    parts: list[tuple[str, Callable[[], torch.Tensor]]], where: str, bfl_name: str, group_size: int
) -> TernaryWeight:
    """Recover every part (e.g. ``to_q``, ``to_k``, ``to_v``) and join them along the output
    dimension. The parts share the input dimension (asserted), so every row keeps its own input
    groups and the joined layer's per-group scales are the parts' scales stacked."""
    codes, scales, shapes = [], [], []
    for name, get in parts:
        w = get()
        shapes.append(tuple(w.shape))
        r = recover_ternary(w, group_size)
        if isinstance(r, str):
            raise QuantizeError(
                f"{where}: layer {name.removesuffix('.weight')!r} (-> {bfl_name}) is not ternary: {r}"
            )
        codes.append(r[0])
        scales.append(r[1])
    check_output_concat(where, bfl_name, shapes)
    c = torch.cat(codes, 0)
    s = torch.cat(scales, 0)
    assert c.shape[1] // group_size == s.shape[1]  # input groups intact after the join
    tw = TernaryWeight.from_codes(c, s, group_size)
    assert torch.equal(tw.scale, s)  # from_codes' float16 rounding is the identity here
    return tw


def _flux2_layer_lists(cfg) -> tuple[list[str], list[str]]:
    blocks = FLUX2.ternary_layer_names(cfg.depth, cfg.depth_single_blocks, POLICY_BLOCKS)
    return blocks, list(FLUX2.global_modulation)


def _is_ternary_valued(w: torch.Tensor, group_size: int) -> bool:
    return not isinstance(recover_ternary(w, group_size), str)


def import_bonsai_unpacked(
    path: str | Path,
    out: str | Path,
    packing: str = "2bit",
    group_size: int = BONSAI_GROUP,
    policy: str | None = None,
) -> ImportReport:
    """Bonsai "unpacked" (diffusers FLUX.2 transformer holding ternary values densely) ->
    TernaryFLUX checkpoint ``out``. ``policy`` ``None`` = detect: the block Linears must be
    ternary; the three global modulation Linears are ternary in the output when all three hold
    ternary values (``blocks+modulation``), else they stay float (``blocks``, Bonsai's release)."""
    src = open_source(path)
    if src.layout != "diffusers" or src.architecture != "flux2":
        raise QuantizeError(
            f"{src.files[0]}: a {'FLUX.2' if src.architecture == 'flux2' else 'FLUX.1'} transformer in "
            f"{src.layout_name} layout; the Bonsai unpacked import needs a diffusers FLUX.2 transformer "
            "(Flux2Transformer2DModel)"
        )
    cfg = src.config
    blocks, mods = _flux2_layer_lists(cfg)
    where = str(src.files[0].parent if len(src.files) > 1 else src.files[0])
    if policy is None:
        policy = (
            POLICY_BLOCKS_MODULATION
            if all(_is_ternary_valued(src.get(f"{m}.weight"), group_size) for m in mods)
            else POLICY_BLOCKS
        )
    ternary = set(FLUX2.ternary_layer_names(cfg.depth, cfg.depth_single_blocks, policy))
    sd: dict[str, torch.Tensor] = {}
    n_float = 0
    for key in src.keys():
        prefix = key[: -len(".weight")] if key.endswith(".weight") else None
        if prefix in ternary:
            r = src.recipes[key]
            parts = [(s, (lambda s=s: src._read(s, None))) for s in r.sources]
            if r.op not in ("copy", "cat"):
                raise AssertionError(r.op)
            tw = _ternary_from_parts(parts, _file_of(src, r.sources[0]), prefix, group_size)
            sd[f"{prefix}.weight"] = tw.packed
            sd[f"{prefix}.weight_scale"] = tw.scale
            sd[f"{prefix}.weight_shape"] = torch.tensor(tw.shape, dtype=torch.int64)
        else:
            sd[key] = src.get(key, dtype=None)
            n_float += 1
    return _write(sd, out, packing, group_size, policy, "bonsai-unpacked", where, src.files, cfg, n_float)


def _file_of(src, key: str) -> str:
    return str(src.readers[key].path)


# ----------------------------------------------------------------------------- gemlite


def load_torch_weights_only(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` (never a plain unpickle), errors as one sentence."""
    p = Path(path)
    if not p.is_file():
        raise QuantizeError(f"{p}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(
            f"{p}: refused by torch.load(weights_only=True) (it needs code beyond tensors and containers: "
            f"{first[:200]}); this tool never runs a plain unpickle"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise QuantizeError(f"{p}: not a readable torch file ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, Mapping):
        raise QuantizeError(
            f"{p}: holds a {type(obj).__name__}, expected a state dict (a mapping of tensors)"
        )
    return _flatten(obj, p)


def _flatten(obj: Mapping, path: Path, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, path, name + "."))
        elif isinstance(v, torch.Tensor):
            out[name] = v
        else:
            raise QuantizeError(f"{path}: entry {name!r} is a {type(v).__name__}, expected a tensor")
    return out


def gemlite_meta(meta: torch.Tensor) -> dict[str, int]:
    """Name gemlite's int32 meta-argument vector. Two public versions: 12 entries
    ``[scaled_activations, W_nbits, group_size, unpack_mask, elements_per_sample, input_dtype,
    output_dtype, acc_dtype, meta_dtype, channel_scale_mode, W_group_mode, data_contiguous]`` and
    an older 11 without the leading ``scaled_activations``."""
    m = [int(x) for x in meta.reshape(-1).tolist()]
    if len(m) == 12:
        m = m[1:]
    elif len(m) != 11:
        raise ValueError(f"metadata has {len(m)} entries, expected gemlite's 11 or 12")
    names = ("W_nbits", "group_size", "unpack_mask", "elements_per_sample")
    return dict(zip(names, m[:4]))


def decode_gemlite_layer(t: Mapping[str, torch.Tensor], name: str, where: str) -> TernaryWeight:
    """One gemlite-int2 ternary layer -> :class:`TernaryWeight` (group 128), every layout fact
    checked (see module docstring); raises :class:`QuantizeError` naming file and layer."""

    def bad(problem: str) -> QuantizeError:
        return QuantizeError(f"{where}: gemlite layer {name!r}: {problem}")

    try:
        meta = gemlite_meta(t["metadata"])
    except ValueError as e:
        raise bad(str(e)) from None
    if meta["W_nbits"] != 2:
        raise bad(
            f"metadata says {meta['W_nbits']} bit(s) per weight, not 2"
            + (" (the binary Bonsai; not a ternary checkpoint)" if meta["W_nbits"] == 1 else "")
        )
    if meta["group_size"] != BONSAI_GROUP:
        raise bad(f"metadata says group size {meta['group_size']}, expected {BONSAI_GROUP}")
    if meta["unpack_mask"] != 3 or meta["elements_per_sample"] != 4:
        raise bad(
            f"metadata says unpack mask {meta['unpack_mask']} and {meta['elements_per_sample']} codes per "
            "packed element, expected 3 and 4 (2-bit codes in uint8)"
        )
    shape = t["orig_shape"].reshape(-1).tolist()
    if len(shape) != 2 or min(shape) <= 0:
        raise bad(f"orig_shape {shape} is not [out, in]")
    n, k = (int(x) for x in shape)
    if k % BONSAI_GROUP:
        raise bad(f"{k} inputs are not a multiple of {BONSAI_GROUP}")
    wq, scales, zeros = t["W_q"], t["scales"], t["zeros"]
    if wq.dtype != torch.uint8 or tuple(wq.shape) != (k // 4, n):
        raise bad(
            f"W_q is {wq.dtype} {tuple(wq.shape)}, expected uint8 {(k // 4, n)} (transposed, 4 codes per byte)"
        )
    if not scales.is_floating_point() or tuple(scales.shape) != (k // BONSAI_GROUP, n):
        raise bad(f"scales are {scales.dtype} {tuple(scales.shape)}, expected float {(k // BONSAI_GROUP, n)}")
    if not bool((zeros.to(torch.float32) == 1).all()):
        raise bad("zeros are not all 1: the weights are not (q - 1) * scale, so not symmetric ternary")
    shifts = torch.arange(4, dtype=torch.uint8) * 2
    q = ((wq.unsqueeze(1) >> shifts[None, :, None]) & 3).reshape(k, n)  # input k = 4 * row + s
    if bool((q == 3).any()):
        r, c = (q == 3).nonzero()[0].tolist()
        raise bad(f"code 3 at input {r}, output {c}: decoded value 2*scale is outside {{-1, 0, 1}}*scale")
    s = scales.to(torch.float32).t().contiguous()  # [N, K/128]
    if not bool(torch.isfinite(s).all()) or not bool(torch.equal(s.to(torch.float16).to(torch.float32), s)):
        raise bad("scales are not finite float16 values")
    return TernaryWeight.from_codes(q.t().contiguous(), s, BONSAI_GROUP)


def import_bonsai_gemlite(
    path: str | Path, out: str | Path, packing: str = "2bit", config_json: str | Path | None = None
) -> ImportReport:
    """Bonsai gemlite-int2 (``transformer-gemlite-int2/state_dict.pt``, or its folder) ->
    TernaryFLUX checkpoint ``out``."""
    p = Path(path)
    if p.is_dir():
        cand = [p / "state_dict.pt", p / "transformer-gemlite-int2" / "state_dict.pt"]
        found = [c for c in cand if c.is_file()]
        if not found:
            raise QuantizeError(
                f"{p}: folder has no state_dict.pt (nor transformer-gemlite-int2/state_dict.pt)"
            )
        p = found[0]
    where = str(p)
    raw = load_torch_weights_only(p)
    layers = sorted({k.rsplit(".", 1)[0] for k in raw if k.endswith(".W_q")})
    if not layers:
        raise QuantizeError(f"{p}: no gemlite layer ('*.W_q' tensors); not a Bonsai gemlite-int2 state dict")
    dense: dict[str, torch.Tensor] = {}
    packed: dict[str, TernaryWeight] = {}
    for name in layers:
        missing = [f for f in GEMLITE_FIELDS if f"{name}.{f}" not in raw]
        if missing:
            raise QuantizeError(f"{where}: gemlite layer {name!r} lacks {', '.join(missing)}")
        packed[name] = decode_gemlite_layer({f: raw[f"{name}.{f}"] for f in GEMLITE_FIELDS}, name, where)
    used = {f"{n}.{f}" for n in layers for f in GEMLITE_FIELDS}
    for k, v in raw.items():
        if k in used:
            continue
        if k.rsplit(".", 1)[0] in packed and k.endswith(".bias"):
            dense[k] = v
            continue
        if not v.is_floating_point():
            raise QuantizeError(
                f"{where}: tensor {k!r} is {v.dtype}, neither a gemlite layer part nor a float weight"
            )
        dense[k] = v
    # diffusers names -> BFL, q/k/v joined along the output dimension
    shapes = {k: tuple(v.shape) for k, v in dense.items()}
    shapes.update({f"{n}.weight": packed[n].shape for n in packed})
    if DIFFUSERS_FLUX2.detect not in shapes:
        raise QuantizeError(f"{where}: no {DIFFUSERS_FLUX2.detect!r}; not a diffusers FLUX.2 transformer")
    recipes: dict[str, Recipe] = diffusers_recipes(set(shapes))
    bfl_shapes = {}
    for bk, r in recipes.items():
        parts = [shapes[s] for s in r.sources]
        if r.op == "cat":
            check_output_concat(where, bk, parts)
        bfl_shapes[bk] = (sum(s[0] for s in parts), *parts[0][1:]) if r.op == "cat" else parts[0]
    cfg = config_from_shapes(bfl_shapes)
    _check_model_keys(cfg, bfl_shapes, where)
    blocks, mods = _flux2_layer_lists(cfg)
    ternary_src = {bk for bk, r in recipes.items() if any(s[: -len(".weight")] in packed for s in r.sources)}
    ternary = {k[: -len(".weight")] for k in ternary_src}
    if not set(blocks) <= ternary:
        miss = sorted(set(blocks) - ternary)
        raise QuantizeError(
            f"{where}: block layer {miss[0]!r} is not a gemlite ternary layer (and {len(miss) - 1} more)"
        )
    extra = ternary - set(blocks) - set(mods)
    if extra:
        raise QuantizeError(
            f"{where}: gemlite layer for {sorted(extra)[0]!r}, which TernaryFLUX keeps in float"
        )
    if ternary & set(mods) and not set(mods) <= ternary:
        raise QuantizeError(
            f"{where}: only some of the global modulation layers are ternary: {sorted(ternary & set(mods))}"
        )
    policy = POLICY_BLOCKS_MODULATION if set(mods) <= ternary else POLICY_BLOCKS
    sd: dict[str, torch.Tensor] = {}
    for bk, r in recipes.items():
        prefix = bk[: -len(".weight")]
        if prefix in ternary and bk.endswith(".weight"):
            parts = [packed[s[: -len(".weight")]] for s in r.sources]
            if any(pt.shape[1] != parts[0].shape[1] for pt in parts):
                check_output_concat(where, bk, [pt.shape for pt in parts])
            tw = _join(parts) if len(parts) > 1 else parts[0]
            sd[f"{prefix}.weight"], sd[f"{prefix}.weight_scale"] = tw.packed, tw.scale
            sd[f"{prefix}.weight_shape"] = torch.tensor(tw.shape, dtype=torch.int64)
        else:
            vals = [dense[s] for s in r.sources]
            if r.op == "copy":
                sd[bk] = vals[0]
            elif r.op == "cat":
                sd[bk] = torch.cat(vals, 0)
            else:
                a, b = vals[0].chunk(2, 0)
                sd[bk] = torch.cat([b, a], 0)
    n_float = sum(
        1 for k in sd if not k.endswith((".weight_scale", ".weight_shape")) and sd[k].dtype != torch.uint8
    )
    return _write(sd, out, packing, BONSAI_GROUP, policy, "bonsai-gemlite-int2", where, [p], cfg, n_float)


def _join(parts: list[TernaryWeight]) -> TernaryWeight:
    """q, k, v joined along the output dimension; their input groups are untouched."""
    assert len({pt.shape[1] for pt in parts}) == 1 and len({pt.group_size for pt in parts}) == 1
    codes = torch.cat([pt.codes() for pt in parts], 0)
    scale = torch.cat([pt.scale for pt in parts], 0)
    return TernaryWeight.from_codes(codes, scale, parts[0].group_size)


def _check_model_keys(cfg, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in model_class(cfg)(cfg).state_dict().items()}
    missing = sorted(set(want) - set(shapes))
    if missing:
        raise QuantizeError(
            f"{where}: incomplete FLUX.2 transformer: missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    for k, s in want.items():
        if tuple(shapes[k]) != s:
            raise QuantizeError(f"{where}: tensor {k!r} has shape {tuple(shapes[k])}, expected {s}")


# ----------------------------------------------------------------------------- write


def _write(sd, out, packing, group_size, policy, layout, where, files, cfg, n_float) -> ImportReport:
    if architecture_of_keys(sd) != "flux2":
        raise AssertionError("import produced a non-FLUX.2 state dict")
    meta = TernaryMetadata(
        packing=packing,
        group_size=group_size,
        architecture="flux2",
        ternary_policy=policy,
        variant=cfg.variant,
        source_name=Path(files[0]).name if len(files) == 1 else Path(files[0]).parent.name,
        method="imported",
        method_params={"source_layout": layout, "lossless": True},
    )
    try:
        write_checkpoint(out, sd, meta)
    except ValueError as e:  # TernaryFormatError included: the import produced something invalid
        raise QuantizeError(f"{where}: the imported tensors do not form a valid checkpoint ({e})") from None
    n_tern = sum(1 for k in sd if k.endswith(".weight_scale"))
    log.info("%s: imported %d ternary layers (%s) into %s", where, n_tern, policy, out)
    return ImportReport(str(out), layout, policy, n_tern, n_float, cfg.to_dict())
