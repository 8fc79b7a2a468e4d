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

Memory (--memory): `streamed` (default) never holds the teacher: its blocks are run once from
the file and the stream at every block boundary is cached on disk (--cache-dir, reused across
runs, keyed by the teacher's and the samples' sha256); one student block is trained at a time,
then the packed student is tuned end to end (scales and biases; codes stay). `resident` holds
teacher and student whole (float32 latent weights + optimizer states) and also moves codes in
the end-to-end phase: the unbounded reference. docs/DISTILL.md has the memory plan per model.

Many GPUs: `torchrun --nproc-per-node N -m ternaryflux distill ...` (data parallel over the
samples of each step; --batch must be a multiple of N; rank 0 writes).

Examples:
  ternaryflux distill --teacher flux1-dev.safetensors --student flux1-dev-ternary-cal.safetensors \\
      --calibration calib.safetensors --heldout heldout.safetensors --steps 300 -o flux1-dev-ternary-distilled.safetensors
  # interrupted? run the same command with --resume
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from ..core.checkpoint import load_checkpoint, write_checkpoint
from ..core.flux_layout import config_from_state_dict
from ..core.flux_model import flux_from_state_dict
from ..quant.calibration import check_calibration_fits, load_calibration
from ..quant.distill import DistillConfig, distill, export_student, make_student
from ..quant.distill_plan import PRESETS, PlanSettings, fmt_bytes, format_plan, parse_memory, plan_distill
from ..quant.distill_streamed import distill_streamed
from ..quant.distributed import barrier, fsdp_optimizer_kind, init_world, local_positions, shutdown
from ..quant.evaluate import cached_velocity_error, velocity_error
from ..quant.flux import peak_rss_bytes, resolve_device
from ..quant.sources import open_source
from ..quant.teacher_cache import build_teacher_cache, sha256_files
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
    p.add_argument(
        "--teacher", type=Path, default=None, help="the float FLUX the student was made from (required)"
    )
    p.add_argument("--student", type=Path, default=None, help="ternary checkpoint to improve (required)")
    p.add_argument(
        "--calibration", type=Path, nargs="+", default=None, metavar="FILE", help="training inputs (required)"
    )
    p.add_argument(
        "--heldout",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="held-out inputs for the before/after figure",
    )
    p.add_argument("-o", "--out", type=Path, default=None, help="distilled checkpoint (required)")
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
        "--state",
        type=Path,
        default=None,
        help="resume state: a folder for --memory streamed (default OUT with .distill-state), a "
        "file for resident (default OUT with .distill-state.pt)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the state file")
    p.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the resume state file after a successful run (default: removed; it is several times "
        "the checkpoint's size)",
    )
    p.add_argument(
        "--memory",
        choices=["streamed", "resident"],
        default="streamed",
        help="streamed: bounded memory, teacher cached on disk (default); resident: teacher and "
        "student whole (the unbounded reference)",
    )
    p.add_argument(
        "--shard",
        choices=["none", "fsdp"],
        default="none",
        help="under torchrun with --memory streamed: fsdp shards the trained block's latent weights, "
        "gradients and optimizer state over the processes (FSDP2; uses torch AdamW)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="teacher cache root for --memory streamed (default: $XDG_CACHE_HOME or "
        "~/.cache, then ternaryflux/teacher-cache)",
    )
    p.add_argument(
        "--cache-dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="dtype of the cached teacher streams (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--compute-dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="autocast dtype of the streamed phases (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    g = p.add_argument_group(
        "memory plan",
        "--plan prints the device/host memory of every phase and the teacher-cache disk size without "
        "loading weights, for --model NAME or the --teacher file's shapes; --max-gpu-memory is also "
        "checked before a real run (on CUDA the card's memory when not given)",
    )
    g.add_argument("--plan", action="store_true", help="print the memory plan and exit")
    g.add_argument(
        "--model", choices=sorted(PRESETS), default=None, help="plan for this model (no file needed)"
    )
    g.add_argument(
        "--max-gpu-memory", default=None, metavar="SIZE", help="device memory budget, e.g. 22GB or 24GiB"
    )
    g.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="plan at this image size in px (default: the samples', else 1024)",
    )
    g.add_argument("--txt-len", type=int, default=None, help="plan with this many text tokens")
    g.add_argument(
        "--nproc", type=int, default=None, help="plan for this many processes (default: the world size)"
    )
    g.add_argument(
        "--plan-samples",
        type=int,
        default=None,
        help="samples for the cache size (default: the --calibration files')",
    )
    add_overwrite_arg(p)
    p.add_argument(
        "--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS
    )  # test hook: stop like a kill
    p.add_argument("--report", type=Path, default=None, help="JSON report (default: OUT with .report.json)")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> DistillConfig:
    return DistillConfig(
        steps=args.steps,
        block_steps=args.block_steps,
        lr=args.lr,
        scale_lr=args.scale_lr,
        batch=args.batch,
        seed=args.seed,
        save_every=args.save_every,
        optimizer=args.optimizer,
    )


def _auto_dtype(choice: str, dev: torch.device) -> str:
    return ("bfloat16" if dev.type == "cuda" else "float32") if choice == "auto" else choice


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ternaryflux" / "teacher-cache"


def _run_resident(args, dev, ckpt, src, samples, summary, held, cfg: DistillConfig, prog: bool):
    """Teacher and student whole on ``dev`` (the unbounded reference). Returns (state dict,
    result, error before, error after) or None when stopped early."""
    world = init_world(dev)  # torchrun's process group (data parallel), or a single process
    args.world = world
    dev = world.device if world.distributed else dev
    local_positions(range(cfg.batch), world)  # refuse a batch that does not split over the ranks
    prog = prog and world.is_main
    teacher = flux_from_state_dict(src.state_dict(), dtype=torch.float32, device=dev)
    student = flux_from_state_dict(ckpt.state_dict, dtype=torch.float32, device=dev)
    names = make_student(student, teacher)
    state = args.state or args.out.with_name(args.out.name.removesuffix(".safetensors") + ".distill-state.pt")
    args.state_path = state
    args.interrupt_hint = (
        f"the resume state ({state}) is saved every {args.save_every} steps: run the same command "
        "with --resume to continue"
    )
    eval_set = held or samples
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
        teacher, student, samples, cfg, state, args.resume, args.stop_after_steps, extra, dev, prog, world
    )
    if not res["completed"]:
        return None
    if not world.is_main:  # rank 0 evaluates and writes
        return None, res, None, None
    after = velocity_error(teacher, student, WithProgress(eval_set, "distill: error after", prog), dev)
    return export_student(student, names, ckpt.state_dict), res, before, after


