"""Helpers shared by the subcommands: calibration loading, reports, argument snippets."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.calibration_data import CalibrationSample, read_calibration, read_calibration_info
from ..core.checkpoint import TernaryFormatError
from .errors import ToolError

log = logging.getLogger(__name__)

FORMATTER = argparse.RawDescriptionHelpFormatter


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
            raise ToolError(
                f"{e} (calibration files come from the Record Calibration node or `ternaryflux calibrate`)"
            ) from None
        samples.extend(got)
        sources.append({"file": Path(p).name, "num_samples": len(got), "source": info.get("source")})
    if not samples:
        raise ToolError("the calibration files hold no sample")
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
        raise ToolError(
            f"calibration latents have {s.x.shape[1]} channels but this FLUX takes {in_channels // 4}: "
            "record calibration data with the same model"
        )
    if s.context.shape[-1] != context_dim:
        raise ToolError(
            f"calibration context has width {s.context.shape[-1]}, this FLUX expects {context_dim}"
        )
    if s.y is not None and s.y.shape[-1] != vec_dim:
        raise ToolError(f"calibration pooled vector has width {s.y.shape[-1]}, this FLUX expects {vec_dim}")


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="where the math runs: auto (a CUDA GPU when present, else CPU), cpu, cuda, cuda:N",
    )


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")


def default_report_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".report.json")
