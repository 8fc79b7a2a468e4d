"""The distill memory planner (quant/distill_plan.py): meta-traced counts equal real ones,
components scale as they should, presets match core/flux_layout, memory strings parse."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ternaryflux.core.flux_layout import FLUX2_VARIANTS, FluxConfig, ternary_layer_names
from ternaryflux.core.flux_model import model_class
from ternaryflux.quant import distill_plan as dp

TINY1 = FluxConfig(
    in_channels=16,
    out_channels=16,
    vec_in_dim=32,
    context_in_dim=48,
    hidden_size=256,
    num_heads=2,
    depth=2,
    depth_single_blocks=2,
)
TINY2 = replace(
    FLUX2_VARIANTS["klein-4b"],
    context_in_dim=48,
    hidden_size=256,
    num_heads=2,
    depth=1,
    depth_single_blocks=2,
)
F32 = dict(compute_dtype="float32", cache_dtype="float32", source_dtype="float32", device="cpu")


@pytest.mark.parametrize("config", [TINY1, TINY2], ids=["flux1", "flux2"])
@pytest.mark.parametrize("kind", ["double", "single"])
def test_meta_count_equals_real_count(config, kind):
    """Saved bytes, dense bytes and the simulated peak are the same on meta and on real CPU
    tensors of the same shapes."""
    kw = dict(policy=dp.architecture(config.architecture).default_policy, group_size=0, n_img=16, n_txt=8)
    meta = dp.count_block_step(config, kind, compute_dtype=torch.float32, device="meta", **kw)
    real = dp.count_block_step(config, kind, compute_dtype=torch.float32, device="cpu", **kw)
    assert (meta.saved, meta.dense, meta.stream, meta.params) == (
        real.saved,
        real.dense,
        real.stream,
        real.params,
    )
    assert meta.dense > 0 and meta.saved > 0


def test_saved_bytes_equal_direct_sum_on_a_real_model():
    """saved_tensor_bytes on a tiny real module = the sum of the storages autograd keeps (counted
    by hand: the input x and the hidden activation of tanh, the STE's u, q and dense w)."""
    from ternaryflux.quant.distill import STETernaryLinear

    torch.manual_seed(0)
    lin = STETernaryLinear(torch.randn(32, 16), torch.full((32, 1), 0.5), torch.zeros(32), 0)
    x = torch.randn(4, 16)

    def step():
        return torch.tanh(lin(x)).sum()

    n = dp.saved_tensor_bytes(step, exclude=[*lin.parameters(), x])
    # direct: walk the autograd graph and sum the distinct storages in its _saved_* attributes
    loss = step()
    skip = {t.untyped_storage()._cdata for t in (*lin.parameters(), x)}
    seen, todo, done = {}, [loss.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or id(fn) in done:
            continue
        done.add(id(fn))
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                v = getattr(fn, attr)
                for t in v if isinstance(v, tuple) else (v,):
                    if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in skip:
                        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        todo += [f for f, _ in fn.next_functions]
    assert n == sum(seen.values())
    assert n >= 2 * 32 * 16 * 4  # the STE keeps dense [N, K] tensors


def test_activation_components_scale_with_tokens_and_hidden():
    base = dict(policy="blocks+modulation", group_size=0, compute_dtype=torch.float32)
    a = dp.count_block_step(TINY1, "double", n_img=32, n_txt=8, **base)
    b = dp.count_block_step(TINY1, "double", n_img=64, n_txt=16, **base)
    b2 = dp.count_block_step(TINY1, "double", n_img=128, n_txt=32, **base)
    assert b2.saved - b.saved == pytest.approx(2 * (b.saved - a.saved), rel=0.02)  # affine in tokens
    assert b.dense == a.dense and b.params == a.params  # weights do not depend on tokens
    wide = replace(TINY1, hidden_size=512, num_heads=4)
    c = dp.count_block_step(wide, "double", n_img=32, n_txt=8, **base)
    assert c.params["trainable"] == pytest.approx(4 * a.params["trainable"], rel=0.01)
    assert c.dense == pytest.approx(4 * a.dense, rel=0.01)


def test_plan_world_size_and_optimizer():
    s = dp.PlanSettings(resolution=128, txt_len=16, **F32)
    p1 = dp.plan_distill(TINY1, settings=s)
    p4 = dp.plan_distill(TINY1, settings=replace(s, world_size=4, batch=4, shard="fsdp"))
    b1, b4 = p1.phases["block"].device, p4.phases["block"].device
    for k in ("trainable", "gradients", "optimizer"):
        assert b4[k] == pytest.approx(b1[k] / 4, abs=4)
    assert b4["unsharded"] == 2 * b1["trainable"]
    pa = dp.plan_distill(TINY1, settings=replace(s, optimizer="adamw"))
    assert pa.phases["block"].device["optimizer"] == 2 * pa.phases["block"].device["trainable"]  # 8 B vs 4 B
    assert p1.phases["block"].device["optimizer"] < p1.phases["block"].device["trainable"]


def test_optimizer_state_rule():
    assert dp.optimizer_state_bytes([100], "adamw8bit") == 800  # below bitsandbytes' 4096: 32-bit state
    n = 1_000_000
    assert dp.optimizer_state_bytes([n], "adamw8bit") == 2 * n + 8 * 3907 + 2048
    assert dp.optimizer_state_bytes([n], "adamw") == 8 * n


def test_cache_disk_bytes():
    s = dp.PlanSettings(resolution=256, txt_len=32, num_samples=10, **F32)
    p = dp.plan_distill(TINY1, settings=s)
    L = 256 + 32
    assert p.cache_files["boundaries"] == (TINY1.depth + TINY1.depth_single_blocks + 1) * L * 256 * 4
    assert p.cache_files["velocity"] == 256 * TINY1.out_channels * 4
    assert p.cache_disk_bytes == 10 * p.cache_bytes_per_sample


@pytest.mark.parametrize("name", list(dp.PRESETS))
def test_preset_param_counts_match_layout(name):
    config, _ = dp.PRESETS[name]
    with torch.device("meta"):
        model = model_class(config)(config)
    total, tern = dp._model_counts(config, dp.architecture(config.architecture).default_policy)
    assert total == sum(p.numel() for p in model.parameters())
    names = ternary_layer_names(config.depth, config.depth_single_blocks, config.architecture)
    assert tern == sum(model.get_submodule(n).weight.numel() for n in names)
    if name == "flux1-dev":
        assert total == 11_901_408_320


def test_image_tokens():
    assert dp.PlanSettings(resolution=1024).image_tokens == 4096
    assert dp.PlanSettings(resolution=512).image_tokens == 1024


@pytest.mark.parametrize(
    "text,value",
    [
        ("22GB", 22 * 10**9),
        ("22GiB", 22 * 2**30),
        ("24000MB", 24 * 10**9),
        ("1.5 TB", 1.5e12),
        ("80gb", 80 * 10**9),
    ],
)
def test_parse_memory(text, value):
    assert dp.parse_memory(text) == value


@pytest.mark.parametrize(
    "text,msg",
    [
        ("22", "no unit"),
        ("22XB", "unknown unit"),
        ("lots", "cannot read"),
        ("0GB", "positive"),
        ("-1GB", "cannot read"),
    ],
)
def test_parse_memory_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        dp.parse_memory(text)


def test_settings_errors():
    with pytest.raises(ValueError, match="multiple of the world size"):
        dp.plan_distill(TINY1, settings=dp.PlanSettings(world_size=2, batch=3))
    with pytest.raises(ValueError, match="unknown model"):
        dp.plan_distill("flux3")
    with pytest.raises(ValueError, match="resolution"):
        dp.PlanSettings(resolution=1000).check()


def test_format_plan_verdict():
    p = dp.plan_distill(TINY1, settings=dp.PlanSettings(resolution=128, txt_len=16))
    text = dp.format_plan(p, max_gpu_memory=dp.parse_memory("1MB"))
    assert "DOES NOT FIT" in text and "teacher cache on disk" in text and "block phase" in text
    assert "fits 1000.00 GB" in dp.format_plan(p, max_gpu_memory=10**12)
