"""The proxy's scenes, toy encoder, latent fold and GenEval-style scorer (no model needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ternaryflux.proxy.encoding import ToyTextEncoder, from_latent, to_latent
from ternaryflux.proxy.geneval import TASKS, check, detect, score_images, wrong_scene
from ternaryflux.proxy.model import ProxySettings, SceneStream
from ternaryflux.proxy.scenes import KINDS, heldout_captions, heldout_scenes, layout, render, render_scene


def _rendered(n_per_kind: int = 25, seed: int = 5):
    scenes = heldout_scenes(n_per_kind)
    rng = random.Random(seed)
    return scenes, [render_scene(s, rng) for s in scenes]


def test_ground_truth_scores_at_least_098():
    scenes, imgs = _rendered()
    s = score_images(scenes, imgs)
    assert set(TASKS) <= set(s)
    for t in (*TASKS, "overall"):
        assert s[t] >= 0.98, (t, s)


def test_wrong_captions_score_low():
    scenes, imgs = _rendered()
    wrong = [wrong_scene(s) for s in scenes]
    assert all(w.caption() != s.caption() for w, s in zip(wrong, scenes))
    s = score_images(wrong, imgs)
    assert s["overall"] <= 0.05, s
    # a caption of another kind's objects: shuffled pairing of images and captions
    rng = random.Random(0)
    perm = list(range(len(scenes)))
    rng.shuffle(perm)
    shuffled = score_images([scenes[i] for i in perm], imgs)
    assert shuffled["overall"] < 0.5, shuffled


def test_blank_and_noise_images_score_low():
    scenes, _ = _rendered(8)
    blank = score_images(scenes, [np.zeros((32, 32, 3), np.float32)] * len(scenes))
    assert blank["overall"] == 0.0
    rng = np.random.default_rng(0)
    noise = score_images(scenes, [rng.random((32, 32, 3), dtype=np.float32) for _ in scenes])
    assert noise["overall"] < 0.1, noise


@pytest.mark.parametrize("seed", range(3))
def test_detect_recovers_the_layout(seed):
    """Detections match the renderer's own object list (colour, shape, centre), also after mild
    blur and noise like a sampler leaves."""
    rng = random.Random(seed)
    for sc in heldout_scenes(6):
        placed = layout(sc, rng)
        img = render(placed)
        noisy = np.clip(img + np.random.default_rng(seed).normal(0, 0.08, img.shape), 0, 1)
        for im in (img, noisy):
            det = detect(im)
            assert len(det) == len(placed), (sc.caption(), det)
            for p in placed:
                cx, cy = p.center
                near = min(det, key=lambda d: (d.cx - cx) ** 2 + (d.cy - cy) ** 2)
                assert (near.color, near.shape) == (p.obj.color, p.obj.shape), (sc.caption(), near)
                tol = 1.0 + p.side / 5  # a triangle's centroid sits below its box centre
                assert abs(near.cx - cx) < tol and abs(near.cy - cy) < tol


def test_checks_are_specific():
    """Each task's check fails when exactly its attribute is wrong."""
    rng = random.Random(1)
    for sc in heldout_scenes(6):
        img = render_scene(sc, rng)
        ok = check(sc, detect(img))
        assert all(ok.values())
        bad = check(wrong_scene(sc), detect(img))
        assert not any(bad.values()), (sc.caption(), bad)


def test_heldout_captions_never_in_training_stream():
    held = heldout_captions()
    assert len(held) == 12 * len(KINDS)
    stream = SceneStream(ProxySettings(), held)
    seen = set()
    for step in range(40):
        _, caps = stream.batch(step)
        seen.update(caps)
    assert not (seen & held)
    # the stream is a pure function of (seed, step)
    a, ca = stream.batch(7)
    b, cb = SceneStream(ProxySettings(), held).batch(7)
    assert ca == cb and torch.equal(a, b)


def test_toy_encoder_is_deterministic_and_order_aware():
    e1, e2 = ToyTextEncoder(seed=0), ToyTextEncoder(seed=0)
    caps = ["a red circle left of a blue square", "a blue circle left of a red square", ""]
    c1, y1 = e1.encode(caps)
    c2, y2 = e2.encode(caps)
    assert torch.equal(c1, c2) and torch.equal(y1, y2)
    assert c1.shape == (3, 12, 64) and y1.shape == (3, 64)
    assert not torch.allclose(c1[0], c1[1])  # same words, other binding
    assert float(c1[2].abs().max()) == 0.0  # the empty caption is the unconditional input
    with pytest.raises(ValueError):
        e1.encode(["a purple circle"])


def test_latent_fold_round_trip():
    img = torch.rand(2, 3, 32, 32)
    lat = to_latent(img)
    assert lat.shape == (2, 16, 16, 16)
    assert torch.allclose(from_latent(lat), img, atol=1e-6)
    # pixel (0, 0)'s red value sits in channel 0 of latent position (0, 0)
    assert torch.isclose(lat[0, 0, 0, 0], img[0, 0, 0, 0] * 2 - 1)
