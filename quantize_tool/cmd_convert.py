"""``ternaryflux convert``: repack a TernaryFLUX checkpoint between the two packings.

  2bit    the runtime layout (4 codes per byte) the kernels read directly
  base3   the at-rest layout (5 codes per byte, 1.6 bits per weight): about 20% smaller
          downloads; decoded to 2bit when loaded

The codes, scales and every other tensor are unchanged (a lossless repack); the metadata is kept
and its "packing" field updated. Output is written atomically.

Examples:
  ternaryflux convert flux1-dev-ternary.safetensors --to base3 -o flux1-dev-ternary-base3.safetensors
  ternaryflux convert flux1-dev-ternary-base3.safetensors --to 2bit -o flux1-dev-ternary.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.checkpoint import describe_file, is_ternary_file, load_checkpoint, write_checkpoint
from .args import FORMATTER, ToolError
from .cli_paths import add_overwrite_arg, refuse_existing
from .report import format_table, human_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="repack a ternary checkpoint: 2bit <-> base3 at rest",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument("file", type=Path, help="TernaryFLUX checkpoint")
    p.add_argument(
        "--to", choices=["2bit", "base3"], default=None, help="target packing (default: the other one)"
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output checkpoint")
    add_overwrite_arg(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="accepted like every other command (convert is one read and one write; it shows no bar)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.file.is_dir():
        raise ToolError(f"{args.file}: is a folder; convert takes one TernaryFLUX checkpoint file")
    if not args.file.is_file():
        raise ToolError(f"{args.file}: no such file")
    if not is_ternary_file(args.file):
        raise ToolError(
            f"{args.file}: {describe_file(args.file)}; convert repacks TernaryFLUX checkpoints (use `ternaryflux quantize` first)"
        )
    if args.out.resolve() == args.file.resolve():
        raise ToolError("-o must differ from the input")
    refuse_existing(args.out, overwrite=args.overwrite)
    from ..core.checkpoint import METADATA_KEY, TernaryMetadata, header_metadata, read_header

    was = TernaryMetadata.from_json(header_metadata(read_header(args.file))[METADATA_KEY], args.file).packing
    ckpt = load_checkpoint(args.file)  # decoded to 2bit
    target = args.to or ("base3" if was == "2bit" else "2bit")
    ckpt.metadata.packing = target
    write_checkpoint(args.out, ckpt.state_dict, ckpt.metadata)
    a, b = args.file.stat().st_size, args.out.stat().st_size
    print(
        format_table(
            ["ternaryflux convert", ""],
            [
                ["packing", f"{was} -> {target}"],
                ["size", f"{human_bytes(a)} -> {human_bytes(b)}"],
                ["output", str(args.out)],
            ],
        )
    )
    return 0
