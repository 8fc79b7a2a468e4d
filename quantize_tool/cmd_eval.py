"""``ternaryflux eval``: how far a ternary checkpoint is from its float teacher.

On held-out calibration inputs (never the ones used to calibrate or distill) both models run and
the tool reports the relative error of the predicted velocity (end to end: what each sampler
step gets wrong), and per block: the "local" error (student block fed the teacher's block
input, relative to the teacher block's residual update) and the "stream" error (the student's
own hidden state after the block, errors accumulated, relative to the teacher's).

Works on FLUX.1 and FLUX.2 (klein, dev) alike; the held-out files must come from the same model.

Examples:
  ternaryflux eval --teacher flux1-dev.safetensors --student flux1-dev-ternary.safetensors --heldout heldout.safetensors
  ternaryflux eval ... --json eval.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..core.checkpoint import is_ternary_file, load_checkpoint
from ..core.flux_model import flux_from_state_dict
from ..quant.calibration import check_calibration_fits, load_calibration
from ..quant.evaluate import compare_models
from ..quant.flux import resolve_device
from ..quant.sources import open_source
from .args import FORMATTER, ToolError, WithProgress, add_device_arg, add_progress_arg, write_json
from .report import format_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="velocity error of a ternary checkpoint vs the float model (per block + end to end)",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument("--teacher", type=Path, required=True, help="float FLUX")
    p.add_argument("--student", type=Path, nargs="+", required=True, help="ternary checkpoint(s) to compare")
    p.add_argument(
        "--heldout", type=Path, nargs="+", required=True, metavar="FILE", help="held-out calibration files"
    )
    p.add_argument("--max-samples", type=int, default=None, help="use at most N samples")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dev = resolve_device(args.device)
    if args.teacher.is_file() and is_ternary_file(args.teacher):
        raise ToolError(
            f"--teacher {args.teacher}: a TernaryFLUX checkpoint; eval compares against the float FLUX it "
            "was made from (give that as --teacher, the ternary files as --student)"
        )
    src = open_source(args.teacher)
    teacher = flux_from_state_dict(src.state_dict(), dtype=torch.float32, device=dev)
    samples, summary = load_calibration(args.heldout, args.max_samples)
    c = teacher.config
    check_calibration_fits(samples, c, args.heldout, args.teacher)
    results = {}
    for path in args.student:
        ckpt = load_checkpoint(path)
        student = flux_from_state_dict(ckpt.state_dict, dtype=torch.float32, device=dev)
        if student.config.architecture != c.architecture:
            titles = {"flux": "FLUX.1", "flux2": "FLUX.2"}
            raise ToolError(
                f"{path}: a {titles[student.config.architecture]} checkpoint, but --teacher {args.teacher} is "
                f"{titles[c.architecture]}: eval compares a ternary checkpoint with the float model it was made from"
            )
        if student.config != teacher.config:
            raise ToolError(f"{path} does not fit {args.teacher}: different architecture")
        seq = WithProgress(samples, f"eval {Path(path).name}", not args.no_progress)
        r = compare_models(teacher, student, seq, dev)
        r["method"] = ckpt.metadata.method
        results[str(path)] = r
    names = [b["block"] for b in next(iter(results.values()))["blocks"]]
    headers = ["block"] + [f"{Path(p).name[:28]} local / stream" for p in results]
    rows = []
    for i, n in enumerate(names):
        rows.append(
            [n]
            + [
                f"{r['blocks'][i]['local_rel_err']:.4f} / {r['blocks'][i]['stream_rel_err']:.4f}"
                for r in results.values()
            ]
        )
    rows.append(["VELOCITY (end to end)"] + [f"{r['velocity_rel_err']:.4f}" for r in results.values()])
    rows.append(["method"] + [r["method"] for r in results.values()])
    print(format_table(headers, rows))
    print(
        f"\n{summary['num_samples']} held-out samples; errors are relative L2 (0 = identical to the float model)."
    )
    if args.json:
        write_json(args.json, {"heldout": summary, "results": results})
    return 0