def _run_streamed(args, dev, ckpt, src, samples, summary, held, cfg: DistillConfig, prog: bool):
    """Bounded memory: teacher cached on disk, one block at a time, then the packed student."""
    world = init_world(dev.type)
    if dev.type == "cuda" and world.distributed:
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    if args.shard == "fsdp":
        cfg.optimizer = fsdp_optimizer_kind(cfg.optimizer)
    if cfg.batch % world.size:
        raise ToolError(f"--batch {cfg.batch} must be a multiple of the number of processes ({world.size})")
    state = args.state or args.out.with_name(args.out.name.removesuffix(".safetensors") + ".distill-state")
    args.state_path = state
    args.interrupt_hint = (
        f"the resume state ({state}) is saved every {args.save_every} steps and after each block: run "
        "the same command with --resume to continue"
    )
    cache_dtype = _auto_dtype(args.cache_dtype, dev)
    compute_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[
        _auto_dtype(args.compute_dtype, dev)
    ]
    teacher_sha = sha256_files(src.files, progress=prog and world.is_main)
    cached = list(samples) + list(held or [])
    root = args.cache_dir or default_cache_root()
    kw = {"teacher_sha256": teacher_sha, "dtype": cache_dtype, "device": dev, "progress": prog}
    cache = build_teacher_cache(src, cached, root, is_main=world.is_main, **kw)
    barrier(world)
    if cache is None:
        cache = build_teacher_cache(src, cached, root, is_main=False, **kw)
    if world.is_main:
        print(f"teacher cache: {cache.directory} ({cache.manifest['bytes'] / 1e9:.2f} GB)")
    eval_set, offset = (held, len(samples)) if held else (samples, 0)
    before = (
        cached_velocity_error(
            flux_from_state_dict(ckpt.state_dict, dtype=torch.float32, device=dev),
            cache,
            WithProgress(eval_set, "distill: error before", prog),
            offset,
            dev,
        )
        if not args.resume and world.is_main
        else None
    )
    settings = {
        "teacher_sha256": teacher_sha,
        "student": ckpt.metadata.to_json(),
        "calibration": json.dumps(summary, sort_keys=True),
        "cache_dtype": cache_dtype,
        "compute_dtype": str(compute_dtype),
    }  # not the world size or --shard: the state is whole, so a run resumes on any number of GPUs
    sd = dict(ckpt.state_dict)
    res = distill_streamed(
        sd,
        lambda k: src.get(k),
        samples,
        cache,
        cfg,
        state,
        settings=settings,
        resume=args.resume,
        stop_after=args.stop_after_steps,
        world=world,
        device=dev,
        compute_dtype=compute_dtype,
        shard=args.shard,
        progress=prog,
    )
    if not res["completed"]:
        return None
    after = (
        cached_velocity_error(
            flux_from_state_dict(sd, dtype=torch.float32, device=dev),
            cache,
            WithProgress(eval_set, "distill: error after", prog),
            offset,
            dev,
        )
        if world.is_main
        else None
    )
    args.world = world
    return sd, res, before, after


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        world = getattr(args, "world", None)
        if world is not None:
            shutdown(world)


