"""bench/distill.py's GPU-hours projection: FLOP counts against hand counts, and the arithmetic
of the phases (no timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from ternaryflux.core.flux_layout import FluxConfig

BENCH = Path(__file__).resolve().parents[1] / "bench" / "distill.py"


@pytest.fixture(scope="module")
def bd():
    spec = importlib.util.spec_from_file_location("bench_distill", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_linear_flops_hand_count(bd):
    lin = torch.nn.Linear(48, 80, device="meta")
    x = torch.empty(1, 7, 48, device="meta")
    assert bd._count(lambda: lin(x)) == bd.linear_flops(7, 48, 80) == 2 * 7 * 48 * 80


def test_block_flops_hand_count(bd):
    h, n_img, n_txt = 256, 16, 8
    cfg = FluxConfig(hidden_size=h, num_heads=2, depth=2, depth_single_blocks=3)
    f = bd.forward_flops(cfg, n_img, n_txt)
    L = n_img + n_txt
    lf = bd.linear_flops
    # per stream: modulation (one token, h -> 6h), qkv, proj, mlp in/out; joint attention
    double = sum(
        lf(1, h, 6 * h) + lf(n, h, 3 * h) + lf(n, h, h) + lf(n, h, 4 * h) + lf(n, 4 * h, h)
        for n in (n_img, n_txt)
    ) + bd.attention_flops(L, h)
    # modulation (h -> 3h), linear1 (h -> 3h + 4h), linear2 (h + 4h -> h), attention
    single = lf(1, h, 3 * h) + lf(L, h, 7 * h) + lf(L, 5 * h, h) + bd.attention_flops(L, h)
    assert f["double"] == double
    assert f["single"] == single
    assert f["total"] == 2 * double + 3 * single + f["outside"]


def test_projection_arithmetic(bd):
    p = bd.project()
    a = p["assumptions"]
    rate = a["peak_tflops"] * 1e12 * a["mfu"]
    one, one8, eight = p["runs"]
    tf = p["tflop_per_sample_step"]
    f = p["forward_tflop"]
    blocks = f["total"] - f["outside"]
    assert tf["block"] == pytest.approx(3 * blocks)
    assert tf["e2e"] == pytest.approx(f["total"] + 3 * blocks)
    page = 2 * a["paged_bytes_per_weight_each_way"] * p["ternary_weights"] / (a["host_link_gbs"] * 1e9)
    assert one["e2e_step_seconds"]["paging"] == pytest.approx(page)
    assert one["e2e_step_seconds"]["compute"] == pytest.approx(tf["e2e"] * 1e12 / rate)
    n_e2e = a["steps"] - a["block_steps"]
    assert one["seconds"]["e2e"] == pytest.approx(n_e2e * (tf["e2e"] * 1e12 / rate + page))
    # 8 GPUs at batch 8: each does one sample's compute, pages the same and all-reduces
    assert eight["e2e_step_seconds"]["compute"] == pytest.approx(one["e2e_step_seconds"]["compute"])
    assert one8["e2e_step_seconds"]["compute"] == pytest.approx(8 * one["e2e_step_seconds"]["compute"])
    assert eight["e2e_step_seconds"]["paging"] == pytest.approx(page)
    assert eight["e2e_step_seconds"]["allreduce"] > 0 == one["e2e_step_seconds"]["allreduce"]
    assert eight["gpu_hours"] == pytest.approx(8 * eight["wall_hours"])
    # FLUX.1-dev at 1024 px: ~12B params x 2 x 4608 tokens + attention
    assert 60 < f["total"] < 90
