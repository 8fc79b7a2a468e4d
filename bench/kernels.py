"""Benchmark the Triton ternary kernels against cuBLAS (``F.linear`` with a dense bf16 weight).

Usage (GPU):   python bench/kernels.py [--iters 100] [--warmup 10] [--out PATH]
Smoke (CPU):   python bench/kernels.py --smoke --out /tmp/kernels-smoke.json
Model (none):  python bench/kernels.py --model [--markdown]

For every FLUX.1-dev linear shape (N x K in 18432x3072, 9216x3072, 3072x3072, 12288x3072,
3072x12288, 21504x3072, 3072x15360) and every FLUX.2 [klein] one (hidden H = 3072 and 4096:
linear1 9H x H, linear2 H x 4H, MLP 6H x H and H x 3H, modulation 6H x H and 3H x H; ``--shapes
flux1`` restricts) and M in (1, 2, 256, 1024, 4096, 4608) it times, with CUDA
events around each call (after warm-up, which also runs Triton's autotuning), the median of
``--iters`` runs of

* ``cublas``  ``F.linear(x_bf16, W_bf16)`` (dense weight: the baseline),
* ``a16``     the W1.58A16 kernel (bf16 activations; M <= 16 takes the small-M kernel),
* ``a8``      the W1.58A8 path (per-token int8 quantization kernel + int8 ``tl.dot`` GEMM),

rotating through several copies of the inputs *and* weights so that each timed call reads cold
(non-L2-resident) data. It prints ms, TFLOP/s (2*M*N*K), GB/s (bytes of x + weight + scales +
y) and the speed ratio vs cuBLAS, writes everything to ``bench/results/kernels-<gpu>.json``
(``--out`` overrides) together with the **config the autotuner chose** for every kernel key
(``autotune`` in the JSON: tuning data from a lent GPU's minutes), and reports the peak memory of one FLUX double block + one single block
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

``--model`` needs no GPU (nor Triton): the speed model. For every shape above and each M it
computes the bytes moved and FLOPs of bf16 cuBLAS, W1.58A16 and W1.58A8 and the bound time on
H100 SXM, A100 SXM, RTX 4090 and RTX 3090 from published peak bandwidth, tensor-core rates, SM
counts and clocks (:data:`GPUS`, sources there): the roofline ``max(bytes / BW, FLOPs / peak)``
for all three, and for the ternary kernels also the *design* bound, which adds what the AOT
check measured in the compiled code (``bench/results/aot-<triton>.json``: SASS instructions per
K tile of the main loop of the config the pruned tables offer first; 4 warp-instructions per
clock per SM), the int -> float conversions of the A16 GEMM's unpack (16 a clock per SM) and
wave quantization of the kernel's grid. Ratios are vs cuBLAS at its
roofline (a real cuBLAS is slower, so they are conservative), beside the goals.
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
from collections import Counter
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


KLEIN_GROUP = 128
"""FLUX.2 rows run with one scale per 128 input weights (Bonsai Image's layout, the format's
FLUX.2 default); FLUX.1 rows with one scale per output channel."""


def klein_shapes(h: int) -> list[tuple[str, int, int]]:
    """FLUX.2 [klein] linears of hidden size ``h``: (name, N, K). klein 4B (H 3072): 27648x3072,
    3072x12288, 18432x3072, 3072x9216, 9216x3072, 3072x3072."""
    return [
        ("linear1 9HxH", 9 * h, h),  # single block: qkv + SwiGLU up
        ("linear2 Hx4H", h, 4 * h),  # single block: attn out + MLP down
        ("mlp up 6HxH", 6 * h, h),  # double block SwiGLU up (img_mlp.0); also the 6H double modulation
        ("mlp down Hx3H", h, 3 * h),  # img_mlp.2
        ("qkv 3HxH", 3 * h, h),  # double block qkv; also the 3H single modulation
        ("attn out HxH", h, h),  # double block attention proj
    ]


FLUX1_NAMED: list[tuple[str, int, int]] = [
    ("modulation", 18432, 3072),
    ("qkv / single mod", 9216, 3072),
    ("attn out", 3072, 3072),
    ("mlp up", 12288, 3072),
    ("mlp down", 3072, 12288),
    ("linear1", 21504, 3072),
    ("linear2", 3072, 15360),
]
MODEL_SHAPES: list[tuple[str, str, int, int, int]] = (
    [("FLUX.1", name, n, k, 0) for name, n, k in FLUX1_NAMED]
    + [("FLUX.2 H3072", name, n, k, KLEIN_GROUP) for name, n, k in klein_shapes(3072)]
    + [("FLUX.2 H4096", name, n, k, KLEIN_GROUP) for name, n, k in klein_shapes(4096)]
)
"""Every (model, layer, N, K, group size) of the speed model and the GPU benchmark (``--shapes
all``); FLUX.2 klein 4B (H 3072) right after FLUX.1, so a timed-out GPU run has it."""
ALL_SHAPES: list[tuple[int, int, int]] = list(dict.fromkeys((n, k, g) for _, _, n, k, g in MODEL_SHAPES))
FLUX_M: list[int] = [1, 2, 256, 1024, 4096, 4608]
SMOKE_SHAPES: list[tuple[int, int, int, int]] = [  # (M, N, K, group size)
    (2, 96, 256, 0),
    (40, 96, 384, 0),
    (2, 96, 256, KLEIN_GROUP),
    (40, 96, 384, KLEIN_GROUP),
]
GOALS = {
    ("a16", 4608): 0.9,
    ("a8", 4608): 1.4,
    ("a16", 1): 4.0,
    ("a8", 1): 4.0,
    ("a16", 2): 4.0,
    ("a8", 2): 4.0,
}

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
        "--model", action="store_true", help="speed model (no GPU): bytes, FLOPs, bound times, ratios"
    )
    p.add_argument("--markdown", action="store_true", help="with --model: the summary table in Markdown")
    p.add_argument(
        "--aot",
        type=Path,
        default=None,
        help="with --model: AOT results (default: newest bench/results/aot-*.json)",
    )
    p.add_argument(
        "--shapes",
        choices=["all", "flux1"],
        default="all",
        help="GPU run: FLUX.1 + FLUX.2 [klein] shapes (all) or FLUX.1 only",
    )
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
def random_weight(n: int, k: int, device: str, seed: int, group_size: int = 0):
    import torch
    from ternaryflux.core.ternary_weight import TernaryWeight

    g = torch.Generator(device="cpu").manual_seed(seed)
    codes = torch.randint(0, 3, (n, k), dtype=torch.uint8, generator=g)
    groups = 1 if group_size == 0 else k // group_size
    tw = TernaryWeight.from_codes(codes, torch.rand(n, groups, generator=g) * 0.02 + 0.005, group_size)
    dense = tw.dequantize(torch.float32).to(torch.bfloat16)
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
    m: int,
    n: int,
    k: int,
    device: str,
    iters: int,
    warmup: int,
    smoke: bool,
    graphs: bool = False,
    group_size: int = 0,
) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from ternaryflux.kernels import reference, triton_backend

    packed, scale, dense = random_weight(n, k, device, seed=n * 7 + k, group_size=group_size)
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
                "group_size": group_size,
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


def autotune_choices() -> list[dict]:
    """The config the autotuner chose for every key it tuned in this process (GEMM and small-M
    kernels): ``key`` is the autotune key (M bucket, N, K, group size[, split K]) plus the
    argument dtypes, ``config`` the winning block sizes, warps and stages."""
    from ternaryflux.kernels import triton_backend

    mods = triton_backend._kernels
    out = []
    for name, attr in (("gemm", "_ternary_gemm_kernel"), ("gemv", "_ternary_gemv_kernel")):
        tuner = getattr(mods.get(name), attr, None)
        for key, cfg in sorted(getattr(tuner, "cache", {}).items(), key=lambda kv: str(kv[0])):
            out.append(
                {
                    "kernel": name,
                    "key": [str(v) for v in key],
                    "config": {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
                }
            )
    return out


# ----------------------------------------------------------------------------- speed model
GPUS: dict[str, dict] = {
    # bw: bytes/s; bf16: dense tensor FLOP/s with fp32 accumulation (what cuBLAS bf16 GEMM and
    # the A16 kernel use); int8: dense int8 tensor OP/s; sms, clock: SM count and the boost
    # clock of the quoted peaks.
    "H100 SXM": {  # NVIDIA H100 Tensor Core GPU datasheet (SXM5; sparse figures halved) and
        # the Hopper whitepaper (132 SMs); clock = 989.4e12 / (132 SMs x 4096 FLOP/clk)
        "bw": 3.35e12,
        "bf16": 989.4e12,
        "int8": 1978.9e12,
        "sms": 132,
        "clock": 1.83e9,
        "smem_target": "sm_90",
    },
    "A100 SXM": {  # NVIDIA A100 datasheet (80 GB SXM4) and Ampere GA100 whitepaper (108 SMs, 1410 MHz)
        "bw": 2.039e12,
        "bf16": 312e12,
        "int8": 624e12,
        "sms": 108,
        "clock": 1.41e9,
        "smem_target": "sm_80",
    },
    "RTX 4090": {  # NVIDIA Ada Lovelace architecture whitepaper, appendix table (128 SMs, 2520 MHz)
        "bw": 1.008e12,
        "bf16": 165.2e12,
        "int8": 660.6e12,
        "sms": 128,
        "clock": 2.52e9,
        "smem_target": "sm_89",
    },
    "RTX 3090": {  # NVIDIA Ampere GA102 GPU architecture whitepaper (82 SMs, 1695 MHz)
        "bw": 936e9,
        "bf16": 71e12,
        "int8": 284e12,
        "sms": 82,
        "clock": 1.695e9,
        "smem_target": "sm_86",
    },
}
ISSUE_PER_SM_CLK = 4  # warp-instructions per clock per SM (4 schedulers), sm_80 .. sm_120
MODEL_M: list[int] = [1, 2, 256, 1024, 4096, 4608]


def model_bytes(m: int, n: int, k: int, method: str, groups: int = 1) -> float:
    """Compulsory DRAM bytes of one call (inputs read once, output written once)."""
    if method == "cublas":
        return m * k * 2 + n * k * 2 + m * n * 2
    w = n * k / 4 + n * groups * 4  # 2-bit codes + fp32 scales
    if method == "a16":
        return m * k * 2 + w + m * n * 2
    # a8: the quantizer reads x and writes int8 + row scales; the GEMM reads those
    return (m * k * 2 + m * k + m * 4) + (m * k + m * 4 + w + m * n * 2)


def _aot_lookup(
    aot: dict | None, target: str, kernel: str, kind: str, block_m: int, config, group: int = 0
) -> dict | None:
    if not aot:
        return None
    for r in aot["results"]:
        j = r["job"]
        if (j["target"], j["kernel"], j["kind"], j["group"], tuple(j["config"])) == (
            target,
            kernel,
            kind,
            group,
            tuple(config),
        ):
            if kernel != "gemv" or j["block_m"] == block_m:
                return r
    return None


def _allowed_configs(target: str, kernel: str, kind: str, m: int, group: int = 0) -> list[tuple[int, ...]]:
    """What the prune hooks keep (an A8 ``tl.dot`` K tile must lie inside one scale group)."""
    from ternaryflux.kernels import triton_common as tc

    if kernel == "gemm":
        cfgs = tc.allowed_gemm(target, kind, group > 0, tc.m_bucket(m))
        bk = 2
    else:
        cfgs = tc.allowed_gemv(target, kind, group > 0, tc.m_bucket(m))
        bk = 1
    dot = kernel == "gemm" or m > 4
    return [c for c in cfgs if not (kind == "int8" and group and dot and group % c[bk])]


def design_time(
    m: int, n: int, k: int, act: str, gpu: dict, aot: dict | None, group: int = 0
) -> tuple[float, str]:
    """Bound time of the ternary kernel as designed, for the best config the pruned tables
    allow on the card's target (what the autotuner would pick, by this model): see
    :func:`config_time`."""
    kind = "int8" if act == "a8" else "bf16"
    cfgs = _allowed_configs(gpu["smem_target"], "gemv" if m <= 16 else "gemm", kind, m, group)
    return min(config_time(m, n, k, act, gpu, aot, cfg, group) for cfg in cfgs)


def config_time(
    m: int,
    n: int,
    k: int,
    act: str,
    gpu: dict,
    aot: dict | None,
    cfg: tuple[int, ...],
    group: int = 0,
) -> tuple[float, str]:
    """Bound time of one config: roofline, wave quantization of its grid, the instruction-issue
    bound of its compiled main loop (AOT results) and the A16 GEMM's int -> float conversions."""
    from ternaryflux.kernels.triton_gemv import default_split_k

    target = gpu["smem_target"]
    kind = "int8" if act == "a8" else "bf16"
    peak = gpu["int8"] if act == "a8" else gpu["bf16"]
    issue_rate = gpu["sms"] * ISSUE_PER_SM_CLK * gpu["clock"]
    small = m <= 16
    if small:
        bn, bk, warps, _ = cfg
        split = default_split_k(n, k, gpu["sms"])
        ctas = -(-n // bn) * split
        tiles_per_cta = -(-k // bk) / split
        block_m = 16 if m > 4 else (1 if m == 1 else 4)
    else:
        bm, bn, bk, warps, _ = cfg
        ctas = -(-m // bm) * -(-n // bn)
        tiles_per_cta = -(-k // bk)
        block_m = 0
    waves = ctas / gpu["sms"]
    u_wave = waves / -(-ctas // gpu["sms"])  # last partial wave
    u_mem = min(1.0, waves)  # fewer CTAs than SMs cannot pull full bandwidth
    nbytes = model_bytes(m, n, k, act, groups=k // group if group else 1)
    t_mem = nbytes / (gpu["bw"] * u_mem)
    t_flop = 2.0 * m * n * k / (peak * u_wave) if not (small and m <= 4) else 0.0
    note = f"{'gemv' if small else 'gemm'} {'x'.join(map(str, cfg))}"
    t_issue = 0.0
    loop = None
    r = _aot_lookup(aot, target, "gemv" if small else "gemm", kind, block_m, cfg, group)
    if r and r.get("loop_instructions"):
        loop = r["loop_instructions"]
    if small and m == 2:  # compiled at M blocks 1 and 4: interpolate the per-row (FMA) part
        r1 = _aot_lookup(aot, target, "gemv", kind, 1, cfg, group)
        if loop and r1 and r1.get("loop_instructions"):
            loop = r1["loop_instructions"] + (loop - r1["loop_instructions"]) / 3
    if loop:
        warp_instr = ctas * tiles_per_cta * loop * warps
        t_issue = warp_instr / (issue_rate * u_wave)
        note += f", {loop:.0f} SASS/K-tile"
    t_conv = 0.0
    if act == "a16" and not small:
        # the A16 GEMM converts every unpacked code int -> float once per CTA and K tile (one
        # I2F per weight in the compiled loop), at 16 conversions / clock / SM (CUDA C++
        # Programming Guide, arithmetic instruction throughput, cc 8.x / 9.0)
        conversions = ctas * tiles_per_cta * bn * bk
        t_conv = conversions / (16 * gpu["sms"] * gpu["clock"] * u_wave)
    if act == "a8":  # the separate quantization pass: memory bound, one program per row
        qbytes = m * k * 2 + m * k + m * 4
        t_q = qbytes / (gpu["bw"] * min(1.0, m / gpu["sms"]))
    else:
        t_q = 0.0
    bound = max(t_mem, t_flop, t_issue, t_conv)
    which = {t_mem: "memory", t_flop: "tensor", t_issue: "issue", t_conv: "I2F"}[bound]
    return bound + t_q, f"{note}; {which}-bound"


def speed_model(aot: dict | None) -> list[dict]:
    rows = []
    for gpu_name, gpu in GPUS.items():
        for model, layer, n, k, group in MODEL_SHAPES:
            groups = k // group if group else 1
            for m in MODEL_M:
                flops = 2.0 * m * n * k
                t_cub = max(model_bytes(m, n, k, "cublas") / gpu["bw"], flops / gpu["bf16"])
                row = {
                    "gpu": gpu_name,
                    "model": model,
                    "layer": layer,
                    "M": m,
                    "N": n,
                    "K": k,
                    "group_size": group,
                    "flops": flops,
                    "cublas_bytes": model_bytes(m, n, k, "cublas"),
                    "cublas_us": t_cub * 1e6,
                }
                for act in ("a16", "a8"):
                    peak = gpu["int8"] if act == "a8" else gpu["bf16"]
                    nb = model_bytes(m, n, k, act, groups)
                    t_roof = max(nb / gpu["bw"], flops / peak)
                    t_des, why = design_time(m, n, k, act, gpu, aot, group)
                    goal = GOALS.get((act, m))
                    row.update(
                        {
                            f"{act}_bytes": nb,
                            f"{act}_roofline_us": t_roof * 1e6,
                            f"{act}_design_us": t_des * 1e6,
                            f"{act}_roofline_ratio": t_cub / t_roof,
                            f"{act}_design_ratio": t_cub / t_des,
                            f"{act}_design": why,
                            f"{act}_goal": goal,
                            f"{act}_goal_met": None if goal is None else t_cub / t_des >= goal,
                        }
                    )
                rows.append(row)
    return rows


def _latest_aot() -> Path | None:
    found = sorted((Path(__file__).resolve().parent / "results").glob("aot-*.json"))
    return found[-1] if found else None


def print_model(rows: list[dict], markdown: bool) -> None:
    if markdown:
        print(
            "| GPU | M | A16 roofline | A16 design | A8 roofline | A8 design | goal | design bound (typical) |"
        )
        print("|---|---:|---:|---:|---:|---:|---|---|")
        for gpu in GPUS:
            for m in MODEL_M:
                sel = [r for r in rows if r["gpu"] == gpu and r["M"] == m]

                def rng(key: str, sel: list[dict] = sel) -> str:
                    v = [r[key] for r in sel]
                    return f"{min(v):.2f}-{max(v):.2f}x"

                goal = " / ".join(
                    f"{a.upper()} >= {GOALS[(a, m)]}x" for a in ("a16", "a8") if (a, m) in GOALS
                )
                kinds = Counter(r["a16_design"].split("; ")[1] for r in sel)
                print(
                    f"| {gpu} | {m} | {rng('a16_roofline_ratio')} | {rng('a16_design_ratio')} | "
                    f"{rng('a8_roofline_ratio')} | {rng('a8_design_ratio')} | {goal} | "
                    f"A16 {kinds.most_common(1)[0][0]} |"
                )
        return
    hdr = (
        f"{'gpu':<9} {'model':<12} {'layer':<16} {'M':>5} {'N':>6} {'K':>6} {'cuBLAS us':>10} "
        f"{'A16 us':>8} {'A16 x':>6} {'A8 us':>8} {'A8 x':>6}  design (A16)"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        flags = ""
        for a in ("a16", "a8"):
            if r[f"{a}_goal"] is not None:
                flags += f" {a} {'ok' if r[f'{a}_goal_met'] else 'MISS'}(>={r[f'{a}_goal']}x)"
        print(
            f"{r['gpu']:<9} {r['model']:<12} {r['layer']:<16} {r['M']:>5} {r['N']:>6} {r['K']:>6} "
            f"{r['cublas_us']:>10.2f} {r['a16_design_us']:>8.2f} {r['a16_design_ratio']:>5.2f}x "
            f"{r['a8_design_us']:>8.2f} {r['a8_design_ratio']:>5.2f}x  {r['a16_design']}{flags}"
        )


def run_model(args: argparse.Namespace) -> int:
    aot_path = args.aot or _latest_aot()
    aot = json.loads(aot_path.read_text()) if aot_path and aot_path.exists() else None
    if aot is None:
        print(
            "no AOT results (bench/results/aot-*.json): the design bound omits the issue term",
            file=sys.stderr,
        )
    rows = speed_model(aot)
    print_model(rows, args.markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "gpus": GPUS,
                    "aot": str(aot_path) if aot else None,
                    "goals": {f"{a}@M={m}": g for (a, m), g in GOALS.items()},
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- main
def print_table(rows: list[dict]) -> None:
    hdr = f"{'M':>5} {'N':>6} {'K':>6} {'group':>5} {'method':>11} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'vs dense':>8}  goal"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        goal = "" if r["goal"] is None else f"{'ok' if r['goal_met'] else 'MISS'} (>= {r['goal']}x)"
        print(
            f"{r['M']:>5} {r['N']:>6} {r['K']:>6} {r.get('group_size', 0):>5} {r['method']:>11} {r['ms']:>9.4f} {r['tflops']:>8.2f} "
            f"{r['gbps']:>8.1f} {r['speedup_vs_dense']:>7.2f}x  {goal}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        return run_model(args)
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
        pool = [(n, k, 0) for n, k in FLUX_SHAPES] if args.shapes == "flux1" else ALL_SHAPES
        shapes = [(m, n, k, g) for n, k, g in pool for m in ms]
        iters, warmup = args.iters, args.warmup
    import triton

    out = args.out or Path(__file__).resolve().parent / "results" / f"kernels-{slug(gpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    memory = None

    def write() -> None:  # after every shape: a timeout keeps what was measured
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
            "autotune": autotune_choices(),
            "memory": memory,
        }
        out.write_text(json.dumps(result, indent=1))

    for m, n, k, g in shapes:
        rows.extend(
            bench_shape(m, n, k, device, iters, warmup, args.smoke, args.cuda_graph and not args.smoke, g)
        )
        print_table(rows[-3:])
        write()
        if not args.smoke:
            torch.cuda.empty_cache()
    print("\n== all shapes ==")
    print_table(rows)
    print("\n== autotuner choices ==")
    for c in autotune_choices():
        print(f"{c['kernel']:>5} {c['key']} -> {c['config']}")
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
    write()
    print(f"\nwrote {out}")
    if args.smoke:
        bad = [r for r in rows if r["rel_err_vs_reference"] is not None and r["rel_err_vs_reference"] > 3e-2]
        if bad:
            print(f"smoke: {len(bad)} results disagree with the reference", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
