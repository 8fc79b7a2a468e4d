"""Reduced GenEval-proxy pipeline on the trained proxy FLUX (the committed checkpoint), as CI runs it.

``bench/quality.py --quick`` on float / absmean / calibrated through the real tool path
(``ternaryflux quantize`` on the proxy's safetensors, sampling through ``load_checkpoint``). Fails
if the float model's score drops below the level recorded in ``bench/results/quality-quick.json``
(written by the same command) or if ``calibrated`` falls below ``absmean``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from ternaryflux.proxy.model import COMMITTED, ProxySettings, committed_key
from ternaryflux.proxy.quality import load_model

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "bench" / "results" / "quality-quick.json"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_proxy_matches_the_code():
    """The committed checkpoint was trained with the current settings and code version, and it
    loads as a FLUX through the project's loader (BFL keys, 16 latent channels)."""
    assert COMMITTED.exists(), "proxy/data/proxy-flux.safetensors is missing: run bench/train_proxy.py"
    assert committed_key() == ProxySettings().key(), "proxy settings/code changed: retrain and recommit"
    model = load_model(COMMITTED)
    assert model.config.in_channels == 64 and model.config.hidden_size == 128
    x = torch.randn(1, 16, 16, 16)
    ctx, y = ProxySettings().encoder().encode(["a red circle"])
    assert model.forward_latent(x, torch.tensor([0.5]), ctx, y).shape == x.shape


@pytest.mark.slow
def test_quick_quality_pipeline(tmp_path):
    recorded = json.loads(RECORDED.read_text())["results"]
    report = _bench().main(
        [
            "--quick",
            "--threads",
            "1",
            "--methods",
            "float",
            "absmean",
            "calibrated",
            "--workdir",
            str(tmp_path),
            "--out",
            str(tmp_path / "q.json"),
            "--grid",
            str(tmp_path / "grid.png"),
        ]
    )
    res = report["results"]
    assert res["float"]["overall"] >= recorded["float"]["overall"] - 0.05, (res["float"], recorded["float"])
    assert res["calibrated"]["overall"] >= res["absmean"]["overall"], res
    assert res["calibrated"]["velocity_rel_err"] < res["absmean"]["velocity_rel_err"], res
    assert (tmp_path / "grid.png").stat().st_size > 1000


@pytest.mark.slow
def test_quick_distill_memory_both(tmp_path):
    """``--distill-memory both`` (the bounded-vs-unbounded table's command) at CI scale: the
    streamed and the resident distill start from the same checkpoint and write the same tensors
    (their files differ only in the ``memory`` metadata), so they score the same."""
    report = _bench().main(
        [
            "--quick",
            "--threads",
            "1",
            "--methods",
            "calibrated-seq",
            "distill",
            "--distill-memory",
            "both",
            "--workdir",
            str(tmp_path),
            "--out",
            str(tmp_path / "q.json"),
            "--grid",
            str(tmp_path / "grid.png"),
        ]
    )
    res = report["results"]
    assert list(res) == ["calibrated-seq", "distill", "distill-resident"]
    s, r = res["distill"], res["distill-resident"]
    assert (s["distill"]["memory"], r["distill"]["memory"]) == ("streamed", "resident")
    assert s["distill"]["start_sha256"] == r["distill"]["start_sha256"] == res["calibrated-seq"]["sha256"]
    assert s["tensors_sha256"] == r["tensors_sha256"]
    assert s["overall"] == r["overall"] and s["velocity_rel_err"] == r["velocity_rel_err"]
    assert s["velocity_rel_err"] < res["calibrated-seq"]["velocity_rel_err"]
    # the streamed run's teacher cache went to the work folder, not ~/.cache
    assert any((tmp_path / "teacher-cache").iterdir())
