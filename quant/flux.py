"""Streaming FLUX quantization: float checkpoint in, TernaryFLUX checkpoint out, block by block.

Memory: the source is read one tensor at a time (:mod:`.sources`), the output is written as it is
produced (:mod:`.st_writer`), so the peak is about one block of float32 weights plus, for
``calibrated``, the calibration activations. The source SHA-256 is computed in a background
thread while the layers are processed and patched into the header before the final rename.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..core.calibration_data import CalibrationSample
from ..core.checkpoint import METADATA_KEY, TernaryMetadata, layer_specs, layer_tensors
from ..core.flux_layout import ARCHITECTURES, Flux2Config, FluxConfig, architecture
from ..core.flux_model import model_class
from ..core.ternarize import ternarize_with_error
from ..core.ternary_weight import check_group_size
from .algorithms import TernaryConfig, quantize_
from .capture import flatten_outputs
from .errors import QuantizeError
from .sources import DTYPE_NAMES, FileHasher, FluxShapes, SourceModel
from .writer import DTYPE_TO_ST, MemoryWriter, StreamingSafetensorsWriter

log = logging.getLogger(__name__)

_SHA_PLACEHOLDER = "sha256-pending-" + "0" * 49  # 64 characters, like a hex digest
_OUT_DTYPE = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float32,
    "F8_E4M3": torch.bfloat16,
    "F8_E5M2": torch.bfloat16,
}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process. On Linux from ``VmHWM`` (``ru_maxrss`` would
    include the parent's size at fork for a child process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def limit_heap_growth(threshold: int = 1 << 20) -> None:
    """glibc only: serve allocations >= ``threshold`` with mmap so freed layer buffers go back to
    the OS at once (glibc's adaptive threshold otherwise keeps them on a fragmenting heap, and
    the RSS of a streaming run creeps up to ~2x the largest layer)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise QuantizeError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QuantizeError(f"device {device!r}: this torch has no CUDA device; use the CPU")
    return dev


def model_key_order(config: FluxConfig | Flux2Config) -> list[str]:
    with torch.device("meta"):
        return list(model_class(config)(config).state_dict())


def stored_policy(arch: str, policy: str | None) -> str | None:
    """The ``ternary_policy`` a checkpoint records: FLUX.2 files always name theirs; FLUX.1 files
    leave the default (``blocks+modulation``) implicit, byte for byte as before the field existed."""
    a = architecture(arch)
    policy = policy or a.default_policy
    return None if arch == "flux" and policy == a.default_policy else policy


