"""Benchmark of streaming ``absmean`` quantization on CPU: input MB/s and peak RSS.

Generates a FLUX-shaped bf16 BFL checkpoint (hidden 3072 like FLUX.1-dev; default 2 double + 4
single blocks, ~2.6 GB) in a temp folder, quantizes it in a fresh subprocess (peak RSS from VmHWM,
the quantizer's alone), prints a table and writes ``bench/results/quantize-cpu-<host>.json``.
Not a test.

    python bench/quantize.py [--depth 2 --depth-single 4 --hidden 3072] [--keep DIR]

Goals (issue 5): >= 200 MB/s of input on 2 cores; peak RSS <= 2 GB + one block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, psutil, torch
from ternaryflux.quant.sources import open_source
from ternaryflux.quant.flux import peak_rss_bytes, quantize_flux
from ternaryflux.quant.algorithms import TernaryConfig
src_path, out, hash_ = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
base = psutil.Process().memory_info().rss
src = open_source(src_path)
t = time.perf_counter()
rep = quantize_flux(src, out, TernaryConfig(method="absmean"), device="cpu", hash_source=hash_, progress=False)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "baseline_rss": base, "peak_rss": peak_rss_bytes(),
                  "input_bytes": rep["input_bytes"], "output_bytes": rep["output_bytes"], "threads": torch.get_num_threads()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--depth-single", type=int, default=4)
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="folder for the generated files (default: a temp folder, removed)",
    )
    args = ap.parse_args()

    import torch
    from ternaryflux.core.flux_layout import FluxConfig
    from ternaryflux.core.flux_model import Flux
    from ternaryflux.quant.testing import write_synthetic_flux
    from ternaryflux.quantize_tool.report import format_table, human_bytes

    cfg = FluxConfig(
        hidden_size=args.hidden,
        num_heads=args.hidden // 128,
        depth=args.depth,
        depth_single_blocks=args.depth_single,
    )
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tf-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "synthetic-flux-bf16.safetensors"
    t = time.perf_counter()
    size = write_synthetic_flux(src, cfg)
    gen_s = time.perf_counter() - t
    with torch.device("meta"):
        m = Flux(cfg)
    block_bytes_f32 = (
        max(sum(p.numel() for p in b.parameters()) for b in [*m.double_blocks, *m.single_blocks]) * 4
    )
    runs = {}
    for label, hash_ in (("absmean", "0"), ("absmean + sha256", "1")):
        out = folder / f"out-{hash_}.safetensors"
        r = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(out), hash_],
            capture_output=True,
            text=True,
            check=True,
        )
        runs[label] = json.loads(r.stdout.strip().splitlines()[-1])
        out.unlink()
    rows = []
    for label, r in runs.items():
        rows.append(
            [
                label,
                f"{r['input_bytes'] / 1e6 / r['seconds']:.0f}",
                f"{r['seconds']:.1f}",
                human_bytes(r["peak_rss"]),
                human_bytes(r["peak_rss"] - r["baseline_rss"]),
            ]
        )
    host = socket.gethostname().split(".")[0]
    print(
        f"synthetic FLUX hidden {args.hidden}, {args.depth}+{args.depth_single} blocks: {human_bytes(size)} bf16 (generated in {gen_s:.0f} s); "
        f"largest block in fp32: {human_bytes(block_bytes_f32)}; {os.cpu_count()} CPUs, torch threads {runs['absmean']['threads']}"
    )
    print(format_table(["run", "MB/s (input)", "seconds", "peak RSS", "peak - baseline"], rows))
    res = {
        "host": host,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "model": {
            "hidden": args.hidden,
            "depth": args.depth,
            "depth_single": args.depth_single,
            "bytes": size,
            "dtype": "bf16",
        },
        "largest_block_fp32_bytes": block_bytes_f32,
        "runs": runs,
        "goals": {"MB_per_s": 200, "peak_rss_bytes": 2 * 1024**3 + block_bytes_f32},
    }
    out = Path(__file__).parent / "results" / f"quantize-cpu-{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    if args.keep is None:
        src.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
