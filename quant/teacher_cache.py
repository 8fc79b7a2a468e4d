"""The float teacher's block-boundary streams and velocities, cached on disk for distillation.

The teacher is never whole in memory: its blocks are read one at a time from the safetensors
file, run on every sample, and the stream after each block is written to disk. One folder per
(teacher files' sha256, samples' sha256, storage dtype), reused across runs::

    <root>/<key>/const.safetensors     per sample s<j>: vec, pe (+ FLUX.2's mod_img/mod_txt/mod_single)
    <root>/<key>/b000.safetensors      per sample s<j>: the embedded img, txt (input of stage 0)
    <root>/<key>/bNNN.safetensors      output of stage N-1: img, txt (double) or x (single)
    <root>/<key>/velocity.safetensors  per sample s<j>: the teacher's velocity (latent layout)
    <root>/<key>/manifest.json         written last: a folder without it is incomplete

Every file is written to a temporary name and renamed, so an interrupted build (out of disk,
SIGTERM, a dead rank) leaves only complete files, and the next build writes only what is
missing. Reads are plain file reads of single tensors (no mmap), so the memory a reader holds is
one sample's tensors of one boundary.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..core.calibration_data import CalibrationSample
from ..core.checkpoint import atomic_save_safetensors
from ..core.flux_layout import Flux2Config, FluxConfig
from ..core.flux_model import model_class
from .errors import QuantizeError
from .flux import _load_module, model_key_order
from .sources import SafetensorsReader

log = logging.getLogger(__name__)

CACHE_FORMAT = "ternaryflux-teacher-cache"
CACHE_VERSION = 1
STREAM_FIELDS = ("img", "txt", "x")  # what changes from block to block; the rest is constant
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sha256_files(paths: Sequence[Path], progress: bool = False) -> str:
    """sha256 over the files' bytes, in order (names not included)."""
    h = hashlib.sha256()
    total = sum(Path(p).stat().st_size for p in paths)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="hash", disable=not progress, mininterval=2
    ) as bar:
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(16 << 20):
                    h.update(chunk)
                    bar.update(len(chunk))
    return h.hexdigest()


