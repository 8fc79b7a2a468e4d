"""Benchmark the Triton ternary kernels against cuBLAS (``F.linear`` with a dense bf16 weight).

Usage (GPU):   python bench/kernels.py [--iters 100] [--warmup 10] [--out PATH]
Smoke (CPU):   python bench/kernels.py --smoke --out /tmp/kernels-smoke.json

For every FLUX.1-dev linear shape (N x K in 18432x3072, 9216x3072, 3072x3072, 12288x3072,
3072x12288, 21504x3072, 3072x15360) and M in (1, 2, 256, 1024, 4096, 4608) it times, with CUDA
events around each call (after warm-up, which also runs Triton's autotuning), the median of
``--iters`` runs of

* ``cublas``  ``F.linear(x_bf16, W_bf16)`` (dense weight: the baseline),
* ``a16``     the W1.58A16 kernel (bf16 activations; M <= 16 takes the small-M kernel),
* ``a8``      the W1.58A8 path (per-token int8 quantization kernel + int8 ``tl.dot`` GEMM),

rotating through several copies of the inputs *and* weights so that each timed call reads cold
(non-L2-resident) data. It prints ms, TFLOP/s (2*M*N*K), GB/s (bytes of x + weight + scales +
y) and the speed ratio vs cuBLAS, writes everything to ``bench/results/kernels-<gpu>.json``
(``--out`` overrides) and reports the peak memory of one FLUX double block + one single block
of linears, ternary vs bf16, at M = 4096, plus the full-model weight arithmetic.

Goals (H100/H200-class GPUs, bf16, vs cuBLAS): A16 >= 0.9x at M=4608; A8 >= 1.4x at M=4608;
small-M >= 4x at M=1. The table marks each with "goal ok" / "goal MISS".

Timings are of eager calls by default (what ComfyUI sees: they include Python dispatch and
kernel-launch overhead, which matters at M=1); ``--cuda-graph`` times graph replays instead
(GPU time only). The JSON records which.

Without CUDA the script exits with status 2 and a message; ``--smoke`` instead runs two tiny
shapes through the Triton interpreter on CPU (``TRITON_INTERPRET=1``), checks them against the
PyTorch reference and writes the same JSON structure to ``--out``: it proves the script works
end to end, its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

FLUX_SHAPES: list[tuple[int, int]] = [  # (N, K) = (out_features, in_features)
    (18432, 3072),  # double-block adaLN modulation (img/txt)
    (9216, 3072),  # qkv (double), single-block modulation
    (3072, 3072),  # attention out-proj (double)
    (12288, 3072),  # MLP up (double)
    (3072, 12288),  # MLP down (double)
    (21504, 3072),  # single-block linear1 (qkv + MLP up)
    (3072, 15360),  # single-block linear2 (attn out + MLP down)
]
FLUX_M: list[int] = [1, 2, 256, 1024, 4096, 4608]
SMOKE_SHAPES: list[tuple[int, int, int]] = [(2, 96, 256), (40, 96, 384)]  # (M, N, K)
GOALS = {("a16", 4608): 0.9, ("a8", 4608): 1.4, ("a16", 1): 4.0, ("a8", 1): 4.0}

# one FLUX double block and one single block (hidden 3072): (N, K, count)
DOUBLE_BLOCK = [(18432, 3072, 2), (9216, 3072, 2), (3072, 3072, 2), (12288, 3072, 2), (3072, 12288, 2)]
SINGLE_BLOCK = [(9216, 3072, 1), (21504, 3072, 1), (3072, 15360, 1)]
N_DOUBLE, N_SINGLE = 19, 38

ROTATE_BYTES = 256 * 2**20  # touch at least this much per rotation: several times any L2


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--iters", type=int, default=100, help="timed runs per (shape, method); the median is reported"
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (includes autotuning)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/kernels-<gpu>.json)"
    )
    p.add_argument("--smoke", action="store_true", help="CPU: tiny shapes through the Triton interpreter")
    p.add_argument("--m", type=int, nargs="*", default=None, help="restrict M values")
    p.add_argument("--no-memory", action="store_true", help="skip the layer-stack peak-memory measurement")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="time CUDA-graph replays (GPU time only, no Python/launch overhead; default: eager calls)",
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- timing
def time_cuda(fns: list[Callable[[], object]], iters: int, warmup: int) -> list[float]:
    """Median-able list of per-call milliseconds; call i uses fns[i % len(fns)] (rotation)."""
    import torch

    for i in range(warmup):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fns[i % len(fns)]()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def time_cpu(fns: list[Callable[[], object]], iters: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fns[i % len(fns)]()
    out = []
    for i in range(iters):
        t = time.perf_counter()
        fns[i % len(fns)]()
        out.append((time.perf_counter() - t) * 1e3)
    return out


# ----------------------------------------------------------------------------- one shape
def random_weight(n: int, k: int, device: str, seed: int):
    import torch
    from ternaryflux.core.ternary_weight import TernaryWeight

    g = torch.Generator(device="cpu").manual_seed(seed)
    codes = torch.randint(0, 3, (n, k), dtype=torch.uint8, generator=g)
    tw = TernaryWeight.from_codes(codes, torch.rand(n, 1, generator=g) * 0.02 + 0.005)
    dense = ((codes.to(torch.float32) - 1) * tw.scale).to(torch.bfloat16)
    return tw.packed.to(device), tw.scale.to(device), dense.to(device)


def as_graphs(fns: list[Callable[[], object]], warmup: int) -> list[Callable[[], object]]:
    """Capture each callable in a CUDA graph (after eager warm-up, which runs the autotuner)."""
    import torch

    for f in fns:
        for _ in range(max(1, warmup)):
            f()
    torch.cuda.synchronize()
    graphs = []
    for f in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            f()
        graphs.append(g)
    return [g.replay for g in graphs]


def bench_shape(
    m: int, n: int, k: int, device: str, iters: int, warmup: int, smoke: bool, graphs: bool = False
) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from ternaryflux.kernels import reference, triton_backend

    packed, scale, dense = random_weight(n, k, device, seed=n * 7 + k)
    x_dtype = torch.bfloat16
    set_bytes = m * k * 2 + n * k * 2 + m * n * 2
    copies = 1 if smoke else max(2, min(16, -(-ROTATE_BYTES // set_bytes)))
    xs = [torch.randn(m, k, device=device, dtype=x_dtype) for _ in range(copies)]
    denses = [dense] + [dense.clone() for _ in range(copies - 1)]
    packs = [packed] + [packed.clone() for _ in range(copies - 1)]
    scales = [scale] + [scale.clone() for _ in range(copies - 1)]

    # correctness first (one call each), against the PyTorch reference
    y16 = triton_backend.run(xs[0], packed, scale, k, None, "a16")
    y8 = triton_backend.run(xs[0], packed, scale, k, None, "a8")
    ref16 = reference.ternary_linear_a16(xs[0].float(), packed, scale, k)
    denom = ref16.abs().max().clamp_min(1e-30)
    err16 = ((y16.float() - ref16).abs().max() / denom).item()
    err8 = ((y8.float() - ref16).abs().max() / denom).item()

    timer = time_cpu if smoke else time_cuda
    methods: dict[str, list[Callable[[], object]]] = {
        "cublas" if not smoke else "torch_dense": [
            (lambda i=i: F.linear(xs[i], denses[i])) for i in range(copies)
        ],
        "a16": [
            (lambda i=i: triton_backend.run(xs[i], packs[i], scales[i], k, None, "a16"))
            for i in range(copies)
        ],
        "a8": [
            (lambda i=i: triton_backend.run(xs[i], packs[i], scales[i], k, None, "a8")) for i in range(copies)
        ],
    }
    rows = []
    base_ms = None
    flops = 2.0 * m * n * k
    for name, fns in methods.items():
        if graphs:
            fns = as_graphs(fns, warmup)
        ms = statistics.median(timer(fns, iters, warmup))
        if name in ("cublas", "torch_dense"):
            base_ms = ms
            nbytes = m * k * 2 + n * k * 2 + m * n * 2
        else:
            nbytes = m * k * 2 + packed.numel() + scale.numel() * 4 + m * n * 2
            if name == "a8":
                nbytes += m * k + m * 4  # int8 copy of x written + read, row scales
        ratio = base_ms / ms if base_ms else float("nan")
        goal = GOALS.get((name, m))
        rows.append(
            {
                "M": m,
                "N": n,
                "K": k,
                "method": name,
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "gbps": nbytes / ms / 1e6,
                "speedup_vs_dense": ratio,
                "goal": goal,
                "goal_met": None if goal is None else bool(ratio >= goal),
                "rel_err_vs_reference": {"a16": err16, "a8": err8}.get(name),
            }
        )
    return rows


# ----------------------------------------------------------------------------- memory
def layer_stack_memory(device: str, m: int = 4096) -> dict:
    """Peak CUDA memory of one double + one single block of linears, ternary vs bf16."""
    import torch
    import torch.nn.functional as F
    from ternaryflux.kernels import triton_backend

    layers = [(n, k) for n, k, c in DOUBLE_BLOCK + SINGLE_BLOCK for _ in range(c)]
    out: dict[str, dict] = {}
    for kind in ("bf16", "ternary"):
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        if kind == "bf16":
            weights = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for n, k in layers]
        else:
            weights = [
                (
                    torch.randint(0, 256, (n, k // 4), device=device, dtype=torch.uint8),
                    torch.rand(n, 1, device=device),
                )
                for n, k in layers
            ]
        torch.cuda.synchronize()
        w_bytes = torch.cuda.memory_allocated() - base
        with torch.no_grad():
            for (_n, k), w in zip(layers, weights):
                x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
                if kind == "bf16":
                    y = F.linear(x, w)
                else:
                    y = triton_backend.run(x, w[0], w[1], k, None, "a16")
                del x, y
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        out[kind] = {"weights_mib": w_bytes / 2**20, "peak_mib": peak / 2**20}
        del weights
    per_double = sum(n * k * c for n, k, c in DOUBLE_BLOCK)
    per_single = sum(n * k * c for n, k, c in SINGLE_BLOCK)
    params = N_DOUBLE * per_double + N_SINGLE * per_single
    out["full_model_block_linears"] = {
        "params": params,
        "bf16_gib": params * 2 / 2**30,
        "ternary_2bit_gib": params / 4 / 2**30,
    }
    out["M"] = m
    return out


# ----------------------------------------------------------------------------- main
def print_table(rows: list[dict]) -> None:
    hdr = f"{'M':>5} {'N':>6} {'K':>6} {'method':>11} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'vs dense':>8}  goal"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        goal = "" if r["goal"] is None else f"{'ok' if r['goal_met'] else 'MISS'} (>= {r['goal']}x)"
        print(
            f"{r['M']:>5} {r['N']:>6} {r['K']:>6} {r['method']:>11} {r['ms']:>9.4f} {r['tflops']:>8.2f} "
            f"{r['gbps']:>8.1f} {r['speedup_vs_dense']:>7.2f}x  {goal}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
        if args.out is None:
            print("--smoke needs --out PATH (smoke timings must not overwrite GPU results)", file=sys.stderr)
            return 2
    import torch
    from ternaryflux.kernels.triton_common import triton_usable

    if not triton_usable():
        print(
            "bench/kernels.py needs Triton >= 3.1 (pip install triton, or the one your CUDA torch pins)",
            file=sys.stderr,
        )
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print(
            "No CUDA device: this benchmark times GPU kernels against cuBLAS and needs an NVIDIA GPU.\n"
            "Run `python bench/kernels.py --smoke --out /tmp/kernels-smoke.json` to check the script on CPU.",
            file=sys.stderr,
        )
        return 2

    device = "cpu" if args.smoke else "cuda"
    gpu = "cpu-interpreter" if args.smoke else torch.cuda.get_device_name()
    if args.smoke:
        shapes = SMOKE_SHAPES
        iters, warmup = min(args.iters, 3), 1
    else:
        ms = args.m or FLUX_M
        shapes = [(m, n, k) for n, k in FLUX_SHAPES for m in ms]
        iters, warmup = args.iters, args.warmup
    rows: list[dict] = []
    for m, n, k in shapes:
        rows.extend(
            bench_shape(m, n, k, device, iters, warmup, args.smoke, args.cuda_graph and not args.smoke)
        )
        print_table(rows[-3:])
        if not args.smoke:
            torch.cuda.empty_cache()
    print("\n== all shapes ==")
    print_table(rows)
    memory = None
    if not args.smoke and not args.no_memory:
        memory = layer_stack_memory(device)
        print("\n== one double + one single block of linears, M = 4096 ==")
        for kind in ("bf16", "ternary"):
            print(
                f"{kind:>8}: weights {memory[kind]['weights_mib']:9.1f} MiB, peak {memory[kind]['peak_mib']:9.1f} MiB"
            )
        fm = memory["full_model_block_linears"]
        print(
            f"all {N_DOUBLE}+{N_SINGLE} blocks: bf16 {fm['bf16_gib']:.2f} GiB vs ternary {fm['ternary_2bit_gib']:.2f} GiB"
        )

    import triton

    result = {
        "device": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "iters": iters,
        "warmup": warmup,
        "smoke": args.smoke,
        "timing": "cuda-graph replay"
        if args.cuda_graph and not args.smoke
        else "eager calls (incl. launch overhead)",
        "goals": {f"{a}@M={m}": g for (a, m), g in GOALS.items()},
        "rows": rows,
        "memory": memory,
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"kernels-{slug(gpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    if args.smoke:
        bad = [r for r in rows if r["rel_err_vs_reference"] is not None and r["rel_err_vs_reference"] > 3e-2]
        if bad:
            print(f"smoke: {len(bad)} results disagree with the reference", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
