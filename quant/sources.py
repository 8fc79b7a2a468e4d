"""Reading float FLUX checkpoints tensor by tensor, in any of the layouts people download.

Accepted inputs
---------------
* **BFL layout** (``flux1-dev.safetensors``, what ComfyUI's *Load Diffusion Model* reads):
  ``double_blocks.{i}.img_attn.qkv.weight`` ...
* **ComfyUI full checkpoints**: the same keys under ``model.diffusion_model.`` (VAE and text
  encoder tensors in the same file are ignored).
* **diffusers layout** (``transformer/diffusion_pytorch_model.safetensors``), one file or sharded
  with ``*.safetensors.index.json`` (pass the index, a shard, or the folder). Keys are mapped to
  BFL on the fly (the ``_D_*`` tables below): q/k/v projections are concatenated into ``qkv``, a
  single block's ``linear1`` is ``cat(to_q, to_k, to_v, proj_mlp)``, ``linear2`` is ``proj_out``,
  RMSNorm ``weight`` becomes ``scale``, and ``norm_out.linear`` has its (scale, shift) halves
  swapped into BFL's (shift, scale) order.
* dtypes bf16, fp16, fp32 and fp8 (e4m3fn / e5m2, including ComfyUI "fp8_scaled" files whose
  ``*.scale_weight`` entries are applied). Everything is returned as float32.

Reads never map the whole file: each tensor is read with ``readinto`` into its own buffer, so
the resident memory is what the caller keeps, not the file size. Anything else (GGUF, pickles,
non-FLUX safetensors, an already ternary checkpoint, a truncated file) raises :class:`QuantizeError`
with one sentence saying what the file is and what is expected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.checkpoint import METADATA_KEY, TernaryFormatError, read_safetensors_header
from ..core.flux_layout import FluxConfig, config_from_shapes
from .errors import QuantizeError

log = logging.getLogger(__name__)

COMFY_PREFIX = "model.diffusion_model."
_OTHER_PREFIXES = ("transformer.", "model.")

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
FLOAT_ST_DTYPES = {"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F64"}
DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}


# ----------------------------------------------------------------------------- raw reader


class SafetensorsReader:
    """Header-indexed reads of single tensors from one safetensors file (no mmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            header = read_safetensors_header(self.path)
        except TernaryFormatError as e:
            raise QuantizeError(_not_safetensors_message(self.path, e.problem)) from None
        self.data_start = header.data_start
        self.metadata = header.metadata
        self.entries = header.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def dtype_name(self, key: str) -> str:
        return self.entries[key]["dtype"]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self.entries[key]["shape"])

    def nbytes(self, key: str) -> int:
        b, e = self.entries[key]["data_offsets"]
        return int(e) - int(b)

    def get(self, key: str) -> torch.Tensor:
        """The tensor in its stored dtype (a fresh CPU buffer)."""
        ent = self.entries[key]
        dt = ST_DTYPES.get(ent["dtype"])
        if dt is None:
            raise QuantizeError(
                f"{self.path}: tensor {key!r} has dtype {ent['dtype']}, which this tool cannot read"
            )
        b, e = (int(x) for x in ent["data_offsets"])
        buf = bytearray(e - b)
        with self.path.open("rb", buffering=0) as f:
            f.seek(self.data_start + b)
            view = memoryview(buf)
            got = 0
            while got < len(buf):
                n = f.readinto(view[got:])
                if not n:
                    raise QuantizeError(f"{self.path}: truncated while reading {key!r}")
                got += n
        if not buf:
            return torch.empty(self.shape(key), dtype=dt)
        t = torch.frombuffer(buf, dtype=torch.uint8)
        return t.view(dt).reshape(self.shape(key))


def _not_safetensors_message(path: Path, problem: str) -> str:
    head = b""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        pass
    if head == b"GGUF":
        return f"{path}: a GGUF file; this tool reads safetensors FLUX checkpoints (bf16/fp16/fp32/fp8), not GGUF"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return f"{path}: a PyTorch pickle (.ckpt/.pt); convert it to safetensors first (this tool never unpickles)"
    return f"{path}: {problem}; expected a FLUX transformer in safetensors format"


