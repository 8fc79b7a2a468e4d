"""Calibration data files: what the FLUX transformer received during real sampling.

Written by the ComfyUI *Record Calibration* node and by ``ternaryflux calibrate``; read by
``ternaryflux quantize --method calibrated``, ``distill`` and ``eval``. One safetensors file
holds any number of samples; each sample ``i`` is the input of one diffusion-model call, in
ComfyUI's calling convention (see :meth:`ternaryflux.core.flux_model.Flux.forward_latent`):

    sample.{i}.x          latent fed to the transformer   [B, C, H, W]
    sample.{i}.timestep   sigma in [0, 1]                  [B]
    sample.{i}.context    text tokens (T5)                 [B, L, context_in_dim]
    sample.{i}.y          pooled vector (CLIP)             [B, vec_in_dim]
    sample.{i}.guidance   guidance strength (FLUX.1-dev)   [B]      (absent for schnell)

Shapes may differ between samples (image sizes, prompt lengths). The header metadata entry
``"ternaryflux_calibration"`` is JSON: ``{"format": "ternaryflux-calibration", "version": 1,
"num_samples": n, "source": ..., ...free-form fields}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open

from .checkpoint import TernaryFormatError, atomic_save_safetensors, header_metadata, read_header

CALIBRATION_KEY = "ternaryflux_calibration"
CALIBRATION_FORMAT = "ternaryflux-calibration"
CALIBRATION_VERSION = 1
FIELDS = ("x", "timestep", "context", "y", "guidance")


@dataclass
class CalibrationSample:
    x: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor | None = None
    guidance: torch.Tensor | None = None

    def validate(self, where: str) -> None:
        b = self.x.shape[0]
        if self.x.dim() != 4:
            raise ValueError(f"{where}: x must be [B, C, H, W], got {tuple(self.x.shape)}")
        if tuple(self.timestep.shape) != (b,):
            raise ValueError(f"{where}: timestep must be [{b}], got {tuple(self.timestep.shape)}")
        if self.context.dim() != 3 or self.context.shape[0] != b:
            raise ValueError(f"{where}: context must be [{b}, L, D], got {tuple(self.context.shape)}")
        if self.y is not None and (self.y.dim() != 2 or self.y.shape[0] != b):
            raise ValueError(f"{where}: y must be [{b}, D], got {tuple(self.y.shape)}")
        if self.guidance is not None and tuple(self.guidance.shape) != (b,):
            raise ValueError(f"{where}: guidance must be [{b}], got {tuple(self.guidance.shape)}")
        for f in FIELDS:
            t = getattr(self, f)
            if t is not None and not torch.isfinite(t.float()).all():
                raise ValueError(f"{where}: {f} has non-finite values")

    def as_inputs(self, device=None, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor | None]:
        """Keyword arguments for :meth:`Flux.forward_latent`."""

        def conv(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

        return {f: conv(getattr(self, f)) for f in FIELDS}


def write_calibration(
    path: str | os.PathLike, samples: Sequence[CalibrationSample], info: dict[str, Any] | None = None
) -> None:
    """Write samples atomically (temp file + rename)."""
    tensors: dict[str, torch.Tensor] = {}
    for i, s in enumerate(samples):
        s.validate(f"sample {i}")
        for f in FIELDS:
            t = getattr(s, f)
            if t is not None:
                tensors[f"sample.{i}.{f}"] = t.detach().cpu().contiguous()
    meta = {
        **(info or {}),
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "num_samples": len(samples),
    }
    atomic_save_safetensors(tensors, path, {CALIBRATION_KEY: json.dumps(meta)})


def read_calibration_info(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a calibration file (validated), without loading tensors."""
    header = read_header(path)
    meta = header_metadata(header)
    if CALIBRATION_KEY not in meta:
        raise TernaryFormatError(
            path, "not a TernaryFLUX calibration file (no 'ternaryflux_calibration' metadata)"
        )
    try:
        info = json.loads(meta[CALIBRATION_KEY])
    except json.JSONDecodeError as e:
        raise TernaryFormatError(path, f"calibration metadata is not valid JSON ({e})") from None
    if info.get("format") != CALIBRATION_FORMAT or info.get("version") != CALIBRATION_VERSION:
        raise TernaryFormatError(
            path, f"unknown calibration format {info.get('format')!r} version {info.get('version')!r}"
        )
    return info


def read_calibration(path: str | os.PathLike, device: str | torch.device = "cpu") -> list[CalibrationSample]:
    """Load and validate every sample of one calibration file."""
    info = read_calibration_info(path)
    n = int(info["num_samples"])
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        keys = set(f.keys())
        samples = []
        for i in range(n):
            fields = {}
            for name in FIELDS:
                k = f"sample.{i}.{name}"
                fields[name] = f.get_tensor(k) if k in keys else None
            for req in ("x", "timestep", "context"):
                if fields[req] is None:
                    raise TernaryFormatError(path, f"sample {i} has no {req!r}")
            s = CalibrationSample(**fields)
            try:
                s.validate(f"sample {i}")
            except ValueError as e:
                raise TernaryFormatError(path, str(e)) from None
            samples.append(s)
    return samples


def read_calibration_files(paths: Iterable[str | os.PathLike], device="cpu") -> list[CalibrationSample]:
    out: list[CalibrationSample] = []
    for p in paths:
        out.extend(read_calibration(p, device))
    return out
