"""``ternaryflux import``: turn a published ternary FLUX.2 (Bonsai Image) into a TernaryFLUX
checkpoint, losslessly (the imported weights equal the published ones bit for bit).

Layouts (--from):
  bonsai-unpacked   a diffusers FLUX.2 transformer folder or file (bf16) whose block Linears hold
                    {-s, 0, +s} per 128 input weights (Bonsai's "-unpacked" release): codes and
                    float16 scales are recovered exactly; any group with a 4th value, or a scale
                    float16 cannot hold, stops the import naming the layer
  bonsai-gemlite    transformer-gemlite-int2/state_dict.pt (or its folder), read only with
                    torch.load(weights_only=True); every layer must say 2 bits, group 128, and
                    decode to {-1, 0, 1} x scale

The output keeps Bonsai's choice of ternary layers (policy `blocks`: attention and MLP Linears;
the global modulation, embedders and final layer stay float), group size 128, and loads in the
Load Ternary FLUX node and every `ternaryflux` command that reads checkpoints. Nothing is written
unless the whole import succeeds. These layouts are known from public descriptions (see
docs/FORMAT.md); a file laid out differently fails with one sentence.

Examples:
  ternaryflux import bonsai-image-ternary-4B-unpacked/transformer --from bonsai-unpacked -o bonsai-4b-ternary.safetensors
  ternaryflux import bonsai-image-ternary-4B-gemlite-2bit/transformer-gemlite-int2 --from bonsai-gemlite --at-rest base3 -o bonsai-4b-ternary.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..quant.importers import import_bonsai_gemlite, import_bonsai_unpacked
from .args import FORMATTER, ToolError
from .report import format_table, human_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import a published ternary FLUX.2 (Bonsai Image, unpacked or gemlite-int2), losslessly",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument(
        "source", type=Path, help="diffusers transformer folder/file, or gemlite state_dict.pt (or folder)"
    )
    p.add_argument(
        "--from",
        dest="layout",
        choices=["bonsai-unpacked", "bonsai-gemlite"],
        required=True,
        help="the source layout (see above)",
    )
    p.add_argument("--at-rest", choices=["2bit", "base3"], default="2bit", help="packing of the output")
    p.add_argument("-o", "--out", type=Path, required=True, help="output checkpoint (.safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.source.exists():
        raise ToolError(f"{args.source}: no such file or folder")
    if args.out.exists() and args.out.resolve() == args.source.resolve():
        raise ToolError("-o must differ from the input")
    if args.layout == "bonsai-unpacked":
        rep = import_bonsai_unpacked(args.source, args.out, packing=args.at_rest)
    else:
        rep = import_bonsai_gemlite(args.source, args.out, packing=args.at_rest)
    cfg = rep.config
    print(
        format_table(
            ["ternaryflux import", ""],
            [
                ["layout", rep.layout],
                [
                    "model",
                    f"FLUX.2 hidden {cfg['hidden_size']}, {cfg['depth']} double + {cfg['depth_single_blocks']} single blocks",
                ],
                ["ternary layers", f"{rep.ternary_layers} (policy {rep.policy}, group 128)"],
                ["packing", args.at_rest],
                ["size", human_bytes(args.out.stat().st_size)],
                ["output", str(args.out)],
            ],
        )
    )
    return 0
