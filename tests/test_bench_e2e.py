"""The end-to-end benchmark's smoke mode (CPU, tiny FLUX), its file-size calculator against
real written checkpoints, and the report charts. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.checkpoint import write_checkpoint
from ternaryflux.core.flux_layout import FluxConfig, is_ternary_layer
from ternaryflux.core.ternary_linear import ternary_modules
from ternaryflux.kernels import dispatch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import flux_builders as fb  # noqa: E402


def _config(d: dict) -> FluxConfig:
    return FluxConfig(**{**d, "axes_dim": tuple(d["axes_dim"])})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "flux_e2e-smoke.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "flux_e2e.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), out


def test_smoke_json_schema_and_values(smoke):
    data, _ = smoke
    assert data["schema"] == "ternaryflux.bench.flux_e2e/1"
    assert data["mode"] == "smoke"
    for key in (
        "date",
        "device",
        "versions",
        "config",
        "settings",
        "goals",
        "params",
        "weights",
        "file_sizes",
    ):
        assert key in data, key
    assert data["versions"]["torch"] == torch.__version__
    assert data["settings"]["timer"] == "perf_counter" and data["settings"]["memory"] == "tensor-bytes"
    assert 0 < data["params"]["ternary"] < data["params"]["total"]
    w = data["weights"]
    assert 0 < w["ternary_bytes"] < w["bf16_bytes"]
    files = data["file_sizes"]
    assert files["base3"]["total"] < files["2bit"]["total"] < files["bf16"]["total"]
    # the file holds the resident tensors, scales at float16 instead of float32
    assert files["2bit"]["data"] == w["ternary_bytes"] - files["2bit"]["scales"]

    results = data["results"]
    labels = {r["label"] for r in results}
    assert labels == {"bf16", "ternary torch A16 (reference)", "ternary torch A8 (reference)"}
    assert len(results) == 3 * 4  # 3 configurations x (2 sizes x 2 batches)
    for r in results:
        assert r["status"] == "ok", r
        assert r["output_finite"]
        runs = data["settings"]["reference_runs" if r["reference"] else "runs"]
        assert r["latency_ms_median"] > 0 and len(r["latency_ms_all"]) == runs
        assert r["latency_vs_bf16"] > 0 and r["peak_vs_bf16"] > 0 and r["peak_x_lower"] > 0
        assert r["peak_allocated_bytes"] >= r["weight_bytes"] > 0
        assert r["img_tokens"] == (r["latent_hw"] // 2) ** 2
        expect_w = w["bf16_bytes"] if r["model"] == "bf16" else w["ternary_bytes"]
        assert r["weight_bytes"] == expect_w
        if r["model"] == "bf16":
            assert r["latency_vs_bf16"] == pytest.approx(1.0)
    # more tokens or a bigger batch never needs less activation memory
    bf16 = {(r["image_px"], r["batch"]): r["activation_peak_bytes"] for r in results if r["model"] == "bf16"}
    assert bf16[(128, 2)] >= bf16[(64, 1)] > 0


@pytest.mark.parametrize("packing", ["2bit", "base3"])
def test_file_size_calculator_matches_written_checkpoint(smoke, tmp_path, packing):
    data, _ = smoke
    config = _config(data["config"])
    model = fb.random_ternary_flux(config, "cpu", torch.bfloat16, seed=3)
    path = tmp_path / f"tiny-{packing}.safetensors"
    meta = fb.default_metadata(config, packing)
    write_checkpoint(path, model.state_dict(), meta)
    actual = path.stat().st_size
    predicted = data["file_sizes"][packing]["total"]
    assert abs(predicted - actual) / actual < 0.01
    assert (
        fb.checkpoint_file_size(config, packing, metadata=meta)["total"] == actual
    )  # exact with the same header


def test_dense_size_and_builders(smoke, tmp_path):
    data, _ = smoke
    config = _config(data["config"])
    dense = fb.random_bf16_flux(config, "cpu", torch.bfloat16, seed=0)
    path = tmp_path / "dense.safetensors"
    save_file(dense.state_dict(), str(path))
    assert path.stat().st_size == data["file_sizes"]["bf16"]["total"]
    assert fb.model_bytes(dense) == data["weights"]["bf16_bytes"]

    tern = fb.random_ternary_flux(config, "cpu", torch.bfloat16, seed=0)
    assert not any(isinstance(m, torch.nn.Linear) and is_ternary_layer(n) for n, m in tern.named_modules())
    for _, m in ternary_modules(tern):
        codes = m.ternary_weight().codes()
        assert int(codes.max()) <= 2  # every 2-bit field in {0, 1, 2}
        assert m.weight_shape.tolist() == [m.out_features, m.in_features]
        assert torch.isfinite(m.weight_scale).all() and (m.weight_scale > 0).all()
    assert tern.img_in.weight.dtype == torch.bfloat16


def test_report_writes_pngs(smoke, tmp_path):
    _, json_path = smoke
    proc = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), str(json_path), "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for suffix in ("latency", "vram", "filesize"):
        png = tmp_path / f"{json_path.stem}-{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_kernel_backend_rows_and_goals(tmp_path, monkeypatch):
    """A registered (fake) kernel backend gets A16 and A8 rows with latency goals."""
    import flux_e2e

    fake = dispatch.Backend("fakegpu", dispatch._torch_run, lambda x, packed, act: True, priority=-1000)
    monkeypatch.setitem(dispatch._BACKENDS, "fakegpu", fake)
    out = tmp_path / "fake.json"
    threads = torch.get_num_threads()
    try:
        assert (
            flux_e2e.main(["--smoke", "--skip-torch-ref", "--batches", "1", "--runs", "1", "--out", str(out)])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    rows = [r for r in data["results"] if r["backend"] == "fakegpu"]
    assert {r["act"] for r in rows} == {"a16", "a8"} and len(rows) == 4
    for r in rows:
        assert r["status"] == "ok" and not r["reference"] and not r["fell_back_to_torch"]
        assert [g["goal"] for g in r["goals"]][0].startswith("lat<=")
        assert all(g["met"] is None for g in r["goals"])  # goals apply to FLUX.1-dev on a GPU only
    assert not any(r["backend"] == "torch" for r in data["results"])


def test_committed_flux_dev_sizes_are_current():
    """bench/results/flux_e2e-sizes.json (quoted in the README and docs) matches the format."""
    data = json.loads((BENCH / "results" / "flux_e2e-sizes.json").read_text())
    config = FluxConfig()
    assert _config(data["config"]) == config
    assert data["params"]["total"] == fb.param_counts(config)["total"]
    for packing in ("2bit", "base3"):
        now = fb.checkpoint_file_size(config, packing)
        assert data["file_sizes"][packing]["data"] == now["data"]
        assert abs(data["file_sizes"][packing]["total"] - now["total"]) < 1024  # header: metadata may change
    assert data["file_sizes"]["bf16"]["total"] == fb.dense_file_size(config)["total"]