# ----------------------------------------------------------------------------- diffusers mapping

# diffusers FLUX transformer key (without ".weight"/".bias") -> BFL module path, per block.
_D_DOUBLE_SIMPLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_D_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_D_DOUBLE_CAT = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_D_SINGLE_SIMPLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_D_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_D_SINGLE_CAT = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_D_TOP_SIMPLE = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "proj_out": "final_layer.linear",
}
_D_SWAP = {"norm_out.linear": "final_layer.adaLN_modulation.1"}


@dataclass
class Recipe:
    """How one BFL tensor is made from source tensors: ``op`` is ``copy``, ``cat`` (dim 0) or
    ``swap`` (the two halves along dim 0 exchanged)."""

    sources: list[str]
    op: str = "copy"


def _bfl_recipes_for_diffusers(keys: set[str]) -> dict[str, Recipe]:
    out: dict[str, Recipe] = {}
    used: set[str] = set()

    def add(bfl: str, srcs: list[str], op: str = "copy") -> None:
        if all(s in keys for s in srcs):
            out[bfl] = Recipe(srcs, op)
            used.update(srcs)

    for d, b in _D_TOP_SIMPLE.items():
        for suf in ("weight", "bias"):
            add(f"{b}.{suf}", [f"{d}.{suf}"])
    for d, b in _D_SWAP.items():
        for suf in ("weight", "bias"):
            add(f"{b}.{suf}", [f"{d}.{suf}"], "swap")
    doubles = sorted({int(m.group(1)) for k in keys if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    singles = sorted(
        {int(m.group(1)) for k in keys if (m := re.match(r"single_transformer_blocks\.(\d+)\.", k))}
    )
    for i in doubles:
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for d, b in _D_DOUBLE_SIMPLE.items():
            for suf in ("weight", "bias"):
                add(f"{q}{b}.{suf}", [f"{p}{d}.{suf}"])
        for d, b in _D_DOUBLE_NORMS.items():
            add(q + b, [p + d])
        for b, parts in _D_DOUBLE_CAT.items():
            for suf in ("weight", "bias"):
                add(f"{q}{b}.{suf}", [f"{p}{s}.{suf}" for s in parts], "cat")
    for i in singles:
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for d, b in _D_SINGLE_SIMPLE.items():
            for suf in ("weight", "bias"):
                add(f"{q}{b}.{suf}", [f"{p}{d}.{suf}"])
        for d, b in _D_SINGLE_NORMS.items():
            add(q + b, [p + d])
        for b, parts in _D_SINGLE_CAT.items():
            for suf in ("weight", "bias"):
                add(f"{q}{b}.{suf}", [f"{p}{s}.{suf}" for s in parts], "cat")
    leftover = sorted(k for k in keys - used if not k.endswith((".scale_weight", ".scale_input")))
    if leftover:
        log.warning(
            "ignoring %d diffusers tensors with no BFL counterpart, e.g. %s", len(leftover), leftover[:3]
        )
    return out


# ----------------------------------------------------------------------------- source model


class FluxShapes:
    """What a float FLUX source derives from its BFL ``shapes`` (mixed into every source)."""

    shapes: dict[str, tuple[int, ...]]

    @property
    def config(self) -> FluxConfig:
        return config_from_shapes(self.shapes)

    @property
    def variant(self) -> str:
        return "dev" if "guidance_in.in_layer.weight" in self.shapes else "schnell"


@dataclass
class SourceModel(FluxShapes):
    """A float FLUX transformer on disk, addressed by BFL keys (see module docstring)."""

    files: list[Path]
    layout: str  # "bfl" | "diffusers"
    prefix: str  # "" or "model.diffusion_model." etc.
    recipes: dict[str, Recipe]
    readers: dict[str, SafetensorsReader]  # source key (with prefix) -> reader
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # BFL key -> shape
    dtypes: dict[str, str] = field(default_factory=dict)  # BFL key -> source dtype name (F32 ...)

    @property
    def layout_name(self) -> str:
        if self.layout == "bfl":
            return "ComfyUI checkpoint (BFL keys under 'model.diffusion_model.')" if self.prefix else "BFL"
        return "diffusers" + (f" (prefix {self.prefix!r})" if self.prefix else "")

    def keys(self) -> list[str]:
        return list(self.recipes)

    def main_dtype(self) -> str:
        counts: dict[str, int] = {}
        for k, d in self.dtypes.items():
            counts[d] = counts.get(d, 0) + math.prod(self.shapes[k])
        return max(counts, key=counts.get) if counts else "?"

    def source_bytes(self) -> int:
        seen = set()
        total = 0
        for r in self.recipes.values():
            for s in r.sources:
                if s not in seen:
                    seen.add(s)
                    total += self.readers[s].nbytes(s)
        return total

    def _read(self, src: str, dtype: torch.dtype | None) -> torch.Tensor:
        r = self.readers[src]
        t = r.get(src)
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            t = t.to(torch.float32)
            base = src[: -len(".weight")] if src.endswith(".weight") else None
            sk = f"{base}.scale_weight" if base else None
            if sk and sk in self.readers:
                t = t * self.readers[sk].get(sk).to(torch.float32)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def get(self, key: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """BFL tensor ``key`` as ``dtype`` (float32 by default; ``None`` = as stored, fp8 as
        float32) in a fresh buffer."""
        r = self.recipes[key]
        parts = [self._read(s, dtype) for s in r.sources]
        if r.op == "copy":
            return parts[0]
        if r.op == "cat":
            return torch.cat(parts, 0)
        if r.op == "swap":
            a, b = parts[0].chunk(2, 0)
            return torch.cat([b, a], 0)
        raise AssertionError(r.op)

    def state_dict(self, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in (keys if keys is not None else self.recipes)}


def resolve_files(path: str | Path) -> list[Path]:
    """One safetensors file, a shard index (``*.index.json``), a shard, or a folder holding either."""
    p = Path(path)
    if not p.exists():
        raise QuantizeError(f"{p}: no such file or folder")
    if p.is_dir():
        idx = sorted(p.glob("*.safetensors.index.json"))
        if idx:
            return resolve_files(idx[0])
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return files
        if not files:
            raise QuantizeError(f"{p}: folder has no .safetensors file and no *.safetensors.index.json")
        raise QuantizeError(
            f"{p}: folder has {len(files)} .safetensors files but no *.safetensors.index.json to join them"
        )
    if p.name.endswith(".json"):
        try:
            index = json.loads(p.read_text())
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise QuantizeError(f"{p}: not a safetensors shard index (needs a 'weight_map' object)") from None
        shards = sorted({p.parent / f for f in weight_map.values()})
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise QuantizeError(f"{p}: shard {missing[0].name} listed in the index is missing")
        return shards
    # a single shard of a sharded set: use the index next to it
    if re.search(r"-\d{5}-of-\d{5}\.safetensors$", p.name):
        idx = sorted(p.parent.glob("*.safetensors.index.json"))
        if idx:
            return resolve_files(idx[0])
    return [p]


def open_source(path: str | Path) -> SourceModel:
    """Open a float FLUX transformer for reading (see module docstring for what is accepted)."""
    files = resolve_files(path)
    readers: dict[str, SafetensorsReader] = {}
    for f in files:
        r = SafetensorsReader(f)
        if METADATA_KEY in r.metadata:
            raise QuantizeError(
                f"{f}: already a TernaryFLUX checkpoint; quantize needs the float FLUX it was made from "
                "(use `ternaryflux inspect` to see what it holds, `ternaryflux convert` to repack it)"
            )
        for k in r.keys():
            readers[k] = r
    keys = set(readers)
    prefix = ""
    for cand in (COMFY_PREFIX, *_OTHER_PREFIXES):
        sub = {k for k in keys if k.startswith(cand)}
        stripped = {k[len(cand) :] for k in sub}
        if "img_in.weight" in stripped or "x_embedder.weight" in stripped:
            prefix = cand
            break
    stripped_map = {k[len(prefix) :]: k for k in keys if k.startswith(prefix)}
    skeys = set(stripped_map)
    if "img_in.weight" in skeys and any(
        k.startswith("double_blocks.") or k.startswith("single_blocks.") for k in skeys
    ):
        layout = "bfl"
        recipes = {
            k: Recipe([k])
            for k in skeys
            if not k.endswith((".scale_weight", ".scale_input")) and k != "scaled_fp8"
        }
    elif "x_embedder.weight" in skeys and any(
        k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in skeys
    ):
        layout = "diffusers"
        recipes = _bfl_recipes_for_diffusers(skeys)
    else:
        raise QuantizeError(
            f"{files[0]}: {_describe_non_flux(skeys)}; expected a FLUX.1 transformer (BFL, diffusers or ComfyUI layout)"
        )
    # re-attach the prefix to source keys
    recipes = {k: Recipe([stripped_map[s] for s in r.sources], r.op) for k, r in recipes.items()}
    src = SourceModel(files, layout, prefix, recipes, readers)
    for k, r in recipes.items():
        dts = {readers[s].dtype_name(s) for s in r.sources}
        shapes = [readers[s].shape(s) for s in r.sources]
        if len(dts) != 1:
            raise QuantizeError(f"{files[0]}: tensors making {k!r} have mixed dtypes {sorted(dts)}")
        dt = dts.pop()
        if dt not in FLOAT_ST_DTYPES:
            if dt == "U8" and k.endswith(".weight"):
                raise QuantizeError(
                    f"{files[0]}: {k!r} is uint8 (packed/quantized weights); this tool needs a float FLUX checkpoint"
                )
            raise QuantizeError(
                f"{files[0]}: tensor {k!r} has dtype {dt}; supported are bf16, fp16, fp32 and fp8 (e4m3fn/e5m2) "
                "(GGUF / bitsandbytes / int8 checkpoints are not supported)"
            )
        if r.op == "cat":
            if len({s[1:] for s in shapes}) != 1:
                raise QuantizeError(f"{files[0]}: cannot concatenate {r.sources} into {k!r}: shapes {shapes}")
            shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        else:
            shape = shapes[0]
        src.shapes[k] = shape
        src.dtypes[k] = dt
    try:
        cfg = src.config
    except (KeyError, ValueError) as e:
        raise QuantizeError(f"{files[0]}: looks like FLUX ({src.layout_name} layout) but {e}") from None
    _check_shapes(src, cfg, files[0])
    return src


def _describe_non_flux(keys: set[str]) -> str:
    if any(k.endswith(".weight_scale") for k in keys):
        return (
            "a quantized checkpoint of an unknown format (has '*.weight_scale' but no TernaryFLUX metadata)"
        )
    if any(k.startswith(("first_stage_model.", "encoder.down", "decoder.up")) for k in keys) and not any(
        "blocks" in k for k in keys
    ):
        return "a VAE, not a FLUX transformer"
    if any(k.startswith(("encoder.block.", "shared.weight", "text_model.")) for k in keys):
        return "a text encoder (T5/CLIP), not a FLUX transformer"
    if any(k.startswith(("input_blocks.", "model.diffusion_model.input_blocks.")) for k in keys):
        return "a UNet (SD1.x/SDXL) checkpoint, not FLUX"
    if any(k.startswith(("joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in keys):
        return "an SD3 MMDiT checkpoint, not FLUX"
    return f"a safetensors file with {len(keys)} tensors that is not a FLUX transformer"


def _check_shapes(src: SourceModel, cfg: FluxConfig, where: Path) -> None:
    from ..core.flux_model import Flux

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in Flux(cfg).state_dict().items()}
    missing = [k for k in want if k not in src.shapes]
    if missing:
        raise QuantizeError(
            f"{where}: incomplete FLUX checkpoint: missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    for k, shp in want.items():
        if src.shapes[k] != shp:
            raise QuantizeError(
                f"{where}: tensor {k!r} has shape {src.shapes[k]}, expected {shp} for {cfg.variant} FLUX"
            )
    extra = sorted(set(src.shapes) - set(want))
    for k in extra:
        src.recipes.pop(k)
        src.shapes.pop(k)
        src.dtypes.pop(k)
    if extra:
        log.warning("ignoring %d tensors that FLUX does not use, e.g. %s", len(extra), extra[:3])


# ----------------------------------------------------------------------------- hashing


class FileHasher:
    """SHA-256 of the source files, streamed in a background thread (hashlib releases the GIL)."""

    def __init__(
        self, files: list[Path], chunk: int = 8 << 20, progress: Callable[[int], None] | None = None
    ):
        self.files = files
        self.chunk = chunk
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            buf = bytearray(self.chunk)
            view = memoryview(buf)
            for f in self.files:
                with open(f, "rb", buffering=0) as fh:
                    while n := fh.readinto(buf):
                        h.update(view[:n])
            self._digest = h.hexdigest()
        except BaseException as e:  # reported by result()
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


def bfl_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the diffusers -> BFL mapping (used by tests and to document it): splits
    ``qkv`` / ``linear1`` and swaps ``final_layer.adaLN_modulation.1`` back."""
    out: dict[str, torch.Tensor] = {}
    hidden = sd["img_in.weight"].shape[0]
    inv_top = {b: d for d, b in _D_TOP_SIMPLE.items()}
    for k, v in sd.items():
        mod, _, suf = k.rpartition(".")
        if mod in inv_top:
            out[f"{inv_top[mod]}.{suf}"] = v
        elif mod == "final_layer.adaLN_modulation.1":
            a, b = v.chunk(2, 0)
            out[f"norm_out.linear.{suf}"] = torch.cat([b, a], 0)
        elif m := re.match(r"double_blocks\.(\d+)\.(.+)$", k):
            i, rest = m.groups()
            p = f"transformer_blocks.{i}."
            rmod, _, rsuf = rest.rpartition(".")
            inv = {b: d for d, b in _D_DOUBLE_SIMPLE.items()}
            invn = {b: d for d, b in _D_DOUBLE_NORMS.items()}
            if rmod in inv:
                out[f"{p}{inv[rmod]}.{rsuf}"] = v
            elif rest in invn:
                out[p + invn[rest]] = v
            elif rmod in _D_DOUBLE_CAT:
                for name, part in zip(_D_DOUBLE_CAT[rmod], v.chunk(3, 0)):
                    out[f"{p}{name}.{rsuf}"] = part.contiguous()
            else:
                raise KeyError(k)
        elif m := re.match(r"single_blocks\.(\d+)\.(.+)$", k):
            i, rest = m.groups()
            p = f"single_transformer_blocks.{i}."
            rmod, _, rsuf = rest.rpartition(".")
            inv = {b: d for d, b in _D_SINGLE_SIMPLE.items()}
            invn = {b: d for d, b in _D_SINGLE_NORMS.items()}
            if rmod in inv:
                out[f"{p}{inv[rmod]}.{rsuf}"] = v
            elif rest in invn:
                out[p + invn[rest]] = v
            elif rmod == "linear1":
                sizes = [hidden, hidden, hidden, v.shape[0] - 3 * hidden]
                for name, part in zip(_D_SINGLE_CAT["linear1"], v.split(sizes, 0)):
                    out[f"{p}{name}.{rsuf}"] = part.contiguous()
            else:
                raise KeyError(k)
        else:
            raise KeyError(k)
    return out
