"""Wall time of `ternaryflux quantize` vs --threads (the default is half the CPUs, 1..8).

    python bench/threads.py [--mb 200] [--threads 1,2,0] [--out bench/results/threads-HOST.json]

``0`` stands for torch's own default (one thread per core, what the tool used before --threads).
Runs absmean on a synthetic FLUX-shaped bf16 file of ~MB megabytes and `calibrated` on the
structured tiny FLUX (4 calibration prompts), each in a fresh process, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], threads: int) -> float:
    env = dict(os.environ)
    if threads:
        cmd = [*cmd, "--threads", str(threads)]
    else:  # torch's default: what happens without --threads and without OMP_NUM_THREADS
        env.pop("OMP_NUM_THREADS", None)
        cmd = [*cmd, "--threads", str(os.cpu_count() or 1)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--threads", default="1,2,0")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import torch
    from ternaryflux.core.fixtures import tiny_flux_config
    from ternaryflux.quant.testing import write_structured_fixture, write_synthetic_flux

    threads = [int(t) for t in a.threads.split(",")]
    res: dict = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
        "torch": torch.__version__,
        "runs": [],
    }
    tool = [sys.executable, "-m", "ternaryflux"]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # hidden 1024 -> ~ 12*1024^2*(2 double*... ) params; pick depth to reach ~MB
        cfg = tiny_flux_config(hidden=1024, depth=2, depth_single=2)
        per_block = 2 * 1024 * 1024 * 12
        depth = max(1, int(a.mb * 1e6 / 2 / per_block / 2))
        cfg = tiny_flux_config(hidden=1024, depth=depth, depth_single=depth)
        big = d / "big.safetensors"
        size = write_synthetic_flux(big, cfg)
        fx = write_structured_fixture(d / "fx", cal_prompts=4, held_prompts=2)
        for t in threads:
            for name, cmd in (
                (
                    "quantize absmean",
                    [*tool, "quantize", str(big), "-o", str(d / "o.safetensors"), "--no-hash"],
                ),
                (
                    "quantize calibrated (tiny)",
                    [
                        *tool,
                        "quantize",
                        str(fx["model"]),
                        "--method",
                        "calibrated",
                        "--calibration",
                        str(fx["cal"]),
                        "-o",
                        str(d / "c.safetensors"),
                        "--no-hash",
                    ],
                ),
            ):
                secs = _run([*cmd, "--overwrite", "--no-progress"], t)
                row = {
                    "case": name,
                    "threads": t or f"torch default ({os.cpu_count()})",
                    "seconds": round(secs, 2),
                }
                if "absmean" in name:
                    row["input_MB"] = round(size / 1e6, 1)
                res["runs"].append(row)
                print(row, flush=True)
    res["load_avg_after"] = os.getloadavg()
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
