"""``ternaryflux distill``: improve a ternary checkpoint by self-distillation from the float model.

The float FLUX (teacher) and the ternary checkpoint (student, normally made by
`quantize --method calibrated`) both run on the calibration inputs; the student's codes, scales
and biases are trained (latent float weights, straight-through estimator, trainable scales) to
reproduce the teacher: first block by block (each student block on the teacher's block input),
then end to end on the predicted velocity. No images and no labels are needed: the team measured
on a pretrained transformer that a few hundred such steps recover most of the quality lost to
ternarization, where layer-wise error minimisation alone did not.

Resumable and deterministic: a state file (step, trainable tensors, optimizer state, RNG states)
is written every --save-every steps; `--resume` continues from it, and a resumed run gives
bit-identical results to an uninterrupted one with the same --seed (same machine/threads).
Optimizer: bitsandbytes AdamW8bit, or torch AdamW if bitsandbytes is missing (logged).

Many processes: `torchrun --nproc-per-node N -m ternaryflux distill ... --batch B` (B a multiple
of N) trains data-parallel: each process takes its share of every step's batch and the gradients
are summed, so the result is the one-process run with the same --batch (bitwise for N = 2,
B = 2); rank 0 writes the state, the checkpoint and the report (docs/DISTILL.md, "Many GPUs").

Memory: teacher and student are held whole (float32 latent weights + 8-bit optimizer states):
fine for small models on CPU; FLUX.1-dev needs a large GPU.

Examples:
  ternaryflux distill --teacher flux1-dev.safetensors --student flux1-dev-ternary-cal.safetensors \\
      --calibration calib.safetensors --heldout heldout.safetensors --steps 300 -o flux1-dev-ternary-distilled.safetensors
  # interrupted? run the same command with --resume
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ..core.checkpoint import load_checkpoint, write_checkpoint
from ..core.flux_model import flux_from_state_dict
from ..quant import distributed as D
from ..quant.calibration import check_calibration_fits, load_calibration
from ..quant.distill import DistillConfig, distill, export_student, make_student
from ..quant.evaluate import velocity_error
from ..quant.flux import peak_rss_bytes, resolve_device
from ..quant.sources import open_source
from .args import (
    FORMATTER,
    ToolError,
    WithProgress,
    add_device_arg,
    add_progress_arg,
    default_report_path,
    write_json,
)
from .cli_paths import add_overwrite_arg, refuse_existing
from .report import format_table

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="self-distill a ternary checkpoint against the float model (resumable)",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument("--teacher", type=Path, required=True, help="the float FLUX the student was made from")
    p.add_argument("--student", type=Path, required=True, help="ternary checkpoint to improve")
    p.add_argument(
        "--calibration", type=Path, nargs="+", required=True, metavar="FILE", help="training inputs"
    )
    p.add_argument(
        "--heldout",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="held-out inputs for the before/after figure",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="distilled checkpoint")
    p.add_argument(
        "--steps",
        type=int,
        default=DistillConfig.steps,
        help=f"optimizer steps in total (default {DistillConfig.steps})",
    )
    p.add_argument("--block-steps", type=int, default=None, help="of which block-wise (default: a third)")
    p.add_argument(
        "--lr", type=float, default=1e-4, help="learning rate of latent weights and biases (default 1e-4)"
    )
    p.add_argument("--scale-lr", type=float, default=None, help="learning rate of scales (default lr/10)")
    p.add_argument("--batch", type=int, default=1, help="calibration samples per step (default 1)")
    p.add_argument("--seed", type=int, default=0, help="data order seed")
    p.add_argument("--optimizer", choices=["adamw8bit", "adamw"], default="adamw8bit")
    p.add_argument(
        "--save-every", type=int, default=50, help="write the resume state every N steps (default 50)"
    )
    p.add_argument(
        "--state", type=Path, default=None, help="resume state file (default: OUT with .distill-state.pt)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the state file")
    p.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the resume state file after a successful run (default: removed; it is several times "
        "the checkpoint's size)",
    )
    add_overwrite_arg(p)
    p.add_argument(
        "--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS
    )  # test hook: stop like a kill
    p.add_argument("--report", type=Path, default=None, help="JSON report (default: OUT with .report.json)")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dev = resolve_device(args.device)
    if args.steps < 1:
        raise ToolError("--steps must be >= 1")
    refuse_existing(args.out, overwrite=args.overwrite)
    world = D.init_world(dev)  # torchrun's process group, or a single process
    try:
        return _run(args, world, world.device if world.distributed else dev)
    finally:
        D.shutdown(world)


def _run(args: argparse.Namespace, world: D.World, dev: torch.device) -> int:
    D.local_positions(range(args.batch), world)  # refuse a batch that does not split over the ranks
    ckpt = load_checkpoint(args.student)
    src = open_source(args.teacher)
    teacher = flux_from_state_dict(src.state_dict(), dtype=torch.float32, device=dev)
    student = flux_from_state_dict(ckpt.state_dict, dtype=torch.float32, device=dev)
    if student.config != teacher.config:
        raise ToolError(f"{args.student} does not fit {args.teacher}: {student.config} vs {teacher.config}")
    samples, summary = load_calibration(args.calibration)
    c = teacher.config
    check_calibration_fits(samples, c)
    held = load_calibration(args.heldout)[0] if args.heldout else None
    names = make_student(student, teacher)
    cfg = DistillConfig(
        steps=args.steps,
        block_steps=args.block_steps,
        lr=args.lr,
        scale_lr=args.scale_lr,
        batch=args.batch,
        seed=args.seed,
        save_every=args.save_every,
        optimizer=args.optimizer,
    )
    state = args.state or args.out.with_name(args.out.name.removesuffix(".safetensors") + ".distill-state.pt")
    args.interrupt_hint = (
        f"the resume state ({state}) is saved every {args.save_every} steps: run the same command "
        "with --resume to continue"
    )
    eval_set = held or samples
    prog = not args.no_progress
    prog = prog and world.is_main
    before = (
        velocity_error(teacher, student, WithProgress(eval_set, "distill: error before", prog), dev)
        if not args.resume and world.is_main
        else None
    )
    extra = {
        "student": ckpt.metadata.to_json(),
        "teacher": [str(f.name) for f in src.files],
        "calibration": json.dumps(summary, sort_keys=True),
    }
    res = distill(
        teacher,
        student,
        samples,
        cfg,
        state,
        args.resume,
        args.stop_after_steps,
        extra,
        dev,
        not args.no_progress,
        world,
    )
    if not res["completed"]:
        if world.is_main:
            print(
                f"stopped after step {args.stop_after_steps}; state saved to {state}; continue with --resume"
            )
        return 0
    if not world.is_main:  # rank 0 evaluates and writes; the others wait for it to finish
        D.barrier(world)
        return 0
    after = velocity_error(teacher, student, WithProgress(eval_set, "distill: error after", prog), dev)
    sd = export_student(student, names, ckpt.state_dict)
    meta = ckpt.metadata
    meta.method_params = {
        **meta.method_params,
        "started_from": meta.method,
        "distill": {**cfg.__dict__, "optimizer": res["optimizer"]},
    }
    meta.method = f"{meta.method}+distill" if "distill" not in meta.method else meta.method
    meta.calibration = {**(meta.calibration or {}), "distill": summary}
    meta.packing = "2bit"
    write_checkpoint(args.out, sd, meta)
    report = {
        "output": str(args.out),
        "teacher": str(args.teacher),
        "student": str(args.student),
        "config": cfg.__dict__,
        "optimizer": res["optimizer"],
        "eval_on": "heldout" if held else "calibration (no --heldout given)",
        "velocity_rel_err_before": before,
        "velocity_rel_err_after": after,
        "seconds": res["seconds"],
        "peak_rss_bytes": peak_rss_bytes(),
        "processes": world.size,
        "loss_history": res["history"],
    }
    report_path = args.report or default_report_path(args.out)
    write_json(report_path, report)
    if args.keep_state:
        state_row = f"{state} (kept: --keep-state)"
    else:
        state.unlink(missing_ok=True)
        state_row = "removed after success (--keep-state keeps it)"
    rows = [
        ["output", str(args.out)],
        [
            "steps",
            f"{cfg.steps} ({cfg.n_block_steps} block-wise, {cfg.steps - cfg.n_block_steps} end-to-end)",
        ],
        ["optimizer", res["optimizer"]],
        [
            f"velocity rel. err ({report['eval_on'].split()[0]})",
            f"{before:.4g} -> {after:.4g}" if before is not None else f"{after:.4g}",
        ],
        ["time", f"{res['seconds']:.1f} s"],
        ["resume state", state_row],
        ["report", str(report_path)],
    ]
    if world.distributed:
        rows.insert(
            3,
            [
                "processes",
                f"{world.size} ({world.backend}), {cfg.batch // world.size} sample(s) each per step",
            ],
        )
    print(format_table(["ternaryflux distill", ""], rows))
    D.barrier(world)
    return 0
