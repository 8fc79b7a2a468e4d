"""``ternaryflux calibrate``: build a calibration set (what the FLUX transformer sees while sampling).

Two sources:

1. Files recorded in ComfyUI by the *Record Calibration* node (recommended: real T5/CLIP
   conditioning, your resolutions and samplers). calibrate merges them, optionally subsamples
   (--max-samples) and splits off a held-out part for `ternaryflux eval` (--heldout-fraction,
   --heldout-out). Example:

     ternaryflux calibrate --recorded rec/*.safetensors --max-samples 64 \\
         --heldout-fraction 0.2 --heldout-out heldout.safetensors -o calib.safetensors

2. --synthetic: prompts (the built-in list of 1,000+ prompts, or --prompts FILE, one per line)
   run through the float model with an Euler flow-matching sampler on the FLUX shift schedule,
   the latent recorded at several steps of each trajectory (--record-steps), with seeded random
   text conditioning in place of T5/CLIP: for pipeline checks and tests only. FLUX.2 models
   (BFL/ComfyUI files or diffusers folders) get FLUX.2 inputs: 128-channel latents at size/16,
   text as wide as the model's txt_in, no pooled vector, BFL's FLUX.2 schedule. Real prompt
   encoding happens in ComfyUI (its text encoders, your files): use source 1. Example:

     ternaryflux calibrate --model flux1-dev.safetensors --synthetic --num-prompts 4 \\
         --size 256 --steps 8 --record-steps 0,4 -o calib-synthetic.safetensors

Held-out splits are by trajectory (prompt), so eval never sees a step of a calibration image.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.calibration_data import CalibrationSample, write_calibration
from ..core.flux_model import flux_from_state_dict
from ..quant.calibration import load_calibration
from ..quant.flux import resolve_device
from ..quant.prompts import PromptListError, builtin_prompts, load_prompt_file
from ..quant.sampling import euler_trajectory, flux2_sigmas, flux_sigmas, synthetic_conditioning
from ..quant.sources import open_source
from .args import FORMATTER, ToolError, add_device_arg, add_progress_arg
from .cli_paths import add_overwrite_arg, refuse_existing
from .report import format_table

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="build a calibration set (from recorded files or prompts)",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="calibration file to write")
    g = p.add_argument_group("from recorded files")
    g.add_argument(
        "--recorded",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="files written by the Record Calibration node",
    )
    g.add_argument(
        "--max-samples", type=int, default=None, help="keep a seeded random subset of this many samples"
    )
    g = p.add_argument_group("synthetic (pipeline checks: random conditioning, no text encoder)")
    g.add_argument("--model", type=Path, help="float FLUX (any layout quantize accepts)")
    g.add_argument(
        "--prompts", type=Path, default=None, help="one prompt per line (default: the built-in list)"
    )
    g.add_argument(
        "--num-prompts", type=int, default=16, help="prompts to sample (seeded choice; default 16)"
    )
    g.add_argument(
        "--synthetic",
        action="store_true",
        help="required with --model: seeded random text conditioning instead of T5/CLIP (tests only)",
    )
    g.add_argument(
        "--size", type=int, default=1024, help="image size in pixels (latent = size/8; default 1024)"
    )
    g.add_argument("--steps", type=int, default=20, help="Euler steps per trajectory (default 20)")
    g.add_argument(
        "--record-steps", default="0,4,8,12,16", help="steps whose inputs are recorded (default 0,4,8,12,16)"
    )
    g.add_argument(
        "--guidance", type=float, default=3.5, help="guidance strength for FLUX.1-dev (default 3.5)"
    )
    g.add_argument("--txt-len", type=int, default=256, help="text tokens (synthetic mode; default 256)")
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.0,
        help="fraction of the prompts split off for eval (needs --heldout-out); the split is by prompt: "
        "recorded samples with the same conditioning (one prompt's steps, in any file) and each sampled "
        "trajectory stay on one side",
    )
    p.add_argument("--heldout-out", type=Path, default=None, help="where the held-out part goes")
    add_overwrite_arg(p)
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def group_by_conditioning(samples: list[CalibrationSample]) -> list[list[CalibrationSample]]:
    """Recorded samples grouped by prompt: the same text conditioning (context and pooled ``y``,
    byte for byte) is one group, whichever file or step it was recorded at. A held-out split then
    never shares a prompt with the calibration part."""
    groups: dict[str, list[CalibrationSample]] = {}
    for s in samples:
        h = hashlib.sha256(s.context.detach().float().cpu().contiguous().numpy().tobytes())
        if s.y is not None:
            h.update(s.y.detach().float().cpu().contiguous().numpy().tobytes())
        groups.setdefault(h.hexdigest(), []).append(s)
    return list(groups.values())


def _split(
    groups: list[list[CalibrationSample]], fraction: float, seed: int
) -> tuple[list[CalibrationSample], list[CalibrationSample]]:
    if fraction <= 0:
        return [s for g in groups for s in g], []
    n_hold = max(1, round(len(groups) * fraction))
    if n_hold >= len(groups):
        raise ToolError(
            f"--heldout-fraction {fraction} leaves nothing for calibration ({len(groups)} prompts/trajectories; "
            "the split is by prompt, so record more prompts)"
        )
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    hold = set(perm[:n_hold])
    cal = [s for i, g in enumerate(groups) if i not in hold for s in g]
    held = [s for i, g in enumerate(groups) if i in hold for s in g]
    return cal, held


def run(args: argparse.Namespace) -> int:
    if args.heldout_fraction and not args.heldout_out:
        raise ToolError("--heldout-fraction needs --heldout-out FILE")
    if not 0 <= args.heldout_fraction < 1:
        raise ToolError("--heldout-fraction must be in [0, 1)")
    if bool(args.recorded) == bool(args.model):
        raise ToolError("give either --recorded FILE... or --model FLUX --synthetic")
    refuse_existing(args.out, args.heldout_out, overwrite=args.overwrite)
    if args.recorded:
        samples, summary = load_calibration(args.recorded, args.max_samples, args.seed)
        groups = group_by_conditioning(samples)
        info = {"source": "recorded", "files": [f["file"] for f in summary["files"]]}
    else:
        groups, info = _from_prompts(args)
    cal, held = _split(groups, args.heldout_fraction, args.seed)
    write_calibration(args.out, cal, {**info, "split": "calibration"})
    rows = [["prompts (split unit)", str(len(groups))], ["calibration", f"{len(cal)} samples -> {args.out}"]]
    if held:
        write_calibration(args.heldout_out, held, {**info, "split": "heldout"})
        rows.append(["held out", f"{len(held)} samples -> {args.heldout_out}"])
    print(format_table(["ternaryflux calibrate", ""], rows))
    return 0


@torch.no_grad()
def _from_prompts(args: argparse.Namespace) -> tuple[list[list[CalibrationSample]], dict]:
    if not args.synthetic:
        raise ToolError(
            "--model needs --synthetic: this tool has no text encoder. Real calibration data is recorded in ComfyUI "
            "(Record Calibration node, your T5/CLIP files); then run `ternaryflux calibrate --recorded FILES`"
        )
    try:
        prompts = builtin_prompts() if args.prompts is None else load_prompt_file(args.prompts)
    except PromptListError as e:
        raise ToolError(str(e)) from None
    try:
        record = sorted({int(s) for s in args.record_steps.split(",") if s.strip()})
    except ValueError:
        raise ToolError(f"--record-steps {args.record_steps!r}: comma-separated step numbers") from None
    if not record or record[-1] >= args.steps or record[0] < 0:
        raise ToolError(f"--record-steps must be in 0..{args.steps - 1}")
    if args.size % 16:
        raise ToolError("--size must be a multiple of 16")
    dev = resolve_device(args.device)
    src = open_source(args.model)
    cfg = src.config
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = flux_from_state_dict(src.state_dict(), dtype=dtype, device=dev)
    g = torch.Generator().manual_seed(args.seed)
    chosen = [prompts[i] for i in torch.randperm(len(prompts), generator=g)[: args.num_prompts].tolist()]
    flux2 = cfg.architecture == "flux2"
    # FLUX.1: 16 channels at size/8, patchified 2x2 in the model; FLUX.2: its VAE's 32 channels
    # folded 2x2 into the 128-channel latent at size/16 (ComfyUI's Flux2 latent), patch 1
    lat = args.size // (16 if flux2 else 8)
    tokens = lat**2 if flux2 else (lat // 2) ** 2
    if flux2:
        sigmas = flux2_sigmas(args.steps, tokens)
    else:
        sigmas = flux_sigmas(args.steps, tokens, shift=cfg.guidance_embed)
    if dev.type == "cpu" and args.size > 512:
        log.warning(
            "sampling %d prompts x %d steps at %d px on the CPU takes minutes per prompt; for a pipeline "
            "check pass --size 256 (real calibration data: record it in ComfyUI on a GPU)",
            len(chosen),
            args.steps,
            args.size,
        )
    groups = []
    # one tick per model call (Euler step), not per prompt: a 1024 px trajectory takes a while
    bar = tqdm(
        total=len(chosen) * args.steps, desc="calibrate (Euler steps)", unit="step", disable=args.no_progress
    )

    def _tick(*_) -> None:  # a forward hook must return None (a value would replace the output)
        bar.update(1)

    tick = model.img_in.register_forward_hook(_tick)
    try:
        for prompt in chosen:
            ctx, y = synthetic_conditioning(prompt, args.txt_len, cfg.context_in_dim, cfg.vec_in_dim)
            noise = torch.randn(1, cfg.latent_channels, lat, lat, generator=g)
            guid = torch.full((1,), args.guidance) if cfg.guidance_embed else None
            recs, _ = euler_trajectory(
                model,
                noise.to(dev),
                ctx.to(dev),
                None if y is None else y.to(dev),
                None if guid is None else guid.to(dev),
                sigmas.to(dev),
                record,
            )
            groups.append(recs)
    finally:
        tick.remove()
        bar.close()
    info = {
        "source": "synthetic",
        "model": src.files[0].name,
        "prompts": len(chosen),
        "steps": args.steps,
        "record_steps": record,
        "size": args.size,
        "sampler": "euler, FLUX shift schedule" if cfg.guidance_embed else "euler, unshifted (schnell)",
    }
    if flux2:  # (FLUX.1 files keep their metadata as before)
        info.update(architecture="flux2", sampler="euler, FLUX.2 empirical-mu schedule")
    return groups, info
