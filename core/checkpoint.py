"""The TernaryFLUX checkpoint format: the one place that knows it.

See ``docs/FORMAT.md`` for the specification. In short, a checkpoint is a safetensors file whose
header metadata carries one JSON entry ``"ternaryflux"``; each ternary layer ``P`` stores
``P.weight`` (uint8 packed codes), ``P.weight_scale`` (``[N, G]``, float16 where lossless, else
float32; float32 in memory), ``P.weight_shape`` (int64 ``[2]``) and, if it has one, ``P.bias``;
every other tensor is stored as in the source.

Every reader and writer goes through this module: :func:`layer_specs` / :func:`layer_tensors`
say which tensors a ternary layer has (on disk or in memory), :func:`check_layer` /
:func:`layer_from_state_dict` validate one layer, :func:`read_safetensors_header` is the one
header parser, :func:`validate_state_dict` the one whole-checkpoint validator.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..version import __version__
from .flux_layout import ARCHITECTURES as FLUX_ARCHITECTURES
from .flux_layout import POLICIES, architecture_of_keys
from .packing import base3_to_2bit, packed_2bit_cols, packed_base3_cols, twobit_to_base3
from .ternary_weight import TernaryWeight, num_groups

log = logging.getLogger(__name__)

FORMAT_NAME = "ternaryflux"
FORMAT_VERSION = 1
METADATA_KEY = "ternaryflux"
PACKINGS = ("2bit", "base3")
ARCHITECTURES = (*FLUX_ARCHITECTURES, "generic")  # flux (FLUX.1), flux2 (FLUX.2), generic
_MAX_HEADER = 100 * 1024 * 1024
LAYER_SUFFIXES = ("weight", "weight_scale", "weight_shape")  # + "bias" when the layer has one
SCALE_DTYPE_ON_DISK = torch.float16  # quantizer-made scales are float16 values (round_scale_to_fp16)


class TernaryFormatError(ValueError):
    """A file is not a valid TernaryFLUX checkpoint. The message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class TernaryMetadata:
    """What the ``"ternaryflux"`` header entry holds."""

    packing: str = "2bit"
    group_size: int = 0
    architecture: str = "flux"
    variant: str | None = None
    source_name: str | None = None
    source_sha256: str | None = None
    method: str = "absmean"
    method_params: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    tool_version: str = __version__
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    # which Linears are ternary (core.flux_layout.POLICIES); None = the architecture's default
    # (FLUX.1: blocks+modulation, FLUX.2: blocks). Left out of the JSON when None, so files
    # written before the field existed and FLUX.1 files with the default read the same.
    ternary_policy: str | None = None

    def to_json(self) -> str:
        d = asdict(self)
        if d["ternary_policy"] is None:
            del d["ternary_policy"]
        return json.dumps(d, sort_keys=True)

    @property
    def policy(self) -> str | None:
        """The effective ternary policy (``None`` for ``generic`` files)."""
        if self.architecture not in FLUX_ARCHITECTURES:
            return None
        return self.ternary_policy or FLUX_ARCHITECTURES[self.architecture].default_policy

    @classmethod
    def from_json(cls, text: str, path: str | os.PathLike = "<memory>") -> TernaryMetadata:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise TernaryFormatError(
                path, f"the {METADATA_KEY!r} header entry is not valid JSON ({e})"
            ) from None
        if not isinstance(d, dict):
            raise TernaryFormatError(path, f"the {METADATA_KEY!r} header entry must be a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise TernaryFormatError(path, f"header format is {d.get('format')!r}, expected {FORMAT_NAME!r}")
        v = d.get("format_version")
        if not isinstance(v, int) or v > FORMAT_VERSION or v < 1:
            raise TernaryFormatError(
                path,
                f"unknown format version {v!r}: this TernaryFLUX ({__version__}) reads versions 1..{FORMAT_VERSION}; "
                "update the node pack",
            )
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            log.debug("%s: ignoring unknown metadata fields %s", path, sorted(extra))
        md = cls(**{k: d[k] for k in known if k in d})
        md.validate(path)
        return md

    def validate(self, path: str | os.PathLike = "<memory>") -> None:
        if self.packing not in PACKINGS:
            raise TernaryFormatError(path, f"unknown packing {self.packing!r} (expected one of {PACKINGS})")
        if self.architecture not in ARCHITECTURES:
            raise TernaryFormatError(
                path, f"unknown architecture {self.architecture!r} (expected one of {ARCHITECTURES})"
            )
        if not isinstance(self.group_size, int) or self.group_size < 0 or self.group_size % 128:
            raise TernaryFormatError(
                path, f"group_size {self.group_size!r} must be 0 or a positive multiple of 128"
            )
        if self.ternary_policy is not None and self.ternary_policy not in POLICIES:
            raise TernaryFormatError(
                path, f"unknown ternary_policy {self.ternary_policy!r} (expected one of {POLICIES})"
            )
        if not isinstance(self.method, str) or not isinstance(self.method_params, dict):
            raise TernaryFormatError(path, "method must be a string and method_params an object")
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise TernaryFormatError(path, "calibration must be an object or null")


# ----------------------------------------------------------------------------- header


@dataclass
class SafetensorsHeader:
    """A parsed safetensors header: tensor entries, ``__metadata__``, where the data starts."""

    entries: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    data_start: int

    def as_dict(self) -> dict[str, Any]:
        return {**({"__metadata__": self.metadata} if self.metadata else {}), **self.entries}


def read_safetensors_header(path: str | os.PathLike, check_data: bool = True) -> SafetensorsHeader:
    """Parse and check a safetensors header without loading tensors.

    Raises :class:`TernaryFormatError` when the file is not safetensors or (with ``check_data``)
    when its tensor data is truncated.
    """
    p = Path(path)
    if not p.is_file():
        raise TernaryFormatError(p, "no such file")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TernaryFormatError(p, f"not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or n + 8 > size:
            if 0 < n <= _MAX_HEADER:
                raise TernaryFormatError(p, f"truncated: header says {n} bytes but the file has {size - 8}")
            raise TernaryFormatError(p, "not a safetensors file (bad header length)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TernaryFormatError(p, "not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise TernaryFormatError(p, "not a safetensors file (header is not a JSON object)")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if not isinstance(v, dict) or "data_offsets" not in v:
            raise TernaryFormatError(p, f"not a safetensors file (bad entry {k!r})")
        end = max(end, int(v["data_offsets"][1]))
    if check_data and 8 + n + end > size:
        raise TernaryFormatError(p, f"truncated: tensors need {8 + n + end} bytes but the file has {size}")
    meta = header.pop("__metadata__", None) or {}
    return SafetensorsHeader(header, dict(meta), 8 + n)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header as a dict (``__metadata__`` included); see :func:`read_safetensors_header`."""
    return read_safetensors_header(path).as_dict()


def header_metadata(header: Mapping[str, Any]) -> dict[str, str]:
    return dict(header.get("__metadata__") or {})


def is_ternary_file(path: str | os.PathLike, check_data: bool = True) -> bool:
    """True when ``path`` is a safetensors file carrying TernaryFLUX metadata (not validated;
    with ``check_data=False`` a file with truncated tensor data still counts)."""
    try:
        return METADATA_KEY in read_safetensors_header(path, check_data).metadata
    except TernaryFormatError:
        return False


def describe_file(path: str | os.PathLike) -> str:
    """One line saying what a (non-ternary or ternary) file is, for error messages."""
    try:
        header = read_header(path)
    except TernaryFormatError as e:
        return e.problem
    meta = header_metadata(header)
    keys = [k for k in header if k != "__metadata__"]
    if METADATA_KEY in meta:
        return f"a TernaryFLUX checkpoint ({len(keys)} tensors)"
    dtypes: dict[str, int] = {}
    for k in keys:
        dtypes[header[k]["dtype"]] = dtypes.get(header[k]["dtype"], 0) + 1
    main = max(dtypes, key=dtypes.get) if dtypes else "no"
    stripped = [k.removeprefix("model.diffusion_model.") for k in keys]
    flux = "FLUX.2" if architecture_of_keys(stripped) == "flux2" else "FLUX"
    if "img_in.weight" in stripped and any(k.startswith("double_blocks.") for k in stripped):
        kind = f"a plain {flux} transformer in BFL layout"
    elif any(k.startswith("transformer_blocks.") for k in stripped) and "x_embedder.weight" in stripped:
        flux = "FLUX.2" if any("stream_modulation" in k for k in stripped) else "FLUX"
        kind = f"a plain {flux} transformer in diffusers layout"
    else:
        kind = "a safetensors file that is not a FLUX transformer"
    return f"{kind} ({len(keys)} tensors, mostly {main}), not a TernaryFLUX checkpoint"


# ----------------------------------------------------------------------------- read


@dataclass
class TernaryCheckpoint:
    """A loaded checkpoint: a state dict in the runtime 2-bit layout plus its metadata."""

    state_dict: dict[str, torch.Tensor]
    metadata: TernaryMetadata
    ternary_layers: list[str]
    path: str


# ----------------------------------------------------------------------------- one ternary layer


def packed_cols(k: int, packing: str) -> int:
    """Bytes per row of packed codes for ``k`` inputs in ``packing`` (2bit or base3)."""
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r} (expected one of {PACKINGS})")
    return packed_2bit_cols(k) if packing == "2bit" else packed_base3_cols(k)


def layer_specs(
    prefix: str, shape: tuple[int, int], group_size: int, packing: str
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``(name, dtype, shape)`` of the tensors a ternary layer stores on disk (bias aside), in
    the order they are written: codes, scales, logical shape."""
    n, k = shape
    return [
        (f"{prefix}.weight", torch.uint8, (n, packed_cols(k, packing))),
        (f"{prefix}.weight_scale", SCALE_DTYPE_ON_DISK, (n, num_groups(k, group_size))),
        (f"{prefix}.weight_shape", torch.int64, (2,)),
    ]


def layer_tensors(prefix: str, tw: TernaryWeight, packing: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one ternary layer (bias aside).

    ``packing=None``: the runtime (in-memory) form, the state dict of a
    :class:`~.ternary_linear.TernaryLinear`: 2-bit codes, float32 scales. ``"2bit"`` / ``"base3"``:
    the on-disk form on the CPU, codes in that packing, scales float16 where that is lossless
    (quantizer-made scales always are, see ``round_scale_to_fp16``), else float32.
    """
    shape = torch.tensor(tw.shape, dtype=torch.int64, device=tw.packed.device)
    if packing is None:
        return {
            f"{prefix}.weight": tw.packed,
            f"{prefix}.weight_scale": tw.scale.to(torch.float32),
            f"{prefix}.weight_shape": shape,
        }
    packed = tw.packed.cpu()
    if packing == "base3":
        packed = twobit_to_base3(packed, tw.shape[1])
    elif packing != "2bit":
        raise ValueError(f"unknown packing {packing!r} (expected one of {PACKINGS})")
    scale = tw.scale.detach().cpu().to(torch.float32)
    s16 = scale.to(SCALE_DTYPE_ON_DISK)
    return {
        f"{prefix}.weight": packed,
        f"{prefix}.weight_scale": s16 if torch.equal(s16.to(torch.float32), scale) else scale,
        f"{prefix}.weight_shape": shape.cpu(),
    }


def check_layer(
    sd: Mapping[str, torch.Tensor], prefix: str, packing: str = "2bit", path: str | os.PathLike = "<memory>"
) -> tuple[int, int, int]:
    """Validate the tensors of ternary layer ``prefix`` in ``sd`` (codes in ``packing``);
    returns ``(N, K, group_size)``. Raises :class:`TernaryFormatError` naming the problem."""
    for suffix in LAYER_SUFFIXES:
        if f"{prefix}.{suffix}" not in sd:
            raise TernaryFormatError(path, f"layer {prefix!r} has a scale but no '{prefix}.{suffix}'")
    w, s, shp = sd[f"{prefix}.weight"], sd[f"{prefix}.weight_scale"], sd[f"{prefix}.weight_shape"]
    if shp.dtype != torch.int64 or tuple(shp.shape) != (2,) or int(shp.min()) <= 0:
        raise TernaryFormatError(
            path, f"layer {prefix!r}: weight_shape must be two positive int64, got {shp.tolist()}"
        )
    n, k = (int(x) for x in shp.tolist())
    cols = packed_cols(k, packing)
    if w.dtype != torch.uint8 or tuple(w.shape) != (n, cols):
        raise TernaryFormatError(
            path,
            f"layer {prefix!r}: packed shape {tuple(w.shape)} ({w.dtype}) disagrees with logical shape {(n, k)} "
            f"(expected uint8 {(n, cols)} for {packing} packing)",
        )
    if not s.is_floating_point() or s.dim() != 2 or s.shape[0] != n or k % s.shape[1]:
        raise TernaryFormatError(
            path, f"layer {prefix!r}: scale shape {tuple(s.shape)} does not fit shape {(n, k)}"
        )
    g = s.shape[1]
    return n, k, 0 if g == 1 else k // g


def layer_from_state_dict(
    sd: Mapping[str, torch.Tensor], prefix: str, path: str | os.PathLike = "<memory>"
) -> TernaryWeight:
    """The :class:`TernaryWeight` of layer ``prefix`` of a runtime-layout state dict, validated."""
    n, k, group_size = check_layer(sd, prefix, "2bit", path)
    try:
        return TernaryWeight(
            sd[f"{prefix}.weight"], sd[f"{prefix}.weight_scale"].to(torch.float32), (n, k), group_size
        )
    except ValueError as e:
        raise TernaryFormatError(path, f"layer {prefix!r}: {e}") from None


def ternary_prefixes(keys) -> list[str]:
    """The ternary layers among state-dict ``keys`` (those with a ``.weight_scale``), sorted."""
    return sorted({k[: -len(".weight_scale")] for k in keys if k.endswith(".weight_scale")})


def validate_state_dict(
    sd: Mapping[str, torch.Tensor], meta: TernaryMetadata, path: str | os.PathLike = "<memory>"
) -> list[str]:
    """Check every ternary layer of ``sd`` (stored in ``meta.packing``); returns their prefixes."""
    prefixes = ternary_prefixes(sd)
    if not prefixes:
        raise TernaryFormatError(
            path, "has TernaryFLUX metadata but no ternary layer (no '*.weight_scale' tensor)"
        )
    pset = set(prefixes)
    arch = FLUX_ARCHITECTURES.get(meta.architecture)
    if arch is not None:
        found = architecture_of_keys(set(sd))
        if found != arch.name:
            raise TernaryFormatError(
                path,
                f"metadata says {arch.title} but the tensors are {FLUX_ARCHITECTURES[found].title}"
                f" ({'has' if found == 'flux2' else 'lacks'} 'double_stream_modulation_img.lin.weight')",
            )
    for k, t in sd.items():
        if k.endswith(".weight") and t.dtype == torch.uint8 and k[: -len(".weight")] not in pset:
            raise TernaryFormatError(path, f"missing scale for layer {k[:-7]!r} (no '{k[:-7]}.weight_scale')")
    for p in prefixes:
        if arch is not None and not arch.is_ternary_layer(p, meta.policy):
            raise TernaryFormatError(
                path,
                f"unknown layer name {p!r}: not a ternary {arch.title} layer under policy {meta.policy!r}",
            )
        _, _, group_size = check_layer(sd, p, meta.packing, path)
        if group_size and meta.group_size and group_size != meta.group_size:
            g = sd[f"{p}.weight_scale"].shape[1]
            raise TernaryFormatError(
                path, f"layer {p!r}: {g} scale groups disagree with group_size {meta.group_size}"
            )
        if not torch.isfinite(sd[f"{p}.weight_scale"]).all():
            raise TernaryFormatError(path, f"layer {p!r}: non-finite scales")
    return prefixes


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> TernaryCheckpoint:
    """Read, validate and (for base3 files) decode a checkpoint into the runtime layout."""
    header = read_header(path)
    meta_raw = header_metadata(header)
    if METADATA_KEY not in meta_raw:
        raise TernaryFormatError(
            path, f"{describe_file(path)}: convert it with `ternaryflux quantize` or the Ternarize FLUX node"
        )
    sd: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                sd[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types
        raise TernaryFormatError(path, f"cannot read tensors ({type(e).__name__}: {e})") from None
    return checkpoint_from_tensors(sd, meta_raw[METADATA_KEY], path)


def checkpoint_from_tensors(
    sd: dict[str, torch.Tensor], metadata_json: str, path: str | os.PathLike = "<memory>"
) -> TernaryCheckpoint:
    """Validate the tensors a checkpoint file holds (as stored, any packing) and turn them into the
    runtime layout, in place: what :func:`load_checkpoint` does after reading the file."""
    meta = TernaryMetadata.from_json(metadata_json, path)
    prefixes = validate_state_dict(sd, meta, path)
    for p in prefixes:
        sd[f"{p}.weight_scale"] = sd[f"{p}.weight_scale"].to(torch.float32)
    if meta.packing == "base3":
        for p in prefixes:
            k = int(sd[f"{p}.weight_shape"][1])
            try:
                sd[f"{p}.weight"] = base3_to_2bit(sd[f"{p}.weight"], k)
            except ValueError as e:
                raise TernaryFormatError(path, f"layer {p!r}: {e}") from None
        meta.packing = "2bit"
    return TernaryCheckpoint(sd, meta, prefixes, str(path))


# ----------------------------------------------------------------------------- write


def current_umask() -> int:
    """The process umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no read-only API elsewhere: set and restore at once
    os.umask(mask)
    return mask


def publish_temp_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode a plainly created file would get (0666 minus
    the umask), so a ComfyUI running as another user can read the checkpoint, then rename it over
    ``path`` (atomic on one file system)."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """``safetensors`` save to a temporary file in the target folder, then rename over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        publish_temp_file(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checkpoint(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: TernaryMetadata
) -> None:
    """Validate and write a checkpoint (runtime-layout ``state_dict``) atomically.

    With ``metadata.packing == "base3"`` the packed codes are re-encoded at 5 trits per byte.
    """
    metadata.validate(path)
    runtime = TernaryMetadata(**{**asdict(metadata), "packing": "2bit"})
    prefixes = validate_state_dict(state_dict, runtime, path)
    out = dict(state_dict)
    for p in prefixes:
        out.update(layer_tensors(p, layer_from_state_dict(state_dict, p, path), metadata.packing))
    atomic_save_safetensors(out, path, {METADATA_KEY: metadata.to_json()})