def _plan_settings(args, dev: torch.device, samples=None, config=None) -> PlanSettings:
    res, txt = args.resolution, args.txt_len
    if samples:
        s = samples[0]
        per_px = 16 if config is not None and config.architecture == "flux2" else 8
        res = res or 16 * max(1, round(math.sqrt(s.x.shape[-2] * per_px / 16 * s.x.shape[-1] * per_px / 16)))
        txt = txt or int(s.context.shape[1])
    cuda = dev.type == "cuda"
    kw = {
        "resolution": res or 1024,
        "txt_len": txt,
        "batch": args.batch,
        "compute_dtype": _auto_dtype(args.compute_dtype, dev),
        "cache_dtype": _auto_dtype(args.cache_dtype, dev),
        "optimizer": args.optimizer,
        "world_size": args.nproc or int(os.environ.get("WORLD_SIZE", "1")),
        "device": "cuda" if cuda else "cpu",
    }
    n = args.plan_samples or (len(samples) if samples else None)
    if n:
        kw["num_samples"] = n
    try:
        st = PlanSettings(**kw)
        st.check()
    except ValueError as e:
        raise ToolError(f"memory plan: {e}") from None
    return st


def _budget(args, dev: torch.device) -> int | None:
    if args.max_gpu_memory:
        try:
            return parse_memory(args.max_gpu_memory)
        except ValueError as e:
            raise ToolError(f"--max-gpu-memory: {e}") from None
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).total_memory
    return None


def _print_plan(args, dev: torch.device) -> int:
    if args.model is None and args.teacher is None:
        raise ToolError("--plan needs --model NAME or --teacher FILE (its shapes; no weights are read)")
    samples = load_calibration(args.calibration)[0] if args.calibration else None
    if args.model:
        config, name = args.model, args.model
    else:
        config, name = open_source(args.teacher).config, str(args.teacher)
    policy, group = None, 0
    if args.student is not None:
        meta = load_checkpoint(args.student).metadata
        policy, group = getattr(meta, "ternary_policy", None), meta.group_size
    settings = _plan_settings(args, dev, samples, None if isinstance(config, str) else config)
    plan = plan_distill(config, policy=policy, group_size=group, settings=settings, name=name)
    print(format_plan(plan, _budget(args, dev)))
    return 0


def _check_budget(args, dev: torch.device, src, ckpt, samples) -> None:
    """Refuse before loading weights when the plan does not fit the device budget."""
    budget = _budget(args, dev)
    if budget is None:
        return
    settings = _plan_settings(args, dev, samples, src.config)
    plan = plan_distill(
        src.config, group_size=ckpt.metadata.group_size, settings=settings, name=str(args.teacher)
    )
    peak = plan.peak_device_bytes(args.memory)
    print(f"memory plan: device peak {fmt_bytes(peak)} of {fmt_bytes(budget)} (--memory {args.memory})")
    if peak > budget:
        raise ToolError(
            f"the memory plan for --memory {args.memory} needs {fmt_bytes(peak)} of device memory, more than "
            f"the {fmt_bytes(budget)} budget: see `ternaryflux distill --plan --teacher {args.teacher}`"
            + (" and use --memory streamed" if args.memory == "resident" else "")
        )


