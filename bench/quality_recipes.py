"""Recipe variants of ``ternaryflux quantize --method calibrated`` (and ``distill``) on the trained
proxy FLUX: held-out velocity error and GenEval-proxy score for each, through the CLI.

    python bench/quality_recipes.py [--variants NAME ...] [--seeds 1]

Variants are CLI flag sets (block inputs, bias correction, candidate set) and distill settings
(steps, lr) on top of the sequential calibrated checkpoint. Writes
``bench/results/quality-recipes.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from ternaryflux.proxy.model import ProxySettings, proxy_path  # noqa: E402
from ternaryflux.proxy.quality import (  # noqa: E402
    SamplerSettings,
    generate,
    load_model,
    score,
    trajectory_samples,
    write_trajectory_calibration,
)
from ternaryflux.proxy.scenes import heldout_scenes  # noqa: E402

log = logging.getLogger("bench.quality_recipes")
HERE = Path(__file__).resolve().parent

CAL = ["--method", "calibrated", "--calib-samples", "32"]
VARIANTS: dict[str, list[str]] = {
    "float inputs (default)": [*CAL, "--block-inputs", "float"],
    "sequential": [*CAL, "--block-inputs", "sequential"],
    "sequential, bias corr. off": [*CAL, "--block-inputs", "sequential", "--bias-correction", "off"],
    "sequential, bias corr. on": [*CAL, "--block-inputs", "sequential", "--bias-correction", "on"],
    "sequential, no gptq": [*CAL, "--block-inputs", "sequential", "--candidates", "twn,aw_sqrt"],
    "sequential, all candidates": [
        *CAL,
        "--block-inputs",
        "sequential",
        "--candidates",
        "absmean,twn,twn_grid,aw_sqrt,aw,gptq",
    ],
    "sequential, 80 samples": [
        "--method",
        "calibrated",
        "--calib-samples",
        "80",
        "--block-inputs",
        "sequential",
    ],
}
DISTILL = {
    "distill 300, lr 1e-4 (default)": ["--steps", "300", "--lr", "1e-4"],
    "distill 300, lr 3e-4": ["--steps", "300", "--lr", "3e-4"],
    "distill 600, lr 1e-4": ["--steps", "600", "--lr", "1e-4"],
    "distill 300, lr 1e-4, all end-to-end": ["--steps", "300", "--lr", "1e-4", "--block-steps", "0"],
}


def _bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", HERE / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--distill", nargs="*", default=list(DISTILL), choices=list(DISTILL))
    ap.add_argument("--per-kind", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quality-recipes.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ternaryflux").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    q = _bench_quality()
    settings, sampler = ProxySettings(), SamplerSettings()
    src = proxy_path(settings)
    work = Path(tempfile.mkdtemp(prefix="tf-recipes-"))
    cal = work / "cal.safetensors"
    write_trajectory_calibration(src, cal, 64, seed=7, settings=settings, sampler=sampler)
    fm = load_model(src)
    scenes = heldout_scenes(args.per_kind)
    seeds = list(range(1000, 1000 + args.seeds))
    held_caps = [s.caption() for s in scenes][:: max(1, len(scenes) // 16)]
    held = trajectory_samples(fm, settings, held_caps, 99, sampler, record=(0, 5, 10, 15))
    from ternaryflux.quant.evaluate import velocity_error

    def measure(ck: Path, t: float) -> dict:
        m = load_model(ck)
        s = score(scenes, seeds, generate(m, scenes, seeds, settings, sampler))
        return {**s, "velocity_rel_err": velocity_error(fm, m, held), "make_seconds": t}

    results = {"float": {**score(scenes, seeds, generate(fm, scenes, seeds, settings, sampler))}}
    for v in args.variants:
        ck = work / f"v{len(results)}.safetensors"
        t = time.time()
        q.tool(["quantize", str(src), "-o", str(ck), "--calibration", str(cal), "--no-hash", "--no-progress"]
               + VARIANTS[v])  # fmt: skip
        results[v] = {**measure(ck, time.time() - t), "flags": VARIANTS[v]}
        log.info("%s: %s", v, results[v])
    seq = work / "seq.safetensors"
    if args.distill:
        q.tool(["quantize", str(src), "-o", str(seq), "--calibration", str(cal), "--no-hash", "--no-progress"]
               + VARIANTS["sequential"])  # fmt: skip
    for d in args.distill:
        ck = work / f"d{len(results)}.safetensors"
        t = time.time()
        q.tool(["distill", "--teacher", str(src), "--student", str(seq), "--calibration", str(cal), "-o", str(ck),
                "--optimizer", "adamw", "--no-progress", *DISTILL[d]])  # fmt: skip
        results["sequential + " + d] = {**measure(ck, time.time() - t), "flags": DISTILL[d]}
        log.info("%s: %s", d, results["sequential + " + d])
    fl = results["float"]["overall"]
    lines = [
        "| variant | GenEval-proxy overall | % of float | velocity rel. err | time s |",
        "|---|---|---|---|---|",
    ]
    for v, r in results.items():
        ve = r.get("velocity_rel_err", 0.0)
        lines.append(
            f"| {v} | {r['overall']:.3f} | {100 * r['overall'] / fl:.0f}% | {ve:.4f} | {r.get('make_seconds', 0):.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    report = {
        "command": "python bench/quality_recipes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "images": len(scenes) * len(seeds),
        "velocity_heldout_samples": len(held),
        "results": results,
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
