"""Distillation throughput (issue 13): the streamed engine's phases measured on CPU on a scaled
FLUX.1-dev, and the GPU-hours of FLUX.1-dev at the recommended steps projected from FLOPs.

Measured (``quant/teacher_cache.py`` + ``quant/distill_streamed.py``, the real engine, float32,
AdamW8bit, batch 1): a FLUX.1-dev with the real block count (19 double + 38 single) and hidden
256, 128 px (64 image + 32 text tokens):

* ``cache``  ``build_teacher_cache`` on 4 samples (one teacher forward per sample);
* ``block``  ``_block_phase``: 1 block step of every block (a step = one optimizer step of each
  of the 57 blocks; the time includes building each block and writing its state);
* ``e2e``    ``_e2e_phase``: 1 end-to-end step (packed forward, per-block recompute + backward
  + optimizer step, latents and optimizer state paged from the host); the time includes
  installing the packed copy of every block once.

Projected (no GPU needed): FLOPs of one forward of FLUX.1-dev counted on ``meta`` tensors
(``torch.utils.flop_counter``: every matmul from the layer shapes x tokens, and attention),
backward = 2 x forward; phases as the engine runs them (cache: one forward per sample; block
phase: forward + backward of every block per step; e2e: packed forward + per-block recompute +
backward per step) at an assumed MFU, plus the e2e paging traffic (latents + optimizer state to
the device and back every step) at an assumed host link speed. Every assumption is printed next
to the numbers and stored in the JSON.

Usage::

    nice -n 10 python bench/distill.py          # < 3 min on 2 cores
    python bench/distill.py --project-only      # the projection alone (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "distill-throughput-cpu.json"

# the scaled model the engine runs on CPU
SCALED = {"preset": "flux1-dev", "hidden": 256, "resolution": 128, "txt_len": 32}
CACHE_SAMPLES = 4
BLOCK_STEPS = 1
E2E_STEPS = 1

# the projection's assumptions (printed beside the numbers)
ASSUME = {
    "model": "flux1-dev",
    "resolution": 1024,
    "txt_len": 512,
    "steps": 600,  # DistillConfig.steps
    "block_steps": 200,  # DistillConfig.n_block_steps: a third of the steps
    "batch": 1,
    "calibration_samples": 64,
    "peak_tflops": 989.0,  # H100 SXM dense bf16
    "mfu": 0.35,
    "backward_over_forward": 2.0,
    "host_link_gbs": 25.0,  # host <-> device per GPU (PCIe 5 x16, effective)
    "paged_bytes_per_weight_each_way": 6.0,  # fp32 latent + AdamW8bit (2 B) per ternary weight
    "allreduce_busbw_gbs": 200.0,  # NCCL all-reduce bus bandwidth over NVLink (8x H100)
    "gradient_bytes_per_weight": 4.0,  # fp32 gradients summed over the ranks
}


# --------------------------------------------------------------------------- FLOPs


def linear_flops(tokens: int, in_features: int, out_features: int) -> int:
    """Forward FLOPs of one Linear on ``tokens`` rows (multiply + add = 2 per MAC)."""
    return 2 * tokens * in_features * out_features


def attention_flops(tokens: int, hidden: int) -> int:
    """Forward FLOPs of full self-attention over ``tokens`` (QK^T and AV, all heads)."""
    return 2 * 2 * tokens * tokens * hidden


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def forward_flops(config, n_img: int, n_txt: int) -> dict[str, int]:
    """Forward FLOPs of one sample, counted on ``meta`` tensors of the real shapes: one block of
    each kind (``double``/``single``), the embedders + final layer (``outside``) and the
    whole model (``total``)."""
    from ternaryflux.quant.distill_plan import _outside_model, meta_stream
    from ternaryflux.quant.teacher_cache import Stage, block_args, join_for, new_block

    st = meta_stream(config, n_img, n_txt, torch.float32)
    out: dict[str, int] = {}
    for kind in ("double", "single"):
        stage = Stage(f"{kind}_blocks.0", kind)
        with torch.device("meta"):
            block = new_block(config, stage, dtype=torch.float32)
        args = block_args(config, stage, join_for(stage, st))
        with torch.no_grad():
            out[kind] = _count(lambda block=block, args=args: block(*args))
    outside = _outside_model(config)
    h = config.hidden_size
    md = torch.device("meta")

    def outside_fwd():
        tok = {
            "img": torch.empty(1, n_img, config.in_channels, device=md),
            "txt": torch.empty(1, n_txt, config.context_in_dim, device=md),
        }
        outside.img_in(tok["img"])
        outside.txt_in(tok["txt"])
        outside.final_layer(torch.empty(1, n_img, h, device=md), st["vec"])

    with torch.no_grad():
        out["outside"] = _count(outside_fwd)  # the vector embedders are a few MFLOP: left out
    out["total"] = config.depth * out["double"] + config.depth_single_blocks * out["single"] + out["outside"]
    return out


def project(assume: dict | None = None) -> dict:
    """GPU-hours of distilling ``assume['model']`` (see :data:`ASSUME`) on 1 and 8 GPUs."""
    from ternaryflux.quant.distill_plan import PlanSettings, plan_distill, resolve_preset

    a = {**ASSUME, **(assume or {})}
    config, _ = resolve_preset(a["model"])
    n_img = (a["resolution"] // 16) ** 2
    f = forward_flops(config, n_img, a["txt_len"])
    blocks = f["total"] - f["outside"]
    plan = plan_distill(a["model"], settings=PlanSettings(resolution=a["resolution"], txt_len=a["txt_len"]))
    n_tern = plan.params_ternary
    rate = a["peak_tflops"] * 1e12 * a["mfu"]  # FLOP/s
    k = a["backward_over_forward"]
    per_sample = {  # FLOPs per sample of one step of each phase
        "cache": f["total"],
        "block": (1 + k) * blocks,
        "e2e": f["total"] + (1 + k) * blocks,  # packed forward, recompute + backward of every block
    }
    n_e2e = a["steps"] - a["block_steps"]
    page_s = 2 * a["paged_bytes_per_weight_each_way"] * n_tern / (a["host_link_gbs"] * 1e9)

    def allreduce_s(world: int) -> float:
        if world == 1:
            return 0.0
        return (
            2
            * (world - 1)
            / world
            * a["gradient_bytes_per_weight"]
            * n_tern
            / (a["allreduce_busbw_gbs"] * 1e9)
        )

    def run(world: int, batch: int) -> dict:
        per_rank = batch // world
        cache = a["calibration_samples"] * per_sample["cache"] / rate  # rank 0 builds the cache alone
        block_step = per_rank * per_sample["block"] / rate + allreduce_s(world)
        e2e_step = per_rank * per_sample["e2e"] / rate + page_s + allreduce_s(world)
        block = a["block_steps"] * block_step + page_s  # every block's state goes to the host once
        e2e = n_e2e * e2e_step
        wall = cache + block + e2e
        return {
            "gpus": world,
            "batch": batch,
            "samples_per_step_per_gpu": per_rank,
            "seconds": {"cache": cache, "block": block, "e2e": e2e},
            "e2e_step_seconds": {
                "compute": per_rank * per_sample["e2e"] / rate,
                "paging": page_s,
                "allreduce": allreduce_s(world),
            },
            "wall_hours": wall / 3600,
            "gpu_hours": wall * world / 3600,
        }

    return {
        "assumptions": a,
        "image_tokens": n_img,
        "ternary_weights": n_tern,
        "forward_tflop": {k2: v / 1e12 for k2, v in f.items()},
        "tflop_per_sample_step": {k2: v / 1e12 for k2, v in per_sample.items()},
        "runs": [run(1, a["batch"]), run(1, 8), run(8, 8)],
    }


def format_projection(p: dict) -> str:
    a = p["assumptions"]
    f = p["forward_tflop"]
    lines = [
        f"GPU-hours projection: {a['model']} at {a['resolution']}px ({p['image_tokens']} image + {a['txt_len']} text "
        f"tokens), {a['steps']} steps ({a['block_steps']} block + {a['steps'] - a['block_steps']} end-to-end), "
        f"{a['calibration_samples']} calibration samples",
        f"  forward of one sample: {f['total']:.1f} TFLOP (double block {f['double']:.3f}, single block "
        f"{f['single']:.3f}, embedders + final layer {f['outside']:.3f}; matmuls from the layer shapes + attention)",
        f"  assumed: H100 {a['peak_tflops']:.0f} TFLOP/s dense bf16 x MFU {a['mfu']:.0%} = "
        f"{a['peak_tflops'] * a['mfu']:.0f} TFLOP/s; backward = {a['backward_over_forward']:.0f} x forward",
        f"  assumed: e2e paging {a['paged_bytes_per_weight_each_way']:.0f} B/weight each way x "
        f"{p['ternary_weights'] / 1e9:.2f}B ternary weights at {a['host_link_gbs']:.0f} GB/s host<->device per GPU "
        "(not overlapped with compute), every e2e step and once in the block phase",
        f"  assumed: gradient all-reduce {a['gradient_bytes_per_weight']:.0f} B/weight at {a['allreduce_busbw_gbs']:.0f} "
        "GB/s bus bandwidth (ring) per step; the teacher cache is built by rank 0 alone (as the engine does)",
        f"  per sample and step: cache {p['tflop_per_sample_step']['cache']:.1f}, block "
        f"{p['tflop_per_sample_step']['block']:.1f}, e2e {p['tflop_per_sample_step']['e2e']:.1f} TFLOP",
        "",
        f"  {'GPUs':>4} {'batch':>5} {'cache h':>8} {'block h':>8} {'e2e h':>8} {'e2e step: compute':>18} "
        f"{'paging':>7} {'allred.':>7} {'wall h':>7} {'GPU-h':>7}",
    ]
    for r in p["runs"]:
        s, e = r["seconds"], r["e2e_step_seconds"]
        lines.append(
            f"  {r['gpus']:>4} {r['batch']:>5} {s['cache'] / 3600:8.3f} {s['block'] / 3600:8.3f} {s['e2e'] / 3600:8.3f} "
            f"{e['compute']:17.2f}s {e['paging']:6.2f}s {e['allreduce']:6.2f}s {r['wall_hours']:7.2f} {r['gpu_hours']:7.2f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- measured on CPU


def measure() -> dict:
    import distill_memory as dm
    from ternaryflux.quant import distill_streamed as ds
    from ternaryflux.quant.distill import DistillConfig
    from ternaryflux.quant.distributed import World
    from ternaryflux.quant.flux import limit_heap_growth
    from ternaryflux.quant.sources import open_source
    from ternaryflux.quant.teacher_cache import build_teacher_cache, stages

    limit_heap_growth()
    torch.manual_seed(0)
    preset, hidden, res, txt = (SCALED[k] for k in ("preset", "hidden", "resolution", "txt_len"))
    cfg = dm.scaled_config(preset, hidden)
    src = open_source(dm.teacher_file(preset, hidden))
    samples = dm.make_samples(cfg, res, txt, CACHE_SAMPLES)
    sd = dm.student_state_dict(src, cfg)
    n_blocks = len(stages(cfg))
    tmp = Path(tempfile.mkdtemp(prefix="distill-throughput-", dir=dm.WORK))
    rows = []
    try:
        t = time.perf_counter()
        cache = build_teacher_cache(
            src, samples, tmp / "cache", teacher_sha256="bench", dtype="float32", progress=False
        )
        rows.append(("cache", time.perf_counter() - t, CACHE_SAMPLES, CACHE_SAMPLES))
        dcfg = DistillConfig(
            steps=BLOCK_STEPS + E2E_STEPS, block_steps=BLOCK_STEPS, batch=1, save_every=10**6
        )
        world = World()
        state = ds.StateFolder(tmp / "state", world)
        state.start({"bench": "throughput"}, resume=False)
        run = ds.PhaseRun(dcfg, state, world=world)
        t = time.perf_counter()
        ds._block_phase(run, cfg, sd, src.get, cache, len(samples))
        rows.append(("block", time.perf_counter() - t, BLOCK_STEPS, BLOCK_STEPS * dcfg.batch))
        t = time.perf_counter()
        ds._e2e_phase(run, cfg, sd, src.get, samples, cache)
        rows.append(("e2e", time.perf_counter() - t, E2E_STEPS, E2E_STEPS * dcfg.batch))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    f = forward_flops(cfg, (res // 16) ** 2, txt)
    blocks = f["total"] - f["outside"]
    flop = {"cache": f["total"], "block": 3 * blocks, "e2e": f["total"] + 3 * blocks}
    return {
        "model": f"{preset} scaled (hidden {hidden}, {cfg.depth}+{cfg.depth_single_blocks} blocks)",
        "resolution": res,
        "tokens": (res // 16) ** 2 + txt,
        "blocks": n_blocks,
        "threads": torch.get_num_threads(),
        "phases": [
            {
                "phase": name,
                "seconds": sec,
                "steps": steps,
                "samples": n,
                "steps_per_s": steps / sec,
                "samples_per_s": n / sec,
                "gflop_per_s": n * flop[name] / sec / 1e9,
            }
            for name, sec, steps, n in rows
        ],
    }


def format_measured(m: dict) -> str:
    lines = [
        f"measured on CPU ({m['threads']} threads, float32, AdamW8bit, batch 1): {m['model']}, {m['resolution']}px "
        f"({m['tokens']} tokens)",
        f"  {'phase':<6} {'steps':>5} {'samples':>7} {'seconds':>8} {'steps/s':>8} {'samples/s':>9} {'GFLOP/s':>8}",
    ]
    for r in m["phases"]:
        lines.append(
            f"  {r['phase']:<6} {r['steps']:>5} {r['samples']:>7} {r['seconds']:8.1f} {r['steps_per_s']:8.3f} "
            f"{r['samples_per_s']:9.3f} {r['gflop_per_s']:8.2f}"
        )
    lines.append(
        "  (cache: a step = one sample's teacher forward; block: a step = one optimizer step of every block; "
        "e2e: one end-to-end step; times include each phase's per-block setup, state writes and paging)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--project-only", action="store_true", help="the GPU-hours projection alone, nothing written"
    )
    args = ap.parse_args(argv)
    proj = project()
    if args.project_only:
        print(format_projection(proj))
        return 0
    t0 = time.perf_counter()
    m = measure()
    print(format_measured(m))
    print()
    print(format_projection(proj))
    one, _, eight = proj["runs"]
    note = (
        f"FLUX.1-dev, {ASSUME['steps']} steps at {ASSUME['resolution']}px, batch 1: projected "
        f"{one['gpu_hours']:.2f} GPU-hours on one H100; 8 H100s (batch 8, one sample per GPU, same steps, "
        f"8x the samples) {eight['wall_hours']:.2f} h wall = {eight['gpu_hours']:.1f} GPU-hours "
        f"(one H100 at batch 8: {proj['runs'][1]['wall_hours']:.2f} h); assumptions above"
    )
    print()
    print(note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "cpus": os.cpu_count(),
                "measured": m,
                "projection": proj,
                "note": note,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
