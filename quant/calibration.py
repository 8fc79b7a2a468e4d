"""Calibration data for the quantizer: read files, subsample with a seed, check they fit a FLUX."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.calibration_data import CalibrationSample, read_calibration, read_calibration_info
from ..core.checkpoint import TernaryFormatError
from ..core.flux_layout import ARCHITECTURES, Flux2Config, FluxConfig
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
        "image_tokens": sum(_image_tokens(s) for s in samples),
        "timesteps": sorted({round(float(t), 4) for s in samples for t in s.timestep.flatten().tolist()}),
    }
    return samples, summary


def _image_tokens(s: CalibrationSample) -> int:
    """Image tokens of a sample: FLUX.2 latents (128 channels) go in with patch 1, FLUX.1's with
    2x2 patches."""
    p = 1 if s.x.shape[1] == Flux2Config().in_channels else 2
    return int(s.x.shape[0] * -(-s.x.shape[2] // p) * -(-s.x.shape[3] // p))


def check_calibration_fits(
    samples: Sequence[CalibrationSample],
    config: FluxConfig | Flux2Config,
    files: Sequence[str | Path] = (),
    model: str | Path | None = None,
) -> None:
    """The samples were recorded with a model of this shape (latent channels, text width, pooled
    vector); FLUX.1 data for a FLUX.2 model (or the reverse) fails here with one sentence, naming
    the calibration ``files`` and the ``model`` file when given."""
    title = ARCHITECTURES[config.architecture].title
    where = (", ".join(Path(f).name for f in files) + ": ") if files else ""
    with_model = f" ({Path(model).name})" if model is not None else ""
    context_dim, vec_dim = config.context_in_dim, config.vec_in_dim
    for s in samples:  # shapes only: cheap, and files may mix sizes
        if s.x.shape[1] != config.latent_channels:
            c = s.x.shape[1]
            other = " (FLUX.2 latents have 128 channels, FLUX.1 latents 16)" if c in (16, 128) else ""
            raise QuantizeError(
                f"{where}calibration latents have {c} channels but this {title} takes {config.latent_channels}"
                f"{other}: record calibration data with the same model{with_model}"
            )
        if s.context.shape[-1] != context_dim:
            raise QuantizeError(
                f"{where}calibration context has width {s.context.shape[-1]}, this {title}{with_model} "
                f"expects {context_dim}"
            )
    s = samples[0]
    if vec_dim is None:
        return  # FLUX.2 has no pooled vector: a recorded one is ignored
    if s.y is not None and s.y.shape[-1] != vec_dim:
        raise QuantizeError(
            f"{where}calibration pooled vector has width {s.y.shape[-1]}, this FLUX{with_model} expects {vec_dim}"
        )
