"""Calibration data for the quantizer: read files, subsample with a seed, check they fit a FLUX."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.calibration_data import CalibrationSample, read_calibration, read_calibration_info
from ..core.checkpoint import TernaryFormatError
from .errors import QuantizeError

log = logging.getLogger(__name__)


def load_calibration(
    paths: Sequence[str | Path], max_samples: int | None = None, seed: int = 0
) -> tuple[list[CalibrationSample], dict[str, Any]]:
    """Read calibration files, optionally keep a seeded random subset; returns (samples, summary)."""
    samples: list[CalibrationSample] = []
    sources = []
    for p in paths:
        try:
            info = read_calibration_info(p)
            got = read_calibration(p)
        except TernaryFormatError as e:
            raise QuantizeError(
                f"{e} (calibration files come from the Record Calibration node or `ternaryflux calibrate`)"
            ) from None
        samples.extend(got)
        sources.append({"file": Path(p).name, "num_samples": len(got), "source": info.get("source")})
    if not samples:
        raise QuantizeError("the calibration files hold no sample")
    total = len(samples)
    if max_samples and max_samples < total:
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(total, generator=g)[:max_samples].tolist())
        samples = [samples[i] for i in keep]
    summary = {
        "files": sources,
        "num_samples_available": total,
        "num_samples": len(samples),
        "images": sum(int(s.x.shape[0]) for s in samples),
        "image_tokens": sum(
            int(s.x.shape[0] * ((s.x.shape[2] + 1) // 2) * ((s.x.shape[3] + 1) // 2)) for s in samples
        ),
        "timesteps": sorted({round(float(t), 4) for s in samples for t in s.timestep.flatten().tolist()}),
    }
    return samples, summary


def check_calibration_fits(
    samples: Sequence[CalibrationSample], in_channels: int, context_dim: int, vec_dim: int
) -> None:
    s = samples[0]
    if s.x.shape[1] * 4 != in_channels:
        raise QuantizeError(
            f"calibration latents have {s.x.shape[1]} channels but this FLUX takes {in_channels // 4}: "
            "record calibration data with the same model"
        )
    if s.context.shape[-1] != context_dim:
        raise QuantizeError(
            f"calibration context has width {s.context.shape[-1]}, this FLUX expects {context_dim}"
        )
    if s.y is not None and s.y.shape[-1] != vec_dim:
        raise QuantizeError(
            f"calibration pooled vector has width {s.y.shape[-1]}, this FLUX expects {vec_dim}"
        )
