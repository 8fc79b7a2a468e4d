"""``ternaryflux``: command-line entry point. Each subcommand lives in its own ``cmd_*`` module
exposing ``register(subparsers)``, which adds its parser and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from ..core.checkpoint import TernaryFormatError
from ..quant.errors import QuantizeError, Terminated
from ..version import __version__
from .args import ToolError

__all__ = ["COMMAND_MODULES", "Terminated", "build_parser", "main"]

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


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """Half the CPUs this process may use, at least 1 and at most 8: the tool usually runs beside
    ComfyUI, and torch's default (one thread per core) oversubscribes a busy machine badly
    (measured: bench/results/threads-*.json, README "Time and memory")."""
    return max(1, min(8, available_cpus() // 2))


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help=f"CPU threads for torch (default: half the CPUs, 1..8 = {default_threads()} here; "
        "TERNARYFLUX_THREADS sets the default)",
    )


def resolve_threads(value: int | None) -> int:
    if value is None:
        env = os.environ.get("TERNARYFLUX_THREADS")
        if env:
            try:
                value = int(env)
            except ValueError:
                raise ToolError(f"TERNARYFLUX_THREADS={env!r} is not a whole number") from None
        else:
            return default_threads()
    if value < 1:
        raise ToolError(f"--threads must be >= 1 (got {value})")
    return value


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
    for sp in sub.choices.values():
        add_threads_arg(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # bitsandbytes logs install advice for CPU kernels it does not need here ("pip install
        # kernels"); the tool reports the optimizer it uses itself
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        import torch

        torch.set_num_threads(resolve_threads(args.threads))
        return int(args.func(args) or 0)
    except (QuantizeError, TernaryFormatError) as e:
        print(f"ternaryflux {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        term = isinstance(e, Terminated)
        what = "terminated (SIGTERM)" if term else "interrupted"
        hint = getattr(args, "interrupt_hint", None)  # set by a command, e.g. distill's --resume
        print(
            f"ternaryflux {args.command}: {what}; unfinished output files were removed"
            + (f"; {hint}" if hint else ""),
            file=sys.stderr,
        )
        return 143 if term else 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
