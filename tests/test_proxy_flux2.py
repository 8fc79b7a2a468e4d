"""The trained FLUX.2-architecture proxy: settings, training/sampling on Flux2, and the committed
checkpoint (loads through the project's loader as a FLUX.2; its float samples beat noise on the
GenEval-style scorer). Under 30 s on one core."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from ternaryflux.core.flux2_model import Flux2
from ternaryflux.core.flux_layout import config_from_state_dict
from ternaryflux.proxy.encoding import from_latent, model_image, model_latent, to_latent
from ternaryflux.proxy.geneval import score_images
from ternaryflux.proxy.model import (
    COMMITTED_FLUX2,
    FLUX2_PROXY,
    ProxySettings,
    committed_key,
    ensure_proxy,
    init_model,
    proxy_path,
    sample,
    train_proxy,
)
from ternaryflux.proxy.quality import generate, load_model, score
from ternaryflux.proxy.scenes import heldout_scenes

TINY2 = ProxySettings(steps=3, batch=4, warmup=2, architecture="flux2")
ROOT = Path(__file__).resolve().parents[1]


def test_flux2_settings_and_latent():
    c = FLUX2_PROXY.flux_config()
    assert c.architecture == "flux2" and c.in_channels == 64 and c.hidden_size == 128 and c.num_heads == 1
    assert (c.depth, c.depth_single_blocks) == (ProxySettings().depth, ProxySettings().depth_single)
    # the FLUX.1 proxy's key is what it was before the architecture field existed
    assert ProxySettings().key() != FLUX2_PROXY.key() == ProxySettings(architecture="flux2").key()
    img = torch.rand(2, 3, 32, 32)
    lat = model_latent(img, "flux2")
    assert lat.shape == (2, 64, 8, 8)
    # the 2x2 fold of the FLUX.1 proxy latent: channel 4c + 2i + j holds pixel (2y+i, 2x+j) of channel c
    base = to_latent(img)
    assert torch.equal(lat[:, 4 * 3 + 2 * 1 + 0], base[:, 3, 1::2, 0::2])
    assert torch.allclose(model_image(lat, "flux2"), from_latent(base))


def test_flux2_proxy_trains_deterministically_and_samples(tmp_path):
    torch.set_num_threads(1)
    a, _ = train_proxy(TINY2)
    b, _ = train_proxy(TINY2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.endswith(".bias") for k in a)  # FLUX.2: no biases anywhere
    init = init_model(TINY2)
    assert isinstance(init, Flux2)
    assert not init.double_stream_modulation_img.lin.weight.detach().any()  # adaLN-Zero
    path = ensure_proxy(TINY2, root=tmp_path)
    from safetensors.torch import load_file

    assert config_from_state_dict(load_file(str(path))) == TINY2.flux_config()
    model = load_model(path)
    imgs, recs = sample(model, TINY2.encoder(), ["a red circle"], [1], steps=3, record=(0,))
    assert imgs.shape == (1, 3, 32, 32)
    assert len(recs) == 2 and recs[0].x.shape == (1, 64, 8, 8) and recs[0].y is None


def test_committed_flux2_proxy_loads_and_beats_noise():
    torch.set_num_threads(1)
    assert COMMITTED_FLUX2.exists(), (
        "proxy/data/proxy-flux2.safetensors is missing: bench/train_proxy.py --architecture flux2"
    )
    assert committed_key(COMMITTED_FLUX2) == FLUX2_PROXY.key(), "FLUX.2 proxy settings/code changed: retrain"
    assert proxy_path(FLUX2_PROXY) == COMMITTED_FLUX2
    model = load_model(COMMITTED_FLUX2)
    assert isinstance(model, Flux2) and model.config == FLUX2_PROXY.flux_config()
    scenes = heldout_scenes(4)
    seeds = [1000]
    got = score(scenes, seeds, generate(model, scenes, seeds, FLUX2_PROXY))
    rng = np.random.default_rng(0)
    noise = score_images(scenes, [rng.random((32, 32, 3), dtype=np.float32) for _ in scenes])
    assert got["overall"] >= noise["overall"] + 0.15, (got, noise)
    assert got["single_object"] >= 0.5, got


@pytest.mark.slow
def test_quick_policy_pipeline_on_the_flux2_proxy(tmp_path):
    """``bench/quality.py --architecture flux2 --policies ...`` (the policy table's command) at CI
    scale: each policy's checkpoint holds its layers, and the rows are distinct measurements."""
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(
        [
            "--quick",
            "--architecture",
            "flux2",
            "--threads",
            "1",
            "--methods",
            "float",
            "twn",
            "--policies",
            "blocks",
            "blocks+modulation",
            "--workdir",
            str(tmp_path),
            "--out",
            str(tmp_path / "q.json"),
            "--grid",
            str(tmp_path / "g.png"),
        ]  # fmt: skip
    )
    res = report["results"]
    assert list(res) == ["float", "twn [blocks]", "twn [blocks+modulation]"]
    from ternaryflux.core.checkpoint import load_checkpoint

    a = load_checkpoint(tmp_path / "twn-blocks.safetensors")
    b = load_checkpoint(tmp_path / "twn-blocks-modulation.safetensors")
    assert a.metadata.policy == "blocks" and b.metadata.policy == "blocks+modulation"
    assert set(b.ternary_layers) - set(a.ternary_layers) == {
        "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.lin",
        "single_stream_modulation.lin",
    }
    # ternary modulation adds error on top of the same block Linears
    assert 0 < res["twn [blocks]"]["velocity_rel_err"] < res["twn [blocks+modulation]"]["velocity_rel_err"]
