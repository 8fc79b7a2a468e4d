"""Command-line path arguments shared by the subcommands (argparse glue, no library code)."""

from __future__ import annotations

from pathlib import Path

from ..core.calibration_data import read_calibration_info
from ..core.checkpoint import TernaryFormatError
from .args import ToolError


def is_calibration_file(path: Path) -> bool:
    """True for a folder or a file carrying TernaryFLUX calibration metadata (header only)."""
    if path.is_dir():
        return True
    try:
        read_calibration_info(path)
    except (TernaryFormatError, OSError, ValueError):
        return False
    return True


def expand_calibration_paths(paths: list[Path], flag: str = "--calibration") -> list[Path]:
    """Each ``flag`` value is a calibration file or a folder; a folder stands for every
    ``*.safetensors`` directly inside it (sorted by name), e.g. ``output/ternaryflux_calibration``."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.glob("*.safetensors") if q.is_file())
            if not found:
                raise ToolError(f"{flag} {p}: the folder holds no .safetensors calibration file")
            out.extend(found)
        else:
            out.append(p)
    return out


def add_overwrite_arg(p) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist (default: refuse)"
    )


def refuse_existing(*paths: Path | None, overwrite: bool) -> None:
    """The CLI's rule, the same as the Save node's: an existing output is an error unless --overwrite."""
    if overwrite:
        return
    for p in paths:
        if p is not None and p.exists():
            raise ToolError(f"{p} already exists; pick another name or pass --overwrite to replace it")
