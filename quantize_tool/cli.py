"""``ternaryflux``: command-line entry point. Each subcommand lives in its own ``cmd_*`` module
exposing ``register(subparsers)``, which adds its parser and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..core.checkpoint import TernaryFormatError
from ..quant.errors import QuantizeError
from ..version import __version__

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# subcommand modules, in the order `--help` lists them
COMMAND_MODULES = [
    "cmd_demo",
    "cmd_inspect",
    "cmd_calibrate",
    "cmd_quantize",
    "cmd_distill",
    "cmd_eval",
    "cmd_convert",
    "cmd_import",
]

log = logging.getLogger("ternaryflux")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ternaryflux",
        description=(
            "TernaryFLUX offline tool: make and check 1.58-bit (ternary) FLUX checkpoints for the "
            "TernaryFLUX ComfyUI nodes. Start with `ternaryflux demo` (no downloads). Recommended recipe: "
            "calibrate -> quantize --method calibrated -> distill -> eval. `ternaryflux COMMAND --help` explains each step."
        ),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (QuantizeError, TernaryFormatError) as e:
        print(f"ternaryflux {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
