"""Record Calibration: MODEL in, MODEL out; records what the FLUX transformer receives while the
graph samples (x, timestep, context, y, guidance) into a calibration file
(:mod:`ternaryflux.core.calibration_data` format) under ``output/ternaryflux_calibration``.

A ``diffusion_model`` wrapper on a *clone* of the patcher sees every transformer call; every
``every_n_calls``-th call is kept (on CPU, in ``store_dtype``) until ``max_samples`` samples or
``max_mb`` MB are held. The file is written atomically at the end of every sampling run (the
patcher's cleanup callback), so it is complete whenever a sampler node has finished.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field

import comfy.patcher_extension
import folder_paths
import torch
from comfy_api.latest import io

from ..core.calibration_data import CalibrationSample, write_calibration
from ..version import __version__
from .naming import FilenameError, resolve_inside, validate_filename
from .ternarize import CALIBRATION_FOLDER

log = logging.getLogger(__name__)

WRAPPER_KEY = "ternaryflux_record_calibration"
STORE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class CalibrationRecorder:
    """Collects samples and writes them; one per Record Calibration execution."""

    path: str
    every_n_calls: int = 1
    max_samples: int = 64
    max_bytes: int = 512 * 2**20
    store_dtype: torch.dtype = torch.bfloat16
    samples: list[CalibrationSample] = field(default_factory=list)
    calls: int = 0
    bytes_held: int = 0
    written: int = 0
    full: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _keep(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach()
        return t.to(device="cpu", dtype=self.store_dtype if t.is_floating_point() else t.dtype).contiguous()

    def observe(self, x, timestep, context, y=None, guidance=None) -> None:
        with self.lock:
            self.calls += 1
            if self.full or (self.calls - 1) % self.every_n_calls:
                return
            b = x.shape[0]
            ts = timestep.reshape(-1)
            if ts.numel() == 1 and b > 1:
                ts = ts.expand(b)
            g = guidance.reshape(-1) if guidance is not None else None
            if g is not None and g.numel() == 1 and b > 1:
                g = g.expand(b)
            s = CalibrationSample(
                self._keep(x),
                ts.detach().float().cpu(),
                self._keep(context),
                self._keep(y),
                g.detach().float().cpu() if g is not None else None,
            )
            size = sum(
                t.numel() * t.element_size()
                for t in (s.x, s.timestep, s.context, s.y, s.guidance)
                if t is not None
            )
            if len(self.samples) >= self.max_samples or self.bytes_held + size > self.max_bytes:
                self.full = True
                log.info(
                    "Record Calibration: cap reached (%d samples, %.1f MB); further calls are not recorded",
                    len(self.samples),
                    self.bytes_held / 2**20,
                )
                return
            self.samples.append(s)
            self.bytes_held += size

    def flush(self) -> None:
        with self.lock:
            if not self.samples or self.written == len(self.samples):
                return
            info = {
                "source": "ComfyUI Record Calibration",
                "tool_version": __version__,
                "every_n_calls": self.every_n_calls,
                "calls_seen": self.calls,
                "max_samples": self.max_samples,
                "max_mb": self.max_bytes / 2**20,
            }
            write_calibration(self.path, self.samples, info)
            self.written = len(self.samples)
            log.info(
                "Record Calibration: %d samples (%.1f MB) -> %s",
                self.written,
                self.bytes_held / 2**20,
                self.path,
            )

    # ----------------------------------------------------------------- ComfyUI hooks
    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        names = ("x", "timestep", "context", "y", "guidance")
        vals = dict(zip(names, args))
        for n in names:
            if n in kwargs:
                vals[n] = kwargs[n]
        try:
            self.observe(vals["x"], vals["timestep"], vals["context"], vals.get("y"), vals.get("guidance"))
        except Exception as e:  # recording must never break sampling
            log.warning("Record Calibration: could not record a call (%s: %s)", type(e).__name__, e)
        return executor(*args, **kwargs)

    def on_cleanup(self, *args, **kwargs) -> None:
        try:
            self.flush()
        except Exception as e:
            log.error("Record Calibration: writing %s failed: %s", self.path, e)


def next_calibration_path(prefix: str) -> str:
    """``output/ternaryflux_calibration/<prefix>_00001.safetensors`` with the next free number."""
    try:
        rel = validate_filename(prefix, suffix="")
    except FilenameError as e:
        raise ValueError(f"filename_prefix: {e}") from None
    folder = os.path.join(folder_paths.get_output_directory(), CALIBRATION_FOLDER)
    base = resolve_inside(folder, rel)
    base.parent.mkdir(parents=True, exist_ok=True)
    pat = re.compile(re.escape(base.name) + r"_(\d{5})\.safetensors$")
    used = [int(m.group(1)) for f in os.listdir(base.parent) if (m := pat.match(f))]
    return str(base.parent / f"{base.name}_{max(used, default=0) + 1:05d}.safetensors")


def attach_recorder(model, recorder: CalibrationRecorder):
    """A clone of ``model`` that feeds ``recorder``."""
    m = model.clone()
    m.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, recorder.diffusion_model_wrapper
    )
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, WRAPPER_KEY, recorder.on_cleanup)
    return m


class RecordCalibration(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TernaryFluxRecordCalibration",
            display_name="Record Calibration",
            category="TernaryFLUX",
            description=(
                "Passes the MODEL through and records what the FLUX transformer receives while the graph samples, "
                "into output/ternaryflux_calibration/<prefix>_NNNNN.safetensors (written when sampling ends). "
                "Use the file with Ternarize FLUX (calibrated) or `ternaryflux quantize --method calibrated`."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The float FLUX MODEL that will sample (connect the output to the sampler).",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="flux_calibration",
                    tooltip="Name prefix of the calibration file inside output/ternaryflux_calibration.",
                ),
                io.Int.Input(
                    "every_n_calls",
                    default=2,
                    min=1,
                    max=1000,
                    tooltip="Keep every n-th transformer call (1 = all steps); spreads samples over the denoising trajectory.",
                ),
                io.Int.Input(
                    "max_samples",
                    default=64,
                    min=1,
                    max=100000,
                    tooltip="Stop recording after this many calls are kept.",
                ),
                io.Int.Input(
                    "max_mb",
                    default=512,
                    min=1,
                    max=65536,
                    tooltip="Stop recording when the kept tensors reach this size (MB). A 1024² FLUX call with a "
                    "512-token prompt is about 4.5 MB in bf16.",
                ),
                io.Combo.Input(
                    "store_dtype",
                    options=list(STORE_DTYPES),
                    default="bf16",
                    tooltip="dtype the recorded tensors are stored in.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The same model, recording while it samples")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return float("nan")  # a new recording (and file) every time the graph runs

    @classmethod
    def execute(
        cls, model, filename_prefix: str, every_n_calls: int, max_samples: int, max_mb: int, store_dtype: str
    ) -> io.NodeOutput:
        if store_dtype not in STORE_DTYPES:
            raise ValueError(f"Record Calibration: store_dtype must be one of {tuple(STORE_DTYPES)}")
        path = next_calibration_path(filename_prefix)
        rec = CalibrationRecorder(
            path,
            max(1, every_n_calls),
            max(1, max_samples),
            max(1, max_mb) * 2**20,
            STORE_DTYPES[store_dtype],
        )
        log.info("Record Calibration: recording into %s", path)
        return io.NodeOutput(attach_recorder(model, rec))
