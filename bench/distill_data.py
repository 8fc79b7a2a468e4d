"""Does `ternaryflux distill` help more with more calibration data? (structured tiny FLUX, CPU)

For each number of calibration prompts: quantize with ``--method calibrated`` on those prompts,
then self-distill from that checkpoint with a few (steps, lr) settings, and measure the
velocity relative error on one fixed held-out set (other prompts, other noise seed). Prints a
Markdown table. Not a test; the default arguments run in about 12 minutes on 2 CPU cores.

    python bench/distill_data.py [--prompts 12 48] [--settings 300:1e-4 300:3e-4 300:1e-3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/kernels.py would shadow the
# `kernels` package that bitsandbytes looks for (it then logs a bogus warning): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from ternaryflux.core.checkpoint import load_checkpoint  # noqa: E402
from ternaryflux.core.fixtures import make_flux_state_dict  # noqa: E402
from ternaryflux.core.flux_model import Flux, flux_from_state_dict  # noqa: E402
from ternaryflux.quant.algorithms import TernaryConfig  # noqa: E402
from ternaryflux.quant.distill import DistillConfig, distill, make_student  # noqa: E402
from ternaryflux.quant.evaluate import velocity_error  # noqa: E402
from ternaryflux.quant.flux import quantize_flux_tensors  # noqa: E402
from ternaryflux.quant.testing import structured_config, trajectory_calibration  # noqa: E402


def parse_setting(s: str) -> tuple[int, float]:
    steps, lr = s.split(":")
    return int(steps), float(lr)


def load_student(path: Path) -> Flux:
    return flux_from_state_dict(load_checkpoint(path).state_dict, dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--prompts", type=int, nargs="+", default=[12, 48], help="calibration prompts (3 samples each)"
    )
    ap.add_argument("--heldout", type=int, default=8, help="held-out prompts (3 samples each)")
    ap.add_argument("--size", type=int, default=64, help="image size in pixels (latent = size/8)")
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["300:1e-4", "300:3e-4", "300:1e-3"],
        help="distill settings STEPS:LR; the first is reported as the default",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.WARNING)
    settings = [parse_setting(s) for s in args.settings]

    sd = make_flux_state_dict(structured_config(), seed=0, structured=True)
    teacher = flux_from_state_dict(sd, dtype=torch.float32)
    held = trajectory_calibration(sd, args.heldout, size=args.size, seed=2)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.prompts:
            cal = trajectory_calibration(sd, n, size=args.size, seed=1)
            ckpt = Path(tmp) / f"cal{n}.safetensors"
            t0 = time.perf_counter()
            quantize_flux_tensors(sd, ckpt, TernaryConfig(method="calibrated"), calibration=cal, device="cpu")
            t_cal = time.perf_counter() - t0
            base = velocity_error(teacher, load_student(ckpt), held)
            train_base = velocity_error(teacher, load_student(ckpt), cal)
            rows.append(
                [str(n), str(len(cal)), "calibrated", f"{train_base:.3f}", f"{base:.3f}", f"{t_cal:.0f}"]
            )
            print(
                f"# {n} prompts: calibrated held-out {base:.4f} (train {train_base:.4f}) {t_cal:.0f} s",
                flush=True,
            )
            for steps, lr in settings:
                student = load_student(ckpt)
                make_student(student, teacher)
                res = distill(
                    teacher,
                    student,
                    cal,
                    DistillConfig(steps=steps, lr=lr, save_every=10**9, optimizer="adamw8bit"),
                    Path(tmp) / "state.pt",
                    progress=False,
                )
                err = velocity_error(teacher, student, held)
                train = velocity_error(teacher, student, cal)
                label = f"+ distill {steps} steps lr {lr:g} ({res['optimizer']})"
                rows.append(
                    [str(n), str(len(cal)), label, f"{train:.3f}", f"{err:.3f}", f"+{res['seconds']:.0f}"]
                )
                print(
                    f"# {n} prompts: {label}: held-out {err:.4f} (train {train:.4f}) {res['seconds']:.0f} s",
                    flush=True,
                )
    print()
    print(
        "| cal. prompts | samples | method | vel. rel. err (train) | vel. rel. err (held out) | time (s, CPU) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
