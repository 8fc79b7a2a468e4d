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
from ternaryflux.core.flux_layout import (
    FLUX2_VARIANTS,
    Flux2Config,
    FluxConfig,
    is_ternary_layer,
    ternary_layer_names,
)
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


# ----------------------------------------------------------------------------- FLUX.2 [klein] 4B


@pytest.fixture(scope="module")
def smoke_flux2(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench2") / "flux_e2e-flux2-smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "flux_e2e.py"),
            "--model",
            "flux2-klein-4b",
            "--smoke",
            "--batches",
            "1",
            "--runs",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "published, whole pipeline, not measured here" in proc.stdout
    return json.loads(out.read_text()), out


def _config2(d: dict) -> Flux2Config:
    return Flux2Config(**{**d, "axes_dim": tuple(d["axes_dim"]), "txt_ids_dims": tuple(d["txt_ids_dims"])})


def test_flux2_smoke_json(smoke_flux2):
    data, _ = smoke_flux2
    assert data["schema"] == "ternaryflux.bench.flux_e2e/1" and data["mode"] == "smoke"
    assert data["model"] == "flux2-klein-4b" and data["architecture"] == "flux2"
    assert data["model_name"] == "FLUX.2 (reduced size)"
    assert data["group_size"] == 128 and data["ternary_policy"] == "blocks"
    assert data["published"]["what"].endswith("published, whole pipeline, not measured here")
    assert data["published"]["pipeline_s"] == 1.45 and data["published"]["peak_vram_gib"] == 6.4
    assert data["vs_published"] == []  # a reduced model is never set beside Bonsai's figures
    files, w = data["file_sizes"], data["weights"]
    assert set(files) == {"bf16", "2bit-g128", "base3-g128"}
    assert files["base3-g128"]["total"] < files["2bit-g128"]["total"] < files["bf16"]["total"]
    # resident = file data with the (fp32 in memory, fp16 in the file) group scales counted twice
    assert files["2bit-g128"]["data"] == w["ternary_bytes"] - files["2bit-g128"]["scales"]
    assert all(g["met"] is None for g in data["file_goals"])
    results = data["results"]
    assert {r["label"] for r in results} == {
        "bf16",
        "ternary torch A16 (reference)",
        "ternary torch A8 (reference)",
    }
    assert len(results) == 3 * 2  # 3 configurations x 2 sizes, batch 1
    for r in results:
        assert r["status"] == "ok" and r["output_finite"], r
        # FLUX.2: 128-channel latent at 1/16 of the image, patch 1
        assert r["latent_hw"] == r["image_px"] // 16 and r["img_tokens"] == r["latent_hw"] ** 2
        assert r["weight_bytes"] == (w["bf16_bytes"] if r["model"] == "bf16" else w["ternary_bytes"])


def test_flux2_builder_and_file_size_calculator(smoke_flux2, tmp_path):
    """The klein-style builder: `blocks` policy, group-128 scales, packed codes made directly;
    the calculator is byte-exact against a written checkpoint."""
    data, _ = smoke_flux2
    config = _config2(data["config"])
    model = fb.random_ternary_flux(config, "cpu", torch.bfloat16, seed=3, group_size=128, policy="blocks")
    tern = dict(ternary_modules(model))
    assert set(tern) == set(ternary_layer_names(config.depth, config.depth_single_blocks, "flux2", "blocks"))
    assert isinstance(model.double_stream_modulation_img.lin, torch.nn.Linear)  # `blocks`: bf16
    for m in tern.values():
        assert m.group_size == 128 and m.weight_scale.shape == (m.out_features, m.in_features // 128)
        assert int(m.ternary_weight().codes().max()) <= 2
    assert fb.model_bytes(model) == data["weights"]["ternary_bytes"]
    for packing in ("2bit", "base3"):
        path = tmp_path / f"tiny2-{packing}.safetensors"
        meta = fb.default_metadata(config, packing, 128, "blocks")
        write_checkpoint(path, model.state_dict(), meta)
        exact = fb.checkpoint_file_size(config, packing, 128, metadata=meta, policy="blocks")
        assert exact["total"] == path.stat().st_size
        assert abs(data["file_sizes"][f"{packing}-g128"]["total"] - exact["total"]) < 1024
    dense = fb.random_bf16_flux(config, "cpu", torch.bfloat16, seed=0)
    assert fb.model_bytes(dense) == data["weights"]["bf16_bytes"]


def test_flux2_sizes_only_agrees_with_flux2_sizes_json(tmp_path, capsys):
    """`--sizes-only --model flux2-klein-4b` = bench/results/flux2_sizes.json (klein 4B, `blocks`,
    g128): 1.368 GB 2-bit / 1.184 GB base3; the committed sizes JSON is current too."""
    import flux_e2e

    out = tmp_path / "klein-sizes.json"
    assert flux_e2e.main(["--model", "flux2-klein-4b", "--sizes-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "published, whole pipeline, not measured here" in printed and "1.21 GB" in printed
    ref = json.loads((BENCH / "results" / "flux2_sizes.json").read_text())["models"]["klein-4b"]
    committed = json.loads((BENCH / "results" / "flux_e2e-flux2-klein-4b-sizes.json").read_text())
    for data in (json.loads(out.read_text()), committed):
        assert data["model_name"] == "FLUX.2 [klein] 4B" and data["group_size"] == 128
        assert _config2(data["config"]) == FLUX2_VARIANTS["klein-4b"]
        assert data["file_sizes"]["bf16"]["total"] == ref["bf16_bytes"]
        assert data["params"]["ternary"] == ref["policies"]["blocks"]["params"]["ternary"]
        for packing, gb in (("2bit", 1.368), ("base3", 1.184)):
            ours, theirs = data["file_sizes"][f"{packing}-g128"], ref["policies"]["blocks"][packing]
            assert ours["data"] == theirs["data"] and ours["scales"] == theirs["scales"]
            assert abs(ours["total"] - theirs["total"]) < 1024  # header: metadata may change
            assert round(ours["total"] / 1e9, 3) == gb
        assert [r["figure"] for r in data["vs_published"]] == ["checkpoint file"]
