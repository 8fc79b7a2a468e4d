"""The Ternarize FLUX node's ``calibrated`` method is the offline tool's recipe: the in-memory
entry point it calls (:func:`quantize_flux_tensors`, fed one tensor at a time like the node
feeds it from a ComfyUI MODEL) must give exactly what ``ternaryflux quantize --method calibrated``
gives for the same weights and calibration file. No ComfyUI host needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from ternaryflux.core.calibration_data import write_calibration
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.fixtures import make_flux_state_dict
from ternaryflux.quant.algorithms import TernaryConfig
from ternaryflux.quant.calibration import load_calibration
from ternaryflux.quant.errors import QuantizeError
from ternaryflux.quant.flux import TensorSource, quantize_flux_tensors
from ternaryflux.quant.testing import structured_config, trajectory_calibration
from ternaryflux.quantize_tool.cli import main

CALIB_SAMPLES = 3  # of 4 in the file: exercises the seeded subset, as the node's max_calibration_samples


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("node_calibrated")
    sd = make_flux_state_dict(structured_config(hidden=128, depth=1, depth_single=1), seed=0, structured=True)
    paths = {"bf16": d / "bf16.safetensors", "cal": d / "cal.safetensors"}
    save_file(sd, paths["bf16"])
    for name, dt in (("fp32", torch.float32), ("fp16", torch.float16)):
        paths[name] = d / f"{name}.safetensors"
        save_file({k: v.to(dt) for k, v in sd.items()}, paths[name])
    paths["fp8"] = d / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in sd.items()}, paths["fp8"])
    samples = trajectory_calibration(sd, prompts=2, size=64, steps=4, record=(0, 2), txt_len=8, seed=1)
    write_calibration(paths["cal"], samples, {"source": "synthetic"})
    return paths


@pytest.mark.parametrize("source, group_size", [("bf16", 0), ("fp32", 128), ("fp16", 0), ("fp8", 128)])
def test_in_memory_calibrated_equals_the_tool(fixture, tmp_path, source, group_size):
    ref = tmp_path / "tool.safetensors"
    rc = main(
        [
            "quantize",
            str(fixture[source]),
            "--method",
            "calibrated",
            "--calibration",
            str(fixture["cal"]),
            "--calib-samples",
            str(CALIB_SAMPLES),
            "--group-size",
            str(group_size),
            "-o",
            str(ref),
            "--no-progress",
            "--no-hash",
        ]
    )
    assert rc == 0

    # the node's way: tensors handed out one at a time by a getter, never the whole float model
    sd = load_file(str(fixture[source]))
    before = {k: v.clone() for k, v in sd.items()}
    asked: list[str] = []

    def getter(key: str) -> torch.Tensor:
        asked.append(key)
        return sd[key]

    src = TensorSource(
        {k: tuple(v.shape) for k, v in sd.items()},
        TensorSource.from_state_dict(sd).dtypes,
        getter,
        name=fixture[source].name,
    )
    samples, summary = load_calibration([fixture["cal"]], CALIB_SAMPLES, 0)
    calls: list[tuple[int, int]] = []
    out = tmp_path / "node.safetensors"
    report = quantize_flux_tensors(
        src,
        out,
        TernaryConfig(method="calibrated", group_size=group_size),
        calibration=samples,
        calibration_summary=summary,
        device="cpu",
        on_layer=lambda i, n: calls.append((i, n)),
    )

    a, b = load_checkpoint(ref), load_checkpoint(out)
    assert set(a.state_dict) == set(b.state_dict) and a.ternary_layers == b.ternary_layers
    n = len(a.ternary_layers)
    assert n == 10 + 3 and calls == [(i, n) for i in range(1, n + 1)] and report["ternary_layers"] == n
    for p in a.ternary_layers:
        assert torch.equal(a.state_dict[f"{p}.weight"], b.state_dict[f"{p}.weight"]), p  # codes
        assert torch.equal(a.state_dict[f"{p}.weight_shape"], b.state_dict[f"{p}.weight_shape"])
        assert (a.state_dict[f"{p}.weight_scale"] - b.state_dict[f"{p}.weight_scale"]).abs().max() <= 1e-6, p
    for k, v in a.state_dict.items():  # float tensors, bias corrections included
        assert v.dtype == b.state_dict[k].dtype and torch.equal(v, b.state_dict[k]), k
    ma, mb = a.metadata, b.metadata
    assert ma.method == mb.method == "calibrated" and ma.group_size == mb.group_size == group_size
    assert ma.calibration == mb.calibration and mb.calibration["num_samples"] == CALIB_SAMPLES
    assert ma.method_params["candidates"] == mb.method_params["candidates"]
    assert mb.source_name == fixture[source].name and mb.source_sha256 is None
    # the input is not modified (the calibrated method edits the block weights it loads in place)
    assert all(torch.equal(before[k], sd[k]) for k in sd)
    assert len(asked) >= len(sd)


def test_tensor_source_checks(fixture):
    sd = load_file(str(fixture["bf16"]))
    src = TensorSource.from_state_dict({**sd, "extra.weight": torch.zeros(2, 2)})
    assert src.get("img_in.weight").dtype == torch.float32
    assert src.get("img_in.weight", dtype=None).dtype == torch.bfloat16
    del sd["single_blocks.0.linear2.weight"]
    with pytest.raises(QuantizeError, match="missing"):
        quantize_flux_tensors(sd, fixture["bf16"].with_name("never.safetensors"), TernaryConfig("absmean"))
    assert not fixture["bf16"].with_name("never.safetensors").exists()