def output_specs(
    src: SourceModel, group_size: int, packing: str, policy: str | None = None
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of every output tensor, in writing order (the model's key order);
    ``policy`` (default: the architecture's) says which Linears are ternary."""
    arch = architecture(src.config.architecture)
    specs = []
    for key in model_key_order(src.config):
        prefix = key[: -len(".weight")] if key.endswith(".weight") else None
        if prefix is not None and arch.is_ternary_layer(prefix, policy):
            n, k = src.shapes[key]
            check_group_size(k, group_size)
            specs += layer_specs(prefix, (n, k), group_size, packing)
        else:
            specs.append((key, _OUT_DTYPE[src.dtypes[key]], src.shapes[key]))
    return specs


@dataclass
class _Emitter:
    """Writes tensors in header order as they become ready."""

    writer: StreamingSafetensorsWriter
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    pending: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, name: str, t: torch.Tensor) -> None:
        dt, _ = self.specs[name]
        if t.dtype != dt and name.endswith(".weight_scale"):
            # layer_tensors keeps float32 only for scales outside float16's normal range
            err = ((t.to(dt).float() - t.float()).abs() / t.float().abs().clamp_min(1e-30)).max().item()
            log.warning("%s: scales rounded to %s with relative error up to %.2g", name, dt, err)
        self.pending[name] = t.detach().to("cpu", dt)
        while (n := self.writer.next_name) is not None and n in self.pending:
            self.writer.write(n, self.pending.pop(n))


class _LayerProgress:
    """The tqdm bar plus an optional ``callback(done, total)`` per ternary layer."""

    def __init__(self, bar: tqdm, total: int, callback: Callable[[int, int], None] | None):
        self.bar, self.total, self.callback, self.done = bar, total, callback, 0

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        self.bar.close()


@torch.no_grad()
def quantize_flux(
    src: SourceModel | TensorSource,
    out: str | Path | MemoryWriter,
    config: TernaryConfig,
    packing: str = "2bit",
    calibration: Sequence[CalibrationSample] | None = None,
    calibration_summary: dict[str, Any] | None = None,
    device: str | None = "auto",
    hash_source: bool = True,
    progress: bool = True,
    on_layer: Callable[[int, int], None] | None = None,
    policy: str | None = None,
) -> dict[str, Any]:
    """Quantize the FLUX ``src`` (FLUX.1 or FLUX.2) into the checkpoint ``out`` (a file path, or a
    :class:`~.writer.MemoryWriter` that keeps the tensors in memory); returns the JSON report.

    ``policy``: which Linears become ternary (``blocks`` / ``blocks+modulation``, see
    :mod:`~ternaryflux.core.flux_layout`); ``None`` = the architecture's default.

    ``on_layer(done, total)`` is called after every ternary layer (e.g. a GUI progress bar; it
    may raise to cancel, and then ``out`` is left untouched)."""
    config.validate()
    if packing not in ("2bit", "base3"):
        raise QuantizeError(f"unknown packing {packing!r}: use 2bit or base3")
    dev = resolve_device(device)
    limit_heap_growth()
    cfg = src.config
    t_start = time.perf_counter()
    hasher = FileHasher(src.files) if hash_source and isinstance(src, SourceModel) else None
    try:
        architecture(cfg.architecture).ternary_layer_names(0, 0, policy)
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    try:
        specs = output_specs(src, config.group_size, packing, policy)
    except ValueError as e:
        raise QuantizeError(f"group size {config.group_size}: {e}") from None
    if config.method == "calibrated" and not calibration:
        raise QuantizeError(
            "method 'calibrated' needs calibration samples (record them with the Record Calibration node or `ternaryflux calibrate`)"
        )
    meta = TernaryMetadata(
        packing=packing,
        group_size=config.group_size,
        architecture=cfg.architecture,
        ternary_policy=stored_policy(cfg.architecture, policy),
        variant=src.variant,
        source_name=src.files[0].name if len(src.files) == 1 else src.files[0].parent.name,
        source_sha256=_SHA_PLACEHOLDER if hasher else None,
        method=config.method,
        method_params={
            **config.params(),
            "source_layout": src.layout,
            "source_dtype": DTYPE_NAMES.get(src.main_dtype(), src.main_dtype()),
        },
        calibration=calibration_summary if config.method == "calibrated" else None,
    )
    if isinstance(out, MemoryWriter):
        writer = out.start(specs, {METADATA_KEY: meta.to_json()})
    else:
        writer = StreamingSafetensorsWriter(out, specs, {METADATA_KEY: meta.to_json()})
    emitter = _Emitter(writer, {n: (dt, shp) for n, dt, shp in specs})
    layers: list[dict[str, Any]] = []
    n_ternary = sum(1 for n, _, _ in specs if n.endswith(".weight_scale"))
    bar = _LayerProgress(
        tqdm(
            total=n_ternary,
            desc=f"quantize ({config.method})",
            unit="layer",
            disable=not progress,
            dynamic_ncols=True,
        ),
        n_ternary,
        on_layer,
    )
    with writer:
        if config.method == "calibrated":
            _quantize_calibrated(src, cfg, config, packing, calibration, emitter, dev, layers, bar)
        else:
            _quantize_data_free(src, config, packing, emitter, dev, layers, bar)
        bar.close()
        digest = hasher.result() if hasher else None
        if digest:
            writer.header_patches[_SHA_PLACEHOLDER.encode()] = digest.encode()
    seconds = time.perf_counter() - t_start
    in_bytes = src.source_bytes()
    out_bytes = writer.total_bytes if isinstance(out, MemoryWriter) else Path(out).stat().st_size
    report = {
        "output": "<memory>" if isinstance(out, MemoryWriter) else str(out),
        "source": [str(f) for f in src.files],
        "source_layout": src.layout_name,
        "source_dtype": DTYPE_NAMES.get(src.main_dtype(), src.main_dtype()),
        "source_sha256": digest,
        "variant": src.variant,
        "architecture": cfg.architecture,
        "ternary_policy": policy or architecture(cfg.architecture).default_policy,
        "config": cfg.to_dict(),
        "method": config.method,
        "method_params": config.params(),
        "packing": packing,
        "device": str(dev),
        "calibration": calibration_summary,
        "input_bytes": in_bytes,
        "output_bytes": out_bytes,
        "compression": in_bytes / max(out_bytes, 1),
        "seconds": seconds,
        "input_MB_per_s": in_bytes / 1e6 / max(seconds, 1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "ternary_layers": len(layers),
        "layers": layers,
    }
    if layers:
        report["mean_weight_rel_err"] = sum(r["weight_rel_err"] for r in layers) / len(layers)
    return report


_ST_TO_TORCH = {v: k for k, v in DTYPE_TO_ST.items()}


@dataclass
class TensorSource(FluxShapes):
    """A float FLUX held in memory, addressed by BFL keys: the part of :class:`SourceModel`
    that :func:`quantize_flux` uses (``shapes``, ``dtypes``, ``get`` ...), fed by ``getter``
    one tensor at a time, so a caller never needs a second full copy of the model.

    ``getter(key)`` returns the tensor in any float dtype (fp8 and bf16/fp16 included) or
    already float32 on any device; :meth:`get` always hands out a fresh copy, because the
    calibrated method edits the block weights it loads in place.
    """

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # BFL key -> safetensors dtype name (BF16, F16, F32, F8_E4M3 ...)
    getter: Callable[[str], torch.Tensor]
    name: str = "<memory>"
    layout: str = "memory"

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], name: str = "<memory>") -> TensorSource:
        """A BFL-layout state dict (``*.scale`` RMSNorm keys, as the BFL files have them)."""
        bad = [k for k, v in sd.items() if v.dtype not in DTYPE_TO_ST]
        if bad:
            raise QuantizeError(f"{name}: tensor {bad[0]!r} has unsupported dtype {sd[bad[0]].dtype}")
        return cls(
            {k: tuple(v.shape) for k, v in sd.items()},
            {k: DTYPE_TO_ST[v.dtype] for k, v in sd.items()},
            sd.__getitem__,
            name,
        )

    @property
    def files(self) -> list[Path]:
        return [Path(self.name)]

    @property
    def layout_name(self) -> str:
        return f"{self.layout} (in memory)"

    def keys(self) -> list[str]:
        return list(self.shapes)

    def main_dtype(self) -> str:
        counts: dict[str, int] = {}
        for k, d in self.dtypes.items():
            counts[d] = counts.get(d, 0) + torch.Size(self.shapes[k]).numel()
        return max(counts, key=counts.get) if counts else "?"

    def source_bytes(self) -> int:
        return sum(
            torch.Size(s).numel() * torch.empty((), dtype=_ST_TO_TORCH[self.dtypes[k]]).element_size()
            for k, s in self.shapes.items()
        )

    def get(self, key: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Like :meth:`SourceModel.get`: ``dtype`` (``None`` = as held, fp8 as float32), a copy."""
        t = self.getter(key).detach()
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return t.to(torch.float32 if dtype is None else dtype)
        if dtype is not None and t.is_floating_point():
            return t.to(dtype, copy=True)
        return t.clone()


def check_tensor_source(src: TensorSource) -> FluxConfig | Flux2Config:
    """The source's FLUX config; every tensor of that FLUX must be present (extra ones are
    ignored, as :func:`quantize_flux` writes only the model's keys)."""
    try:
        cfg = src.config
    except (KeyError, ValueError) as e:
        raise QuantizeError(f"{src.name}: not a FLUX.1 or FLUX.2 transformer ({e})") from None
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in model_class(cfg)(cfg).state_dict().items()}
    missing = sorted(set(want) - set(src.shapes))
    if missing:
        raise QuantizeError(f"{src.name}: {len(missing)} FLUX tensors missing, e.g. {missing[:3]}")
    wrong = [k for k, s in want.items() if tuple(src.shapes[k]) != s]
    if wrong:
        raise QuantizeError(
            f"{src.name}: {wrong[0]!r} has shape {src.shapes[wrong[0]]}, expected {want[wrong[0]]}"
        )
    extra = sorted(set(src.shapes) - set(want))
    if extra:
        log.warning(
            "%s: %d tensors that %s does not have are not written, e.g. %s",
            src.name,
            ARCHITECTURES[cfg.architecture].title,
            len(extra),
            extra[:3],
        )
    return cfg


def quantize_flux_tensors(
    src: TensorSource | Mapping[str, torch.Tensor],
    out: str | Path | MemoryWriter,
    config: TernaryConfig,
    calibration: Sequence[CalibrationSample] | None = None,
    calibration_summary: dict[str, Any] | None = None,
    packing: str = "2bit",
    device: str | None = "auto",
    progress: bool = False,
    on_layer: Callable[[int, int], None] | None = None,
    policy: str | None = None,
) -> dict[str, Any]:
    """:func:`quantize_flux` for a FLUX in memory (a BFL state dict or a :class:`TensorSource`):
    the same recipe, tensors and file as ``ternaryflux quantize`` on a file holding the same
    weights (minus the source SHA-256, which needs a file). Used by the Ternarize FLUX node.

    ``calibration`` is used as given: subsample it beforehand (e.g. with
    :func:`~.common.load_calibration` and its seed, as the CLI does).
    """
    if not isinstance(src, TensorSource):
        src = TensorSource.from_state_dict(src)
    cfg = check_tensor_source(src)
    if calibration:
        from .calibration import check_calibration_fits

        check_calibration_fits(calibration, cfg)
    return quantize_flux(
        src,
        out,
        config,
        packing=packing,
        calibration=calibration,
        calibration_summary=calibration_summary,
        device=device,
        hash_source=False,
        progress=progress,
        on_layer=on_layer,
        policy=policy,
    )


def _ternary_prefixes(emitter: _Emitter) -> set[str]:
    """The layers the output stores ternary (those with a scale in the header)."""
    return {n[: -len(".weight_scale")] for n in emitter.specs if n.endswith(".weight_scale")}


def _emit_data_free(src, name: str, method: str, group_size: int, packing, emitter, dev, layers, bar) -> None:
    """Ternarize one layer without data and emit its tensors."""
    prefix = name[: -len(".weight")]
    t0 = time.perf_counter()
    w = src.get(name, dtype=None).to(dev)
    tw, err = ternarize_with_error(w, method, group_size)
    del w
    for k, v in layer_tensors(prefix, tw, packing).items():
        emitter.add(k, v)
    layers.append(
        {
            "layer": prefix,
            "shape": list(tw.shape),
            "choice": method,
            "weight_rel_err": err,
            "seconds": time.perf_counter() - t0,
        }
    )
    bar.update(1)


def _quantize_data_free(src, config, packing, emitter, dev, layers, bar) -> None:
    ternary = _ternary_prefixes(emitter)
    for name, _dt, _shp in list(emitter.writer.specs):
        if name.endswith((".weight_scale", ".weight_shape")):
            continue
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix is not None and prefix in ternary:
            _emit_data_free(src, name, config.method, config.group_size, packing, emitter, dev, layers, bar)
        else:
            emitter.add(name, src.get(name))


def _load_module(
    module: torch.nn.Module, src: SourceModel, prefix: str, dev: torch.device
) -> torch.nn.Module:
    sd = {k: src.get(prefix + k).to(dev) for k in module.state_dict()}
    module.load_state_dict(sd, assign=True)
    return module.to(dev).float().eval()


# Ternary layers outside the blocks (FLUX.2's global modulation under ``blocks+modulation``) have
# no block output to calibrate against: they are rounded without data by this method, and the
# blocks are calibrated on the float modulation (the float model's block inputs).
OUTSIDE_BLOCKS_METHOD = "twn"


def _quantize_calibrated(
    src, cfg: FluxConfig | Flux2Config, config, packing, calibration, emitter, dev, layers, bar
) -> None:
    cls = model_class(cfg)
    ternary = _ternary_prefixes(emitter)
    # --- embedders (small): float inputs of the first block for every calibration sample
    with torch.device("meta"):
        skeleton = cls(cfg, dtype=torch.float32)
    emb_keys = [
        k
        for k in model_key_order(cfg)
        if not k.startswith(("double_blocks.", "single_blocks.", "final_layer."))
    ]
    skeleton.load_state_dict({k: src.get(k).to(dev) for k in emb_keys}, strict=False, assign=True)
    for k in emb_keys:
        if k.endswith(".weight") and k[: -len(".weight")] in ternary:
            _emit_data_free(
                src, k, OUTSIDE_BLOCKS_METHOD, config.group_size, packing, emitter, dev, layers, bar
            )
        else:
            emitter.add(k, src.get(k))
    streams = []
    for s in calibration:
        streams.append(skeleton.embed(**skeleton.tokens_of(**s.as_inputs(dev, torch.float32))))
    del skeleton

    sequential = config.block_inputs == "sequential"
    # sequential: each block is calibrated on the inputs that the already-ternary earlier blocks
    # produce (``tstreams``), against the float model's block output (from ``streams``)
    tstreams = [dict(s) for s in streams] if sequential else streams

    def do_block(
        prefix: str, block: torch.nn.Module, args_of: Callable[[dict], tuple], names: list[str]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Calibrate one block with :func:`~.algorithms.quantize_`; returns (float outputs, outputs
        of the ternary block on its own inputs), flattened in stream order."""
        block = _load_module(block, src, prefix, dev)
        target = [t.clone() for s in streams for t in flatten_outputs(block(*args_of(s)))]
        t0 = time.perf_counter()
        wanted = set(names)
        res = quantize_(
            block,
            config,
            calibration=[args_of(s) for s in tstreams],
            filter_fn=lambda m, n: n in wanted,
            targets=target,
            replace=False,
            progress=lambda n: bar.update(1),
        )
        dt = (time.perf_counter() - t0) / max(len(res), 1)
        for key in block.state_dict():
            full = prefix + key
            lp = full[: -len(".weight")] if key.endswith(".weight") else None
            if lp is not None and lp[len(prefix) :] in res:
                r = res[lp[len(prefix) :]]
                for k, v in layer_tensors(lp, r.weight, packing).items():
                    emitter.add(k, v)
                layers.append({**r.report(), "layer": lp, "shape": list(r.weight.shape), "seconds": dt})
            elif key.endswith(".bias") and key[: -len(".bias")] in res:
                emitter.add(full, res[key[: -len(".bias")]].bias)
            else:
                emitter.add(full, src.get(full))
        if not sequential:
            return target, target
        return target, [t.clone() for s in tstreams for t in flatten_outputs(block(*args_of(s)))]

    def run_stage(prefix: str, new_block: Callable, args_of: Callable[[dict], tuple], fields: tuple) -> None:
        """Calibrate block ``prefix``; its outputs become the stream ``fields`` (float and ternary)."""
        with torch.device("meta"):
            block = new_block(cfg, dtype=torch.float32)
        names = [
            n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) and prefix + n in ternary
        ]
        target, tout = do_block(prefix, block, args_of, names)
        k = len(fields)
        for ss, out in ((streams, target), (tstreams, tout)) if sequential else ((streams, target),):
            for j, s in enumerate(ss):
                s.update(zip(fields, out[k * j : k * (j + 1)]))

    for i in range(cfg.depth):
        run_stage(f"double_blocks.{i}.", cls.new_double_block, cls.double_args, ("img", "txt"))
    for ss in (streams, tstreams) if sequential else (streams,):
        for s in ss:
            s["x"] = torch.cat((s.pop("txt"), s.pop("img")), dim=1)
    for i in range(cfg.depth_single_blocks):
        run_stage(f"single_blocks.{i}.", cls.new_single_block, cls.single_args, ("x",))
    for name, _dt, _shp in list(emitter.writer.specs):
        if name.startswith("final_layer."):
            emitter.add(name, src.get(name))