def samples_sha256(samples: Sequence[CalibrationSample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        for name in ("x", "timestep", "context", "y", "guidance"):
            t = getattr(s, name)
            h.update(name.encode())
            if t is not None:
                t = t.detach().cpu().contiguous()
                h.update(str((tuple(t.shape), t.dtype)).encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Stage:
    """One block of the stream: ``double_blocks.i`` or ``single_blocks.i``."""

    name: str
    kind: str  # "double" | "single"

    @property
    def prefix(self) -> str:
        return self.name + "."

    @property
    def fields(self) -> tuple[str, ...]:
        """The stream entries the block returns (and whose input is its first arguments)."""
        return ("img", "txt") if self.kind == "double" else ("x",)


def stages(config: FluxConfig | Flux2Config) -> list[Stage]:
    return [Stage(f"double_blocks.{i}", "double") for i in range(config.depth)] + [
        Stage(f"single_blocks.{i}", "single") for i in range(config.depth_single_blocks)
    ]


def new_block(config: FluxConfig | Flux2Config, stage: Stage, **kw) -> torch.nn.Module:
    cls = model_class(config)
    return (cls.new_double_block if stage.kind == "double" else cls.new_single_block)(config, **kw)


def block_args(config: FluxConfig | Flux2Config, stage: Stage, stream: dict) -> tuple:
    cls = model_class(config)
    return (cls.double_args if stage.kind == "double" else cls.single_args)(stream)


def join_for(stage: Stage, stream: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A single-stream block takes text and image tokens joined (``x``), as FLUX does."""
    if stage.kind == "single" and "x" not in stream:
        stream = dict(stream)
        stream["x"] = torch.cat((stream.pop("txt"), stream.pop("img")), dim=1)
    return stream


def final_tokens(stream: dict[str, torch.Tensor], txt_len: int) -> torch.Tensor:
    """The image tokens the final layer takes."""
    return stream["x"][:, txt_len:] if "x" in stream else stream["img"]


def _key(
    config: FluxConfig | Flux2Config, teacher_sha: str, samples_sha: str, dtype: str
) -> tuple[str, dict[str, Any]]:
    ident = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher_sha256": teacher_sha,
        "samples_sha256": samples_sha,
        "dtype": dtype,
        "config": repr(config),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20], ident


def cache_bytes(config: FluxConfig | Flux2Config, samples: Sequence[CalibrationSample], dtype: str) -> int:
    """Disk bytes of a complete cache for ``samples`` (shapes only)."""
    es = CACHE_DTYPES[dtype].itemsize
    h = config.hidden_size
    total = 0
    for s in samples:
        b = s.x.shape[0]
        cls = model_class(config)
        with torch.device("meta"):
            tok = cls.latent_to_tokens(
                torch.empty(s.x.shape), torch.empty(b), torch.empty(s.context.shape), None, None
            )
        n_img, n_txt = tok["img"].shape[1], s.context.shape[1]
        per_boundary = b * (n_img + n_txt) * h * es
        total += per_boundary * (len(stages(config)) + 1) + s.x.numel() * 4
        total += b * (n_img + n_txt) * 64 * 4 + b * h * 4 * 16  # pe, vec, modulations (small)
    return total


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        atomic_save_safetensors(tensors, path, {"format": CACHE_FORMAT})
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise QuantizeError(
                f"out of disk space writing the teacher cache {path} (free space there or choose "
                "another --cache-dir); the complete parts are kept and reused by the next run"
            ) from None
        raise


class TeacherCache:
    """A complete cache folder (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        mf = self.directory / "manifest.json"
        if not mf.is_file():
            raise QuantizeError(f"{self.directory}: not a complete teacher cache (no manifest.json)")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != CACHE_FORMAT or self.manifest.get("version") != CACHE_VERSION:
            raise QuantizeError(f"{mf}: not a teacher cache of this version")
        self.n_samples = int(self.manifest["n_samples"])
        self.txt_len = [int(t) for t in self.manifest["txt_len"]]
        self._readers: dict[str, SafetensorsReader] = {}

    def _get(self, file: str, key: str, device, dtype: torch.dtype | None) -> torch.Tensor:
        r = self._readers.get(file)
        if r is None:
            r = self._readers[file] = SafetensorsReader(self.directory / file)
        t = r.get(key)
        return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

    def const(self, j: int, device=None, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return {k: self._get("const.safetensors", f"s{j}.{k}", device, dtype) for k in self.manifest["const"]}

    def boundary(
        self, b: int, j: int, device=None, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """The stream entries after stage ``b - 1`` (``b = 0``: the embedding) of sample ``j``."""
        fields = ("img", "txt") if b <= self.manifest["depth"] else ("x",)
        return {f: self._get(f"b{b:03d}.safetensors", f"s{j}.{f}", device, dtype) for f in fields}

    def stage_input(
        self, stage_index: int, stage: Stage, j: int, device=None, dtype=torch.float32
    ) -> dict[str, torch.Tensor]:
        """Everything ``stage`` reads of sample ``j``: constants and the boundary before it."""
        return join_for(
            stage, {**self.const(j, device, dtype), **self.boundary(stage_index, j, device, dtype)}
        )

    def velocity(self, j: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._get("velocity.safetensors", f"s{j}", device, dtype)


def build_teacher_cache(
    src,
    samples: Sequence[CalibrationSample],
    root: Path,
    *,
    teacher_sha256: str,
    dtype: str = "float32",
    device: torch.device | None = None,
    progress: bool = True,
    is_main: bool = True,
) -> TeacherCache:
    """The cache of ``src`` (a :class:`~.sources.SourceModel` or :class:`~.flux.TensorSource`) on
    ``samples`` under ``root``: reused when complete, else built (only the missing files).
    Refuses before writing anything when the disk lacks the space. Only ``is_main`` writes; the
    other ranks of a distributed run wait for the manifest through the caller's barrier."""
    device = device or torch.device("cpu")
    if dtype not in CACHE_DTYPES:
        raise QuantizeError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, not {dtype!r}")
    cfg = src.config
    key, ident = _key(cfg, teacher_sha256, samples_sha256(samples), dtype)
    folder = Path(root) / key
    if (folder / "manifest.json").is_file():
        log.info("teacher cache: reusing %s", folder)
        return TeacherCache(folder)
    if not is_main:
        return None  # type: ignore[return-value]
    folder.mkdir(parents=True, exist_ok=True)
    sts = stages(cfg)
    files = (
        ["const.safetensors"]
        + [f"b{b:03d}.safetensors" for b in range(len(sts) + 1)]
        + ["velocity.safetensors"]
    )
    need = cache_bytes(cfg, samples, dtype)
    have = sum((folder / f).stat().st_size for f in files if (folder / f).is_file())
    free = shutil.disk_usage(folder).free
    log.info(
        "teacher cache %s: %.2f GB in all, %.2f GB to write, %.2f GB free",
        folder,
        need / 1e9,
        max(need - have, 0) / 1e9,
        free / 1e9,
    )
    if need - have > free:
        raise QuantizeError(
            f"the teacher cache needs {(need - have) / 1e9:.2f} GB more in {folder} but only "
            f"{free / 1e9:.2f} GB are free: free space, choose another --cache-dir, or use fewer samples"
        )
    cast = CACHE_DTYPES[dtype]
    cls = model_class(cfg)
    with torch.device("meta"):
        skeleton = cls(cfg, dtype=torch.float32)
    outside = [k for k in model_key_order(cfg) if not k.startswith(("double_blocks.", "single_blocks."))]
    skeleton.load_state_dict({k: src.get(k).to(device) for k in outside}, strict=False, assign=True)
    const_names: list[str] = []
    txt_len: list[int] = []
    streams: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for s in samples:
            st = skeleton.embed(**skeleton.tokens_of(**s.as_inputs(device, torch.float32)))
            txt_len.append(int(st["txt"].shape[1]))
            streams.append({k: v.cpu() for k, v in st.items()})  # every sample's stream: on the host
        const_names = [k for k in streams[0] if k not in STREAM_FIELDS]
        if not (folder / "const.safetensors").is_file():
            _atomic_save(
                {
                    f"s{j}.{k}": st[k].float().contiguous().cpu()
                    for j, st in enumerate(streams)
                    for k in const_names
                },
                folder / "const.safetensors",
            )
        consts = [{k: st[k] for k in const_names} for st in streams]
        bar = tqdm(total=len(sts) + 1, desc="teacher cache", unit="block", disable=not progress)

        def save_boundary(b: int, outs: list[dict[str, torch.Tensor]]) -> None:
            _atomic_save(
                {
                    f"s{j}.{f}": t.to(cast).contiguous().cpu()
                    for j, o in enumerate(outs)
                    for f, t in o.items()
                },
                folder / f"b{b:03d}.safetensors",
            )

        cur = [{f: st[f] for f in ("img", "txt")} for st in streams]
        del streams
        if not (folder / "b000.safetensors").is_file():
            save_boundary(0, cur)
        bar.update(1)
        reader_cache = TeacherCache.__new__(TeacherCache)  # partial reader for resumed builds
        reader_cache.directory, reader_cache._readers = folder, {}
        reader_cache.manifest = {"depth": cfg.depth}
        for b, stage in enumerate(sts):
            if (folder / f"b{b + 1:03d}.safetensors").is_file():
                cur = None  # this boundary is done; the next missing one re-reads its input
                bar.update(1)
                continue
            if cur is None:
                cur = [reader_cache.boundary(b, j, "cpu", None) for j in range(len(samples))]
            with torch.device("meta"):
                block = new_block(cfg, stage, dtype=torch.float32)
            block = _load_module(block, src, stage.prefix, device)
            nxt = []
            for j, c in enumerate(cur):
                stream = join_for(
                    stage,
                    {
                        **{k: t.to(device) for k, t in consts[j].items()},
                        **{f: t.to(device, torch.float32) for f, t in c.items()},
                    },
                )
                out = block(*block_args(cfg, stage, stream))
                out = out if isinstance(out, tuple) else (out,)
                # to the host in the stored dtype at once: the device holds one sample's stream
                nxt.append({f: t.to("cpu", cast) for f, t in zip(stage.fields, out)})
                del stream, out
            del block
            save_boundary(b + 1, nxt)
            # the next stage reads what was stored (the same rounding as a resumed build);
            # it converts each sample back to float32 on the device
            cur = nxt
            bar.update(1)
        if cur is None:
            cur = [reader_cache.boundary(len(sts), j, "cpu", None) for j in range(len(samples))]
        if not (folder / "velocity.safetensors").is_file():
            vel = {}
            for j, s in enumerate(samples):
                const = {k: t.to(device) for k, t in consts[j].items()}
                stream = {**const, **{f: t.to(device, torch.float32) for f, t in cur[j].items()}}
                out = skeleton.final_layer(final_tokens(stream, txt_len[j]), const["vec"])
                vel[f"s{j}"] = skeleton.tokens_to_latent(out, s.x).float().contiguous().cpu()
            _atomic_save(vel, folder / "velocity.safetensors")
        bar.close()
    manifest = {
        **ident,
        "n_samples": len(samples),
        "txt_len": txt_len,
        "const": const_names,
        "depth": cfg.depth,
        "stages": [s.name for s in sts],
        "bytes": sum((folder / f).stat().st_size for f in files),
    }
    tmp = folder / f".manifest.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")
    return TeacherCache(folder)
