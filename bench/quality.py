"""GenEval-proxy quality of ternary FLUX methods on the trained proxy FLUX (CPU).

Every method goes through the real tool path: ``ternaryflux quantize`` / ``distill`` (called as
``ternaryflux.quantize_tool.cli.main([...])``) on the proxy's float safetensors file, then the
checkpoint is loaded with ``core.checkpoint.load_checkpoint`` and sampled (Euler + CFG) on the
held-out prompts with fixed seeds. Calibration = the float model's own sampling trajectories over
training-grammar captions (no images). Prints a table (GenEval-proxy overall and per task, % of
float, held-out velocity error, wall time) and writes ``bench/results/quality.json`` and the
image grid ``bench/results/quality-grid.png`` (rows: methods, columns: the same prompts/seeds).

Methods (``--methods``):
  float           the proxy itself
  absmean, twn    data-free
  calibrated      --method calibrated --block-inputs float (each block on the float model's inputs;
                  explicit since the tool's default became sequential)
  calibrated-seq  ``--block-inputs sequential``: each block calibrated on what the already-ternary
                  earlier blocks give it (target: the float block output)
  distill         ``ternaryflux distill`` from calibrated-seq (or calibrated), --distill-steps;
                  ``--distill-memory`` streamed (default, bounded: teacher cached on disk under the
                  work folder), resident (the unbounded reference; row ``distill-resident``) or both
                  (both rows from the same starting checkpoint; each row records the distill
                  report's wall time and the checkpoint's sha256, of the file and of its tensors)

    python bench/quality.py                 # full table, about 15-25 min on 2 shared cores
    python bench/quality.py --quick         # smaller sets (what the CI test runs, in-process)

``--architecture flux2`` runs the same pipeline on the trained FLUX.2 proxy
(``proxy/data/proxy-flux2.safetensors``); ``--policies blocks blocks+modulation`` quantizes every
method under each ternary policy (``quantize --ternary-layers``; rows ``method [policy]``):

    python bench/quality.py --architecture flux2 --methods float twn calibrated calibrated-seq \
        --policies blocks blocks+modulation --threads 1 --out bench/results/quality-flux2-policy.json \
        --grid bench/results/quality-flux2-policy-grid.png

Bounded (streamed) vs unbounded (resident) distill on the FLUX.1 proxy (docs/DISTILL.md):

    python bench/quality.py --methods float calibrated-seq distill --distill-memory both --seeds 4 \
        --threads 1 --out bench/results/quality-distill-memory.json \
        --grid bench/results/quality-distill-memory-grid.png
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

# keep bench/kernels.py from shadowing the `kernels` package bitsandbytes looks for
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from ternaryflux.proxy.geneval import TASKS  # noqa: E402
from ternaryflux.proxy.model import FLUX2_PROXY, ProxySettings, proxy_path  # noqa: E402
from ternaryflux.proxy.quality import (  # noqa: E402
    SamplerSettings,
    generate,
    image_grid,
    load_model,
    score,
    trajectory_samples,
    write_trajectory_calibration,
)
from ternaryflux.proxy.scenes import heldout_scenes  # noqa: E402
from ternaryflux.quant.evaluate import velocity_error  # noqa: E402
from ternaryflux.quantize_tool import cli  # noqa: E402

log = logging.getLogger("bench.quality")
RESULTS = Path(__file__).resolve().parent / "results"
ALL_METHODS = ("float", "absmean", "twn", "calibrated", "calibrated-seq", "distill")


def tool(argv: list[str]) -> None:
    """Run one ``ternaryflux`` command in-process (its table goes to the log at debug level)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(argv)
    log.debug("%s\n%s", " ".join(argv), buf.getvalue())
    if rc != 0:
        raise RuntimeError(f"ternaryflux {' '.join(argv)} failed ({rc}):\n{buf.getvalue()}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(path: Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes) without its metadata:
    the streamed and resident distill checkpoints differ in metadata only by ``memory``."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    h = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        e = header[name]
        h.update(json.dumps([name, e["dtype"], e["shape"]]).encode())
        h.update(data[e["data_offsets"][0] : e["data_offsets"][1]])
    return h.hexdigest()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", type=Path, default=None, help="float proxy file (default: committed/cached)")
    ap.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    ap.add_argument(
        "--architecture",
        choices=["flux", "flux2"],
        default="flux",
        help="which trained proxy: flux (FLUX.1, default) or flux2 (FLUX.2)",
    )
    ap.add_argument(
        "--policies",
        nargs="+",
        default=None,
        choices=["blocks", "blocks+modulation"],
        help="quantize each method under each ternary policy (default: the tool's default policy only)",
    )
    ap.add_argument("--per-kind", type=int, default=12, help="held-out prompts per prompt form")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    ap.add_argument("--cal-captions", type=int, default=64, help="calibration captions (training grammar)")
    ap.add_argument("--calib-samples", type=int, default=32, help="quantize --calib-samples")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--distill-from", default="calibrated-seq", choices=["calibrated", "calibrated-seq"])
    ap.add_argument(
        "--distill-memory",
        choices=["streamed", "resident", "both"],
        default="streamed",
        help="distill --memory: streamed (default; row distill), resident (row distill-resident) or both "
        "(both rows, from the same starting checkpoint)",
    )
    ap.add_argument("--steps", type=int, default=SamplerSettings.steps, help="Euler steps")
    ap.add_argument("--cfg", type=float, default=SamplerSettings.cfg, help="classifier-free guidance")
    ap.add_argument("--grid-cols", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="small sets (CI scale)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    ap.add_argument("--grid", type=Path, default=RESULTS / "quality-grid.png")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("ternaryflux", "ternaryflux.quant", "ternaryflux.quantize_tool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.per_kind, args.seeds, args.cal_captions, args.distill_steps = 4, 1, 16, 60
    settings = FLUX2_PROXY if args.architecture == "flux2" else ProxySettings()
    sampler = SamplerSettings(args.steps, args.cfg)
    src = args.proxy or proxy_path(settings)
    scenes = heldout_scenes(args.per_kind)
    seeds = list(range(1000, 1000 + args.seeds))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tf-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cal = work / "cal.safetensors"
    n = write_trajectory_calibration(src, cal, args.cal_captions, seed=7, settings=settings, sampler=sampler)
    float_model = load_model(src)
    held_caps = [s.caption() for s in scenes][:: max(1, len(scenes) // 16)]
    held = trajectory_samples(float_model, settings, held_caps, 99, sampler, record=(0, 5, 10, 15))
    log.info("calibration: %d samples (%d captions) in %.0f s", n, args.cal_captions, time.time() - t0)
    results: dict[str, dict] = {}
    grid_rows, names = [], []
    # row name -> (method, distill --memory): `distill` is streamed, `distill-resident` resident
    distill_rows = {"distill": "streamed", "distill-resident": "resident"}
    memories = ("streamed", "resident") if args.distill_memory == "both" else (args.distill_memory,)
    rows = []
    for m in args.methods:
        rows += [r for r, mem in distill_rows.items() if mem in memories] if m == "distill" else [m]
    runs = [(r, None) for r in rows]
    if args.policies:
        runs = [(r, p) for r in rows for p in ([None] if r == "float" else args.policies)]
    for name, policy in runs:
        t = time.time()
        m, memory = ("distill", distill_rows[name]) if name in distill_rows else (name, None)
        key = name if policy is None else f"{name} [{policy}]"
        suffix = "" if policy is None else "-" + policy.replace("+", "-")
        ck = work / f"{name}{suffix}.safetensors"
        common = ["--no-progress", "--threads", str(args.threads)]
        common += [] if policy is None else ["--ternary-layers", policy]
        note = ""
        extra: dict = {}
        if m == "float":
            ck = src
        elif m in ("absmean", "twn"):
            tool(["quantize", str(src), "-o", str(ck), "--method", m, "--no-hash", *common])
        elif m == "calibrated":
            tool(["quantize", str(src), "-o", str(ck), "--method", "calibrated", "--calibration", str(cal),
                  "--calib-samples", str(args.calib_samples), "--block-inputs", "float",
                  "--no-hash", *common])  # fmt: skip
            note = "ternaryflux quantize --block-inputs float"
        elif m == "calibrated-seq":
            tool(["quantize", str(src), "-o", str(ck), "--method", "calibrated", "--calibration", str(cal),
                  "--calib-samples", str(args.calib_samples), "--block-inputs", "sequential",
                  "--no-hash", *common])  # fmt: skip
            note = "ternaryflux quantize --block-inputs sequential"
        elif m == "distill":
            start = work / f"{args.distill_from}{suffix}.safetensors"
            if not start.exists():
                raise SystemExit(f"distill needs {args.distill_from} in --methods before it")
            cache = ["--cache-dir", str(work / "teacher-cache")] if memory == "streamed" else []
            tool(["distill", "--teacher", str(src), "--student", str(start), "--calibration", str(cal),
                  "--steps", str(args.distill_steps), "--lr", str(args.distill_lr), "-o", str(ck),
                  "--optimizer", "adamw", "--memory", memory, *cache, "--no-progress",
                  "--threads", str(args.threads)])  # fmt: skip
            note = f"from {args.distill_from}, {args.distill_steps} steps, lr {args.distill_lr}, --memory {memory}"
            rep = json.loads(ck.with_name(ck.name.removesuffix(".safetensors") + ".report.json").read_text())
            extra = {
                "distill": {
                    "memory": memory,
                    "start_sha256": sha256(start),
                    "seconds": rep["seconds"],
                    "seconds_per_phase": rep["seconds_per_phase"],
                    "velocity_rel_err_before": rep["velocity_rel_err_before"],
                    "velocity_rel_err_after": rep["velocity_rel_err_after"],
                    "eval_on": rep["eval_on"],
                    "peak_rss_bytes": rep["peak_rss_bytes"],
                    "optimizer": rep["optimizer"],
                }
            }
        t_make = time.time() - t
        model = load_model(ck)
        imgs = generate(model, scenes, seeds, settings, sampler)
        sc = score(scenes, seeds, imgs)
        verr = 0.0 if m == "float" else velocity_error(float_model, model, held)
        results[key] = {
            **sc,
            "velocity_rel_err": verr,
            "make_seconds": t_make,
            "total_seconds": time.time() - t,
            "note": note,
            "sha256": sha256(ck),
            "tensors_sha256": tensors_sha256(ck),
            **extra,
        }
        log.info("%s: overall %.3f, velocity err %.3f (%.0f s)", key, sc["overall"], verr, time.time() - t)
        idx = [i * len(seeds) for i in range(0, len(scenes), max(1, len(scenes) // args.grid_cols))]
        grid_rows.append(imgs[idx[: args.grid_cols]])
        names.append(key)
    fl = results.get("float", {}).get("overall")
    for r in results.values():
        r["pct_of_float"] = 100.0 * r["overall"] / fl if fl else None
    header = ["method", "overall", "% float", *TASKS, "vel. err", "time s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, r in results.items():
        pct = f"{r['pct_of_float']:.0f}%" if r["pct_of_float"] is not None else "-"
        cells = [m, f"{r['overall']:.3f}", pct, *(f"{r.get(t, float('nan')):.2f}" for t in TASKS)]
        cells += [f"{r['velocity_rel_err']:.3f}", f"{r['total_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    report = {
        "command": "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "proxy": str(src),
        "architecture": args.architecture,
        "policies": args.policies,
        "settings": settings.__dict__,
        "sampler": sampler.__dict__,
        "heldout": {"per_kind": args.per_kind, "seeds": seeds, "images": len(scenes) * len(seeds)},
        "calibration": {"captions": args.cal_captions, "samples": n, "calib_samples": args.calib_samples},
        "velocity_heldout_samples": len(held),
        "threads": args.threads,
        "wall_seconds": time.time() - t0,
        "grid_rows": names,
        "grid_captions": [scenes[i // len(seeds)].caption() for i in idx[: args.grid_cols]],
        "results": results,
        "table": table,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    if args.grid:
        from PIL import Image

        Image.fromarray(image_grid(grid_rows)).save(args.grid)
    return report


if __name__ == "__main__":
    main()
