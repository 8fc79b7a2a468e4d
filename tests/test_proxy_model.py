"""Proxy training is deterministic and cached; sampling and trajectory calibration files work."""

from __future__ import annotations

import torch
from ternaryflux.core.calibration_data import read_calibration
from ternaryflux.core.flux_layout import config_from_state_dict
from ternaryflux.proxy.model import ProxySettings, ensure_proxy, init_model, sample, train_proxy
from ternaryflux.proxy.quality import image_grid, write_trajectory_calibration

TINY = ProxySettings(steps=3, batch=4, warmup=2)


def test_training_is_deterministic_and_learns_something():
    torch.set_num_threads(1)
    a, info = train_proxy(TINY)
    b, _ = train_proxy(TINY)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = init_model(TINY).state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a)
    assert info["final_loss_mean_last100"] > 0


def test_cache_is_reused_and_keyed_by_settings(tmp_path):
    torch.set_num_threads(1)
    p1 = ensure_proxy(TINY, root=tmp_path)
    mtime = p1.stat().st_mtime_ns
    assert ensure_proxy(TINY, root=tmp_path) == p1 and p1.stat().st_mtime_ns == mtime
    other = ProxySettings(steps=3, batch=4, warmup=2, seed=1)
    assert other.key() != TINY.key()
    # a FLUX file like any other: BFL keys, config inferred from shapes
    from safetensors.torch import load_file

    cfg = config_from_state_dict(load_file(str(p1)))
    assert cfg == TINY.flux_config()


def test_sampling_and_trajectory_calibration(tmp_path):
    torch.set_num_threads(1)
    model = init_model(TINY).eval()
    imgs, recs = sample(
        model, TINY.encoder(), ["a red circle", "two blue squares"], [1, 2], steps=4, record=(0, 2)
    )
    assert imgs.shape == (2, 3, 32, 32) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    assert len(recs) == 4  # 2 recorded steps x (conditional, unconditional)
    again, _ = sample(model, TINY.encoder(), ["a red circle", "two blue squares"], [1, 2], steps=4)
    assert torch.equal(imgs, again)
    grid = image_grid([imgs, imgs], scale=2)
    assert grid.shape == (2 * (64 + 2) + 2, 2 * (64 + 2) + 2, 3)
    path = ensure_proxy(TINY, root=tmp_path)
    cal = tmp_path / "cal.safetensors"
    n = write_trajectory_calibration(path, cal, n_captions=3, seed=0, settings=TINY, record=(0,))
    got = read_calibration(cal)
    assert len(got) == n == 2 and got[0].x.shape == (3, 16, 16, 16)
