"""``ternaryflux quantize``: float FLUX (FLUX.1 or FLUX.2) in, TernaryFLUX checkpoint out.

The Linears inside the double and single blocks become ternary ({-1, 0, +1} codes with one
float scale per output channel, or per group of --group-size inputs); the adaLN modulation
Linears too for FLUX.1 (--ternary-layers blocks+modulation, its default), not for FLUX.2
(default blocks, as Bonsai Image); embedders, the final layer, norms and biases keep their
precision. The source is streamed tensor by tensor and the
output written as it is produced, so memory stays at about one block (absmean runs on a 24 GB
machine without GPU; a GPU is used when present).

Methods:
  absmean      BitNet b1.58 absmean rounding. Data-free, fast, the baseline.
  twn          Ternary-weight-network thresholds. Data-free.
  calibrated   (recommended) Block by block on calibration inputs: for every Linear, candidate
               ternarizations (TWN, activation-weighted thresholds, GPTQ error feedback with
               act-order; each with and without bias correction) are tried and the one that
               gives the smallest error of the *block's output* is kept. Needs --calibration.
               Follow it with `ternaryflux distill` for the best quality.

Inputs: BFL layout (flux1-dev.safetensors, flux-2-klein-4b.safetensors), ComfyUI checkpoints (model.diffusion_model.*),
diffusers (transformer/ folder, FluxTransformer2DModel or Flux2Transformer2DModel, single or
sharded with *.safetensors.index.json); bf16, fp16,
fp32 or fp8. Writes OUT atomically plus a JSON report (per-layer error, sizes, time, memory).

Examples:
  ternaryflux quantize flux1-dev.safetensors -o flux1-dev-ternary.safetensors
  ternaryflux quantize FLUX.1-dev/transformer --method calibrated \\
      --calibration calib/*.safetensors --calib-samples 32 -o flux1-dev-ternary-cal.safetensors
  ternaryflux quantize FLUX.2-klein-4B/transformer --group-size 128 -o flux2-klein-4b-ternary.safetensors
  # every file the Record Calibration node wrote (a folder), options in any order:
  ternaryflux quantize --method calibrated --calibration ComfyUI/output/ternaryflux_calibration \\
      -o flux1-dev-ternary-cal.safetensors flux1-dev.safetensors
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..core.defaults import BASELINE_METHOD, DEFAULT_METHOD
from ..core.flux_layout import POLICIES
from ..quant.algorithms import ALL_CANDIDATES, BLOCK_INPUTS, DEFAULT_CANDIDATES, METHODS, TernaryConfig
from ..quant.calibration import check_calibration_fits, load_calibration
from ..quant.flux import quantize_flux
from ..quant.sources import open_source
from .args import FORMATTER, ToolError, add_device_arg, add_progress_arg, default_report_path, write_json
from .cli_paths import add_overwrite_arg, expand_calibration_paths, is_calibration_file, refuse_existing
from .report import format_table, human_bytes

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="float FLUX -> ternary checkpoint (absmean | twn | calibrated)",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument(
        "source",
        type=Path,
        nargs="?",  # checked in run(): a clear message when --calibration swallowed it
        help="float FLUX: .safetensors file, *.safetensors.index.json, or a diffusers transformer folder",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output checkpoint (.safetensors)")
    p.add_argument(
        "--method",
        choices=list(METHODS),
        default=DEFAULT_METHOD,
        help=f"see above (default {DEFAULT_METHOD}; {BASELINE_METHOD} is the data-free baseline)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        nargs="+",
        action="extend",
        default=None,
        metavar="FILE_OR_DIR",
        help="calibration files or folders (a folder = every .safetensors in it, e.g. "
        "ComfyUI/output/ternaryflux_calibration); repeatable (for calibrated)",
    )
    p.add_argument(
        "--calib-samples", type=int, default=32, help="use at most this many calibration samples (default 32)"
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=0,
        help="0 = one scale per output channel (default); or a multiple of 128 dividing K (256 fits FLUX)",
    )
    p.add_argument(
        "--ternary-layers",
        choices=POLICIES,
        default=None,
        help="which Linears become ternary: blocks (attention + MLP; FLUX.2's default, Bonsai's choice) or "
        "blocks+modulation (also the adaLN modulation; FLUX.1's default, the 1.58-bit FLUX paper's); "
        "recorded in the checkpoint",
    )
    p.add_argument(
        "--at-rest",
        choices=["2bit", "base3"],
        default="2bit",
        help="packing on disk: 2bit (runtime) or base3 (1.6 bit, smaller download)",
    )
    p.add_argument(
        "--candidates",
        default=",".join(DEFAULT_CANDIDATES),
        help=f"calibrated: comma-separated candidates from {','.join(ALL_CANDIDATES)} (default {','.join(DEFAULT_CANDIDATES)})",
    )
    p.add_argument(
        "--bias-correction",
        choices=["auto", "on", "off"],
        default=TernaryConfig.bias_correction,
        help=f"calibrated: bias correction (auto = block error decides; default {TernaryConfig.bias_correction})",
    )
    p.add_argument(
        "--block-inputs",
        choices=BLOCK_INPUTS,
        default=TernaryConfig.block_inputs,
        help="calibrated: calibrate each block on the float model's block inputs (float) or on the inputs "
        "the already-ternary earlier blocks produce (sequential); the target is the float block output "
        f"(default {TernaryConfig.block_inputs})",
    )
    add_device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed for subsampling calibration data")
    p.add_argument(
        "--report", type=Path, default=None, help="JSON report path (default: OUT with .report.json)"
    )
    p.add_argument(
        "--no-hash",
        action="store_true",
        help="do not compute the source SHA-256 (saves one read of the source)",
    )
    add_progress_arg(p)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.source is None and args.calibration and len(args.calibration) > 1:
        # `--calibration rec/*.safetensors flux1-dev.safetensors`: nargs='+' took the source too;
        # take it back when the last path is clearly not a calibration file
        last = args.calibration[-1]
        if last.exists() and not is_calibration_file(last):
            args.source = last
            args.calibration = args.calibration[:-1]
            log.info("source: %s (given after the --calibration files)", last)
    if args.source is None:
        hint = ""
        if args.calibration and len(args.calibration) > 1:
            hint = (
                f" (--calibration takes every path after it, so {str(args.calibration[-1])!r} was read as "
                "a calibration file: put the source before --calibration, or pass the calibration folder)"
            )
        raise ToolError("quantize needs the float FLUX source: ternaryflux quantize SOURCE -o OUT" + hint)
    if args.out.resolve() == args.source.resolve():
        raise ToolError("-o must differ from the source")
    refuse_existing(args.out, overwrite=args.overwrite)
    src = open_source(args.source)
    cands = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    cfg = TernaryConfig(
        method=args.method,
        group_size=args.group_size,
        candidates=cands,
        bias_correction=args.bias_correction,
        block_inputs=args.block_inputs,
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise ToolError(str(e)) from None
    samples, summary = None, None
    if args.method == "calibrated":
        if not args.calibration:
            raise ToolError(
                "--method calibrated needs --calibration FILE... (record it with the Record Calibration node in ComfyUI, "
                "or `ternaryflux calibrate`)"
            )
        calib_files = expand_calibration_paths(args.calibration)
        samples, summary = load_calibration(calib_files, args.calib_samples, args.seed)
        c = src.config
        check_calibration_fits(samples, c, calib_files, args.source)
    elif args.calibration:
        log.warning("--calibration is ignored by --method %s", args.method)
    log.info(
        "source: %s, %s layout, %s %s (%s)",
        args.source,
        src.layout_name,
        src.variant,
        {"flux": "FLUX.1", "flux2": "FLUX.2"}[src.architecture],
        src.main_dtype(),
    )
    report = quantize_flux(
        src,
        args.out,
        cfg,
        packing=args.at_rest,
        calibration=samples,
        calibration_summary=summary,
        device=args.device,
        hash_source=not args.no_hash,
        progress=not args.no_progress,
        policy=args.ternary_layers,
    )
    report_path = args.report or default_report_path(args.out)
    write_json(report_path, report)
    worst = sorted(report["layers"], key=lambda r: -r["weight_rel_err"])[:3]
    rows = [
        ["output", str(args.out)],
        ["method", args.method + (f" (group size {args.group_size})" if args.group_size else "")],
        [
            "size",
            f"{human_bytes(report['input_bytes'])} -> {human_bytes(report['output_bytes'])} ({report['compression']:.2f}x)",
        ],
        ["ternary layers", report["ternary_layers"]],
        ["mean weight rel. err", report.get("mean_weight_rel_err", float("nan"))],
        ["worst layers (weight)", ", ".join(f"{r['layer']} {r['weight_rel_err']:.3f}" for r in worst)],
        ["time", f"{report['seconds']:.1f} s ({report['input_MB_per_s']:.3g} MB/s of input)"],
        ["peak RSS", human_bytes(report["peak_rss_bytes"])],
        ["report", str(report_path)],
    ]
    block = [r["block_out_rel_err"] for r in report["layers"] if r.get("block_out_rel_err") is not None]
    if block:  # calibrated minimizes the block output error, not the weight error: show both
        rows.insert(
            5,
            [
                "mean block-output rel. err",
                f"{sum(block) / len(block):.4f} (what calibrated minimizes; its weight error may be "
                "higher than absmean's)",
            ],
        )
    print(format_table(["ternaryflux quantize", ""], rows))
    return 0
