"""The proxy quality pipeline: calibration from the float model's own trajectories, sampling a
checkpoint (float file or TernaryFLUX checkpoint) on the held-out prompts, GenEval-proxy scores,
velocity error and an image grid. Used by ``bench/quality.py`` and the tests."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.calibration_data import CalibrationSample, write_calibration
from ..core.checkpoint import is_ternary_file, load_checkpoint
from ..core.flux_model import Flux, flux_from_state_dict
from .geneval import score_images
from .model import ProxySettings, sample
from .scenes import Scene, heldout_captions, random_scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 20
    cfg: float = 5.0


def load_model(path: str | Path) -> Flux:
    """A float FLUX file or a TernaryFLUX checkpoint (through the project's loader), float32."""
    if is_ternary_file(path):
        return flux_from_state_dict(load_checkpoint(path).state_dict, dtype=torch.float32)
    from safetensors.torch import load_file

    return flux_from_state_dict(load_file(str(path)), dtype=torch.float32)


def train_distribution_captions(n: int, seed: int) -> list[str]:
    """``n`` captions from the training grammar (never a held-out caption)."""
    rng = random.Random(seed)
    held = heldout_captions()
    out: list[str] = []
    while len(out) < n:
        c = random_scene(rng).caption()
        if c not in held:
            out.append(c)
    return out


def trajectory_samples(
    model: Flux,
    settings: ProxySettings,
    captions: Sequence[str],
    seed: int,
    sampler: SamplerSettings,
    record: Sequence[int],
) -> list[CalibrationSample]:
    """The inputs the float model receives while sampling ``captions`` (the self-supervised
    calibration data: no images), at the Euler steps in ``record``; conditional and
    unconditional calls (CFG) alike, one sample per model call batch."""
    seeds = [seed * 100_000 + i for i in range(len(captions))]
    _, recs = sample(
        model,
        settings.encoder(),
        captions,
        seeds,
        settings.image_size,
        sampler.steps,
        sampler.cfg,
        record=record,
        batch=8,
    )
    return recs


def write_trajectory_calibration(
    model_path: Path,
    out: Path,
    n_captions: int,
    seed: int,
    settings: ProxySettings | None = None,
    sampler: SamplerSettings | None = None,
    record: Sequence[int] = (0, 4, 8, 12, 16),
    captions: Sequence[str] | None = None,
) -> int:
    """Write a calibration file (``core.calibration_data``) from the float model's trajectories
    over ``n_captions`` training-grammar captions (or the given ``captions``). Returns the
    number of samples."""
    settings = settings or ProxySettings()
    sampler = sampler or SamplerSettings()
    model = load_model(model_path)
    caps = list(captions) if captions is not None else train_distribution_captions(n_captions, seed)
    recs = trajectory_samples(model, settings, caps, seed, sampler, record)
    write_calibration(
        out,
        recs,
        {"source": "proxy float-model trajectories", "captions": len(caps), "record_steps": list(record)},
    )
    return len(recs)


def generate(
    model: Flux,
    scenes: Sequence[Scene],
    seeds: Sequence[int],
    settings: ProxySettings | None = None,
    sampler: SamplerSettings | None = None,
) -> torch.Tensor:
    """Images ``[len(scenes) * len(seeds), 3, H, W]``: every scene once per seed (scene-major)."""
    settings = settings or ProxySettings()
    sampler = sampler or SamplerSettings()
    caps = [s.caption() for s in scenes for _ in seeds]
    sds = [int(sd) for _ in scenes for sd in seeds]
    imgs, _ = sample(model, settings.encoder(), caps, sds, settings.image_size, sampler.steps, sampler.cfg)
    return imgs


def score(scenes: Sequence[Scene], seeds: Sequence[int], images: torch.Tensor) -> dict[str, float]:
    sc = [s for s in scenes for _ in seeds]
    arr = images.permute(0, 2, 3, 1).numpy()
    return score_images(sc, list(arr))


def image_grid(rows: Sequence[torch.Tensor], scale: int = 4, pad: int = 2) -> np.ndarray:
    """Rows of images ``[N, 3, H, W]`` -> one ``uint8 [H', W', 3]`` grid (nearest upscaling,
    grey separators)."""
    n = rows[0].shape[0]
    h, w = rows[0].shape[-2] * scale, rows[0].shape[-1] * scale
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 96, np.uint8)
    for r, imgs in enumerate(rows):
        up = imgs.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        up = (up.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = up[c]
    return grid
