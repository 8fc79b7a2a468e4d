"""Argument snippets and report helpers shared by the subcommands (CLI only)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..quant.errors import QuantizeError

log = logging.getLogger(__name__)

FORMATTER = argparse.RawDescriptionHelpFormatter


class ToolError(QuantizeError):
    """A bad command line (option values that do not go together); printed like library errors."""


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


class WithProgress(Sequence):
    """The held-out samples, iterated with a tqdm bar (one step per sample and student)."""

    def __init__(self, items: list, desc: str, enabled: bool) -> None:
        self.items, self.desc, self.enabled = items, desc, enabled

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __iter__(self):
        yield from tqdm(self.items, desc=self.desc, unit="sample", disable=not self.enabled, leave=False)