def _run(args: argparse.Namespace) -> int:
    if args.plan:  # a plan is for a CUDA card unless --device cpu (no GPU needed to make it)
        return _print_plan(args, torch.device("cpu" if args.device == "cpu" else "cuda"))
    dev = resolve_device(args.device)
    missing = [f for f in ("teacher", "student", "calibration", "out") if getattr(args, f) is None]
    if missing:
        flags = ", ".join("-o/--out" if f == "out" else f"--{f}" for f in missing)
        raise ToolError(f"distill needs {flags} (or --plan to print the memory plan)")
    if args.steps < 1:
        raise ToolError("--steps must be >= 1")
    if args.batch < 1:
        raise ToolError("--batch must be >= 1")
    refuse_existing(args.out, overwrite=args.overwrite)
    ckpt = load_checkpoint(args.student)
    src = open_source(args.teacher)
    student_config = config_from_state_dict(ckpt.state_dict)
    if student_config != src.config:
        raise ToolError(f"{args.student} does not fit {args.teacher}: {student_config} vs {src.config}")
    samples, summary = load_calibration(args.calibration)
    check_calibration_fits(samples, src.config)
    held = load_calibration(args.heldout)[0] if args.heldout else None
    if held:
        check_calibration_fits(held, src.config)
    _check_budget(args, dev, src, ckpt, samples)
    cfg = _config(args)
    prog = not args.no_progress
    if args.shard == "fsdp" and args.memory != "streamed":
        raise ToolError(
            "--shard fsdp shards the block the streamed run trains: use it with --memory streamed"
        )
    runner = _run_streamed if args.memory == "streamed" else _run_resident
    out = runner(args, dev, ckpt, src, samples, summary, held, cfg, prog)
    if out is None:
        print(
            f"stopped after step {args.stop_after_steps}; state saved to {args.state_path}; continue with --resume"
        )
        return 0
    sd, res, before, after = out
    world = getattr(args, "world", None)
    if world is not None and not world.is_main:
        barrier(world)
        return 0
    meta = ckpt.metadata
    meta.method_params = {
        **meta.method_params,
        "started_from": meta.method,
        "distill": {**cfg.__dict__, "optimizer": res["optimizer"], "memory": args.memory},
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
        "memory": args.memory,
        "optimizer": res["optimizer"],
        "eval_on": "heldout" if held else "calibration (no --heldout given)",
        "velocity_rel_err_before": before,
        "velocity_rel_err_after": after,
        "seconds": res["seconds"],
        "seconds_per_phase": {
            k.removeprefix("seconds_"): v for k, v in res.items() if k.startswith("seconds_")
        },
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "loss_history": res["history"],
    }
    report_path = args.report or default_report_path(args.out)
    write_json(report_path, report)
    state = args.state_path
    if args.keep_state:
        state_row = f"{state} (kept: --keep-state)"
    else:
        if Path(state).is_dir():
            shutil.rmtree(state, ignore_errors=True)
        else:
            Path(state).unlink(missing_ok=True)
        state_row = "removed after success (--keep-state keeps it)"
    if world is not None:
        barrier(world)
    rows = [
        ["output", str(args.out)],
        ["memory", args.memory],
        [
            "steps",
            f"{cfg.steps} ({cfg.n_block_steps} block-wise"
            + (" per block" if args.memory == "streamed" else "")
            + f", {cfg.steps - cfg.n_block_steps} end-to-end)",
        ],
        ["optimizer", res["optimizer"]],
        *(
            [
                [
                    "processes",
                    f"{world.size} ({world.backend}), {cfg.batch // world.size} sample(s) each per step",
                ]
            ]
            if world is not None and world.distributed
            else []
        ),
        [
            f"velocity rel. err ({report['eval_on'].split()[0]})",
            f"{before:.4g} -> {after:.4g}" if before is not None else f"{after:.4g}",
        ],
        ["time", f"{res['seconds']:.1f} s"],
        ["resume state", state_row],
        ["report", str(report_path)],
    ]
    print(format_table(["ternaryflux distill", ""], rows))
    return 0
