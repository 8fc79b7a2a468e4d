"""``ternaryflux demo``: the whole path on a built-in tiny FLUX, no downloads.

Builds a seeded FLUX with structured (heavy-tailed, outlier-channel) weights, ternarizes every
block Linear, writes the checkpoint (2-bit and at-rest base3), reloads it, runs one Euler
denoising step through the ternary layers and compares with the float model. Then it runs the
`calibrated` recipe on the float model's own sampling trajectories and compares the held-out
velocity error of both methods.

`--architecture flux2` runs the same path on a tiny FLUX.2 (global modulation, SwiGLU, no biases,
128-channel patch-1 latent; ternary policy `blocks`, FLUX.2's default).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..core.calibration_data import write_calibration
from ..core.checkpoint import TernaryMetadata, load_checkpoint, write_checkpoint
from ..core.fixtures import make_flux_inputs, make_tiny_flux, tiny_flux2_config, tiny_flux_config
from ..core.flux_layout import architecture, is_ternary_layer
from ..core.flux_model import flux_from_state_dict
from ..quant.algorithms import TernaryConfig, quantize_
from ..quant.evaluate import velocity_error
from ..quant.flux import quantize_flux_tensors
from ..quant.testing import trajectory_calibration
from .args import ToolError
from .cli_paths import add_overwrite_arg, refuse_existing
from .report import format_table, human_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="ternarize a built-in tiny FLUX, save, reload, denoise one step, print a table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hidden", type=int, default=256, help="hidden size, a multiple of 128 (default 256)")
    p.add_argument("--depth", type=int, default=2, help="double-stream blocks (default 2)")
    p.add_argument("--depth-single", type=int, default=4, help="single-stream blocks (default 4)")
    p.add_argument(
        "--architecture",
        choices=["flux", "flux2"],
        default="flux",
        help="flux: a tiny FLUX.1 (default); flux2: a tiny FLUX.2 (klein-style)",
    )
    p.add_argument("--method", choices=["absmean", "twn"], default="absmean", help="data-free ternarization")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="latent height and width (default 32 for FLUX.1, 16 for FLUX.2: a 256 px image either way)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the checkpoints (default: a temp folder)"
    )
    p.add_argument(
        "--calibration-prompts",
        type=int,
        default=6,
        help="synthetic prompts whose sampling trajectories calibrate the 'calibrated' comparison "
        "(default 6; 0 skips it)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument(
        "--write-models",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of the demo, write a float tiny FLUX to try the tool on (the demo's structured "
        "model, BFL layout, bf16) with a calibration and a held-out file, and print the commands to run",
    )
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def euler_step(model, inp: dict, sigma: float, sigma_next: float) -> torch.Tensor:
    t = torch.full_like(inp["timestep"], sigma)
    v = model.forward_latent(inp["x"], t, inp["context"], inp["y"], inp["guidance"])
    return inp["x"] + (sigma_next - sigma) * v


TITLES = {"flux": "FLUX", "flux2": "FLUX.2"}


def demo_config(args: argparse.Namespace):
    """The tiny model of ``--architecture`` (FLUX.1 as before; FLUX.2: 128 latent channels)."""
    if getattr(args, "architecture", "flux") == "flux2":
        return tiny_flux2_config(hidden=args.hidden, depth=args.depth, depth_single=args.depth_single)
    return tiny_flux_config(hidden=args.hidden, depth=args.depth, depth_single=args.depth_single)


def run(args: argparse.Namespace) -> int:
    if args.size is None:
        args.size = 16 if args.architecture == "flux2" else 32
    if args.write_models is not None:
        return write_models(args)
    if args.out is not None:
        return _demo(args, args.out)
    # the checkpoints go to a temporary folder that is removed afterwards (no /tmp leftovers)
    with tempfile.TemporaryDirectory(prefix="ternaryflux-demo-") as d:
        return _demo(args, Path(d), temporary=True)


MODEL_FILES = {
    "model": "tiny-flux-float.safetensors",
    "cal": "tiny-flux-calibration.safetensors",
    "held": "tiny-flux-heldout.safetensors",
}


def write_models(args: argparse.Namespace) -> int:
    """``--write-models DIR``: the float tiny FLUX + calibration/held-out files, and what to run."""
    folder: Path = args.write_models
    if folder.exists() and not folder.is_dir():
        raise ToolError(f"--write-models {folder}: exists and is not a folder")
    targets = {k: folder / v for k, v in MODEL_FILES.items()}
    refuse_existing(*targets.values(), overwrite=args.overwrite)
    config = demo_config(args)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: v.to(torch.bfloat16)
        for k, v in make_tiny_flux(config, seed=args.seed, structured=True).state_dict().items()
    }
    prompts = max(2, args.calibration_prompts)
    with tempfile.TemporaryDirectory(prefix=".ternaryflux-models-", dir=folder) as tmp:
        staged = {k: Path(tmp) / v for k, v in MODEL_FILES.items()}
        save_file(sd, str(staged["model"]))
        write_calibration(
            staged["cal"], trajectory_calibration(sd, prompts, seed=args.seed + 10), {"source": "synthetic"}
        )
        write_calibration(
            staged["held"],
            trajectory_calibration(sd, max(2, prompts // 2), seed=args.seed + 20),
            {"source": "synthetic"},
        )
        for k in MODEL_FILES:
            os.replace(staged[k], targets[k])
    m, c, h = (str(targets[k]) for k in ("model", "cal", "held"))
    t = str(folder / "tiny-flux-ternary.safetensors")
    rows = [
        [
            f"float tiny {TITLES[config.architecture]}",
            f"{m} (hidden {args.hidden}, {args.depth}+{args.depth_single} blocks, bf16)",
        ],
        ["calibration", f"{c} ({prompts} synthetic prompts' trajectories)"],
        ["held out", h],
    ]
    print(format_table(["ternaryflux demo --write-models", ""], rows))
    print(
        "\nTry the tool on them:\n"
        f"  ternaryflux inspect {m}\n"
        f"  ternaryflux quantize {m} --method calibrated --calibration {c} -o {t}\n"
        f"  ternaryflux eval --teacher {m} --student {t} --heldout {h}"
    )
    return 0


@torch.no_grad()
def _demo(args: argparse.Namespace, folder: Path, temporary: bool = False) -> int:
    config = demo_config(args)
    arch = config.architecture
    float_model = make_tiny_flux(config, seed=args.seed, structured=True)
    inp = make_flux_inputs(config, height=args.size, width=args.size, txt_len=16, seed=args.seed + 1)
    params_total = sum(p.numel() for p in float_model.parameters())
    bf16_bytes = params_total * 2

    t0 = time.perf_counter()
    ref = euler_step(float_model, inp, 1.0, 0.75)
    t_float = time.perf_counter() - t0

    t0 = time.perf_counter()
    tern = make_tiny_flux(config, seed=args.seed, structured=True)
    layers = list(
        quantize_(tern, TernaryConfig(method=args.method), filter_fn=lambda m, n: is_ternary_layer(n, arch))
    )
    t_quant = time.perf_counter() - t0
    params_ternary = sum(int(tern.get_submodule(n).weight_shape.prod()) for n in layers)

    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() and not k.endswith("weight_scale") else v)
        for k, v in tern.state_dict().items()
    }
    sizes = {}
    for packing in ("2bit", "base3"):
        path = folder / f"tiny-flux-ternary-{packing}.safetensors"
        meta = TernaryMetadata(
            packing=packing,
            variant=config.variant,
            source_name=f"built-in tiny {TITLES[arch]} (demo)",
            method=args.method,
            # FLUX.2 writers always name their policy (docs/FORMAT.md); FLUX.1 keeps it implicit
            **(
                {"architecture": arch, "ternary_policy": architecture(arch).default_policy}
                if arch != "flux"
                else {}
            ),
        )
        write_checkpoint(path, sd, meta)
        sizes[packing] = path.stat().st_size

    t0 = time.perf_counter()
    ckpt = load_checkpoint(folder / "tiny-flux-ternary-base3.safetensors")
    reloaded = flux_from_state_dict(ckpt.state_dict, dtype=torch.float32)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = euler_step(reloaded, inp, 1.0, 0.75)
    t_tern = time.perf_counter() - t0
    out_mem = euler_step(tern, inp, 1.0, 0.75)

    v_ref = (ref - inp["x"]) / -0.25
    v_out = (out - inp["x"]) / -0.25
    figures = {
        "params_total": params_total,
        "params_ternary": params_ternary,
        "ternary_fraction": params_ternary / params_total,
        "bf16_bytes": bf16_bytes,
        "file_2bit_bytes": sizes["2bit"],
        "file_base3_bytes": sizes["base3"],
        "step_max_abs_err": float((out - ref).abs().max()),
        "step_rel_err": float((out - ref).norm() / ref.norm()),
        "velocity_rel_err": float((v_out - v_ref).norm() / v_ref.norm()),
        "reload_matches_in_memory": bool(torch.equal(out, out_mem)),
        "seconds": {"float_step": t_float, "ternarize": t_quant, "load": t_load, "ternary_step": t_tern},
    }
    rows = [
        [
            "model",
            f"tiny {TITLES[arch]} hidden {args.hidden}, {args.depth}+{args.depth_single} blocks, {config.variant}",
        ],
        [
            "parameters ternary",
            f"{params_ternary:,} / {params_total:,} ({100 * figures['ternary_fraction']:.1f}%)",
        ],
        ["bf16 size", human_bytes(bf16_bytes)],
        ["file, 2-bit", f"{human_bytes(sizes['2bit'])} ({bf16_bytes / sizes['2bit']:.2f}x smaller)"],
        [
            "file, base3 at rest",
            f"{human_bytes(sizes['base3'])} ({bf16_bytes / sizes['base3']:.2f}x smaller)",
        ],
        ["denoising step max |err|", f"{figures['step_max_abs_err']:.4g}"],
        ["denoising step rel. err", f"{figures['step_rel_err']:.4g}"],
        [f"velocity rel. err ({args.method})", f"{figures['velocity_rel_err']:.4g}"],
        ["reloaded == in-memory", str(figures["reload_matches_in_memory"])],
        [
            "time: ternarize / load / step",
            f"{t_quant:.2f} s / {t_load:.2f} s / {t_tern:.2f} s (float step {t_float:.2f} s)",
        ],
        [
            "checkpoints",
            "temporary, removed at the end (keep them with --out DIR)" if temporary else str(folder),
        ],
    ]
    print(format_table(["TernaryFLUX demo", ""], rows))
    if args.calibration_prompts > 0:
        figures["held_out"] = compare_with_calibrated(args, float_model, tern, folder)
        h = figures["held_out"]
        print(
            "\nHeld-out velocity error (float model's own sampling trajectories, synthetic prompts):\n"
            + format_table(
                ["method", "velocity rel. err", "time"],
                [
                    [args.method, f"{h[args.method]:.4f}", f"{t_quant:.2f} s"],
                    ["calibrated", f"{h['calibrated']:.4f}", f"{h['calibrated_seconds']:.2f} s"],
                ],
            )
        )
    print(
        "\nData-free ternarization of a pretrained-like model costs this much velocity error; "
        "calibration (`ternaryflux quantize --method calibrated`) and `ternaryflux distill` close the gap."
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def compare_with_calibrated(args: argparse.Namespace, float_model, data_free_model, folder: Path) -> dict:
    """Held-out velocity error of the data-free model and of the ``calibrated`` recipe (the one
    ``ternaryflux quantize --method calibrated`` and the Ternarize FLUX node run), calibrated on
    the float model's own Euler trajectories for synthetic prompts."""
    sd = {k: v.to(torch.bfloat16) for k, v in float_model.state_dict().items()}
    calib = trajectory_calibration(sd, args.calibration_prompts, seed=args.seed + 10)
    held = trajectory_calibration(sd, max(2, args.calibration_prompts // 2), seed=args.seed + 20)
    t0 = time.perf_counter()
    path = folder / "tiny-flux-ternary-calibrated.safetensors"
    quantize_flux_tensors(sd, path, TernaryConfig(method="calibrated"), calibration=calib, device="cpu")
    seconds = time.perf_counter() - t0
    calibrated = flux_from_state_dict(load_checkpoint(path).state_dict, dtype=torch.float32)
    return {
        args.method: velocity_error(float_model, data_free_model, held),
        "calibrated": velocity_error(float_model, calibrated, held),
        "calibrated_seconds": seconds,
        "calibration_samples": len(calib),
        "held_out_samples": len(held),
    }
