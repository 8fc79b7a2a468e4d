"""End-to-end quality of the quantization methods on the structured tiny FLUX (outlier channels,
heavy tails): `calibrated` must beat `absmean` on the velocity error of held-out trajectories."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.flux_model import flux_from_state_dict
from ternaryflux.quant.algorithms import TernaryConfig, quantize_
from ternaryflux.quant.calibration import load_calibration
from ternaryflux.quant.evaluate import compare_models
from ternaryflux.quant.sources import open_source
from ternaryflux.quant.testing import write_structured_fixture
from ternaryflux.quantize_tool.cli import main
from torch import nn


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    fx = write_structured_fixture(d, cal_prompts=12, held_prompts=6)
    out = {}
    for m in ("absmean", "twn", "calibrated"):
        out[m] = d / f"{m}.safetensors"
        rc = main(
            [
                "quantize",
                str(fx["model"]),
                "--method",
                m,
                "--calibration",
                str(fx["cal"]),
                "-o",
                str(out[m]),
                "--no-progress",
            ]
        )
        assert rc == 0
    teacher = flux_from_state_dict(open_source(fx["model"]).state_dict(), dtype=torch.float32)
    held, _ = load_calibration([fx["held"]])
    errs = {}
    for m, p in out.items():
        student = flux_from_state_dict(load_checkpoint(p).state_dict, dtype=torch.float32)
        errs[m] = compare_models(teacher, student, held)
    return fx, out, errs


def test_calibrated_beats_absmean_end_to_end(quantized):
    _, _, errs = quantized
    v = {m: e["velocity_rel_err"] for m, e in errs.items()}
    print("held-out velocity rel. err:", v)
    assert v["twn"] < v["absmean"]
    assert v["calibrated"] < 0.8 * v["absmean"], v  # measured ~0.45 vs ~0.72
    # and block by block (local error with the teacher's inputs)
    for bc, ba in zip(errs["calibrated"]["blocks"], errs["absmean"]["blocks"]):
        assert bc["local_rel_err"] < ba["local_rel_err"]


def test_checkpoint_metadata_and_report(quantized):
    fx, out, _ = quantized
    ck = load_checkpoint(out["calibrated"])
    md = ck.metadata
    assert md.method == "calibrated" and md.variant == "dev" and md.packing == "2bit"
    assert md.source_sha256 == hashlib.sha256(fx["model"].read_bytes()).hexdigest()
    assert (
        md.calibration["num_samples"] == 32
        and md.calibration["num_samples_available"] == 36
        and md.method_params["candidates"]
    )
    assert len(ck.ternary_layers) == 2 * 10 + 4 * 3
    rep = json.loads(out["calibrated"].with_name("calibrated.report.json").read_text())
    assert len(rep["layers"]) == 32 and {"layer", "choice", "block_out_rel_err", "weight_rel_err"} <= set(
        rep["layers"][0]
    )
    assert (
        rep["output_bytes"] == out["calibrated"].stat().st_size
        and rep["peak_rss_bytes"] > 0
        and rep["seconds"] > 0
    )


def test_group_size_and_base3(tmp_path, quantized):
    fx, _, _ = quantized
    a, b = tmp_path / "g.safetensors", tmp_path / "g3.safetensors"
    assert (
        main(
            ["quantize", str(fx["model"]), "--group-size", "256", "-o", str(a), "--no-progress", "--no-hash"]
        )
        == 0
    )
    assert (
        main(
            [
                "quantize",
                str(fx["model"]),
                "--group-size",
                "256",
                "--at-rest",
                "base3",
                "-o",
                str(b),
                "--no-progress",
            ]
        )
        == 0
    )
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.metadata.group_size == 256 and ca.metadata.source_sha256 is None
    assert b.stat().st_size < a.stat().st_size
    assert ca.state_dict.keys() == cb.state_dict.keys()
    assert all(torch.equal(ca.state_dict[k], cb.state_dict[k]) for k in ca.state_dict)
    assert ca.state_dict["single_blocks.0.linear2.weight_scale"].shape == (256, 1280 // 256)


def test_generic_quantize_api_on_any_module():
    """quantize_ works on a plain nn.Module with an outlier input channel."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    gain = torch.ones(128)
    gain[:3] = 25.0
    xs = [torch.randn(64, 128) * gain for _ in range(8)]
    held = torch.randn(256, 128) * gain
    ref = net(held).detach()
    errs = {}
    for method in ("absmean", "calibrated"):
        m = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
        m.load_state_dict(net.state_dict())
        res = quantize_(m, TernaryConfig(method=method), calibration=[(x,) for x in xs])
        assert len(res) == 2
        with torch.no_grad():
            errs[method] = float((m(held) - ref).norm() / ref.norm())
    assert type(m[0]).__name__ == "TernaryLinear"
    assert errs["calibrated"] < 0.8 * errs["absmean"], errs
