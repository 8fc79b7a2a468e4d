"""FLUX.2 through the library and the tool: architecture facts, ternary policies, streaming
quantize (absmean / twn / calibrated) on BFL, ComfyUI and diffusers layouts, inspect, convert,
and clear errors when FLUX.1 and FLUX.2 are mixed up. Tiny fixtures only (hidden 256)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.calibration_data import CalibrationSample
from ternaryflux.core.checkpoint import (
    TernaryFormatError,
    TernaryMetadata,
    checkpoint_from_tensors,
    layer_from_state_dict,
    load_checkpoint,
    read_header,
)
from ternaryflux.core.fixtures import (
    make_flux_inputs,
    make_flux_state_dict,
    tiny_flux2_config,
    tiny_flux_config,
)
from ternaryflux.core.flux_layout import FLUX1, FLUX2, FLUX2_VARIANTS, config_from_shapes, is_ternary_layer
from ternaryflux.core.flux_model import flux_from_state_dict
from ternaryflux.core.ternarize import ternarize
from ternaryflux.quant.algorithms import TernaryConfig
from ternaryflux.quant.calibration import check_calibration_fits
from ternaryflux.quant.errors import QuantizeError
from ternaryflux.quant.evaluate import velocity_error
from ternaryflux.quant.flux import quantize_flux, quantize_flux_tensors
from ternaryflux.quant.sources import open_source
from ternaryflux.quant.testing import write_layouts
from ternaryflux.quantize_tool.cli import main as cli

CFG = tiny_flux2_config(hidden=256, depth=2, depth_single=2, context_in_dim=128)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return make_flux_state_dict(CFG, seed=2, structured=True)


@pytest.fixture(scope="module")
def layouts(sd, tmp_path_factory) -> dict[str, Path]:
    return write_layouts(tmp_path_factory.mktemp("flux2"), sd)


# ----------------------------------------------------------------------------- architecture facts


def test_layer_counts_and_policies_match_the_published_architecture():
    # Bonsai: 5 double x 12 diffusers linears (= 8 BFL: q/k/v joined) + 20 single x 2 = 100 diffusers
    names = FLUX2.ternary_layer_names(5, 20, "blocks")
    assert len(names) == 5 * 8 + 20 * 2
    assert not any("modulation" in n for n in names)
    with_mod = FLUX2.ternary_layer_names(5, 20, "blocks+modulation")
    assert set(with_mod) - set(names) == set(FLUX2.global_modulation)
    # FLUX.1's default is unchanged: every block Linear incl. the per-block modulation
    assert FLUX1.default_policy == "blocks+modulation"
    assert is_ternary_layer("double_blocks.3.img_mod.lin") and is_ternary_layer(
        "single_blocks.0.modulation.lin"
    )
    assert not is_ternary_layer("double_blocks.3.img_mod.lin", "flux", "blocks")
    assert not is_ternary_layer("double_stream_modulation_img.lin", "flux2")
    assert is_ternary_layer("double_stream_modulation_img.lin", "flux2", "blocks+modulation")
    assert not is_ternary_layer("double_blocks.0.img_mod.lin", "flux2", "blocks+modulation")  # no such layer


def test_variant_configs_give_the_published_parameter_counts():
    """Block-linear parameter counts from the notes (diffusers configs + arithmetic): klein 4B
    3.681 B, klein 9B 8.724 B, dev 31.407 B; 26 H^2 per double block, 13 H^2 per single."""
    for name, want in (("klein-4b", 3.681e9), ("klein-9b", 8.724e9), ("dev", 31.407e9)):
        c = FLUX2_VARIANTS[name]
        with torch.device("meta"):
            from ternaryflux.core.flux_model import model_class

            m = model_class(c)(c)
        n = sum(
            m.get_submodule(p).weight.numel()
            for p in FLUX2.ternary_layer_names(c.depth, c.depth_single_blocks)
        )
        assert n == (26 * c.depth + 13 * c.depth_single_blocks) * c.hidden_size**2
        assert abs(n - want) / want < 1e-3, (name, n)
        assert config_from_shapes({k: tuple(v.shape) for k, v in m.state_dict().items()}) == c


def test_config_detection_from_shapes(sd):
    cfg = config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    assert cfg == CFG and cfg.architecture == "flux2" and cfg.variant == "klein"
    assert (
        config_from_shapes(
            {k: tuple(v.shape) for k, v in make_flux_state_dict(tiny_flux_config()).items()}
        ).architecture
        == "flux"
    )


# ----------------------------------------------------------------------------- quantize


def _reference_layers(sd, method: str, group: int, policy: str) -> dict[str, object]:
    out = {}
    for k, v in sd.items():
        p = k[: -len(".weight")]
        if k.endswith(".weight") and FLUX2.is_ternary_layer(p, policy):
            out[p] = ternarize(v.float(), method, group)
    return out


@pytest.mark.parametrize("layout", ["bfl", "comfy", "sharded"])
def test_quantize_absmean_g128_every_layout_equals_direct_ternarization(layouts, sd, tmp_path, layout):
    out = tmp_path / "t.safetensors"
    rep = quantize_flux(
        open_source(layouts[layout]), out, TernaryConfig(method="absmean", group_size=128), progress=False
    )
    assert rep["architecture"] == "flux2" and rep["ternary_policy"] == "blocks"
    ck = load_checkpoint(out)
    assert ck.metadata.architecture == "flux2" and ck.metadata.ternary_policy == "blocks"
    ref = _reference_layers(sd, "absmean", 128, "blocks")
    assert sorted(ck.ternary_layers) == sorted(ref)
    for p, tw in ref.items():
        got = layer_from_state_dict(ck.state_dict, p)
        assert torch.equal(got.codes(), tw.codes()) and torch.equal(got.scale, tw.scale), p
    # float tensors as in the source (diffusers: norm_out halves swapped back)
    for k in (
        "final_layer.adaLN_modulation.1.weight",
        "double_stream_modulation_img.lin.weight",
        "img_in.weight",
    ):
        assert torch.equal(ck.state_dict[k], sd[k]), k


def test_quantize_twn_blocks_modulation_and_base3(layouts, sd, tmp_path):
    out = tmp_path / "t.safetensors"
    quantize_flux(
        open_source(layouts["bfl"]),
        out,
        TernaryConfig(method="twn", group_size=256),
        packing="base3",
        progress=False,
        policy="blocks+modulation",
    )
    meta = json.loads(read_header(out)["__metadata__"]["ternaryflux"])
    assert meta["architecture"] == "flux2" and meta["ternary_policy"] == "blocks+modulation"
    assert meta["packing"] == "base3" and meta["group_size"] == 256
    ck = load_checkpoint(out)
    ref = _reference_layers(sd, "twn", 256, "blocks+modulation")
    assert set(FLUX2.global_modulation) <= set(ck.ternary_layers) and sorted(ck.ternary_layers) == sorted(ref)
    for p, tw in ref.items():
        assert torch.equal(layer_from_state_dict(ck.state_dict, p).codes(), tw.codes()), p
    # the ternary FLUX.2 runs and matches the dense dequantized model
    dense = {k: v.float() for k, v in sd.items()}
    for p, tw in ref.items():
        dense[f"{p}.weight"] = tw.dequantize()
    inputs = make_flux_inputs(CFG, height=4, width=4, txt_len=5)
    with torch.no_grad():
        a = flux_from_state_dict(ck.state_dict, dtype=torch.float32).forward_latent(**inputs)
        b = flux_from_state_dict(dense, dtype=torch.float32).forward_latent(**inputs)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def _samples(n: int, seed: int) -> list[CalibrationSample]:
    g = torch.Generator().manual_seed(seed)
    return [
        CalibrationSample(
            x=torch.randn(1, 128, 4, 4, generator=g),
            timestep=torch.rand(1, generator=g),
            context=torch.randn(1, 6, CFG.context_in_dim, generator=g),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("policy", ["blocks", "blocks+modulation"])
def test_quantize_calibrated_flux2_beats_absmean(sd, policy):
    from ternaryflux.quant.writer import MemoryWriter

    calib, held = _samples(4, 0), _samples(3, 1)
    dense = flux_from_state_dict({k: v.float() for k, v in sd.items()}, dtype=torch.float32)
    errs = {}
    for method in ("absmean", "calibrated"):
        w = MemoryWriter()
        rep = quantize_flux_tensors(
            sd,
            w,
            TernaryConfig(method=method, group_size=128, candidates=("twn", "aw_sqrt")),
            calibration=calib if method == "calibrated" else None,
            device="cpu",
            policy=policy,
        )
        assert rep["ternary_layers"] == len(FLUX2.ternary_layer_names(2, 2, policy))
        ck = checkpoint_from_tensors(dict(w.tensors), w.metadata["ternaryflux"])
        assert ck.metadata.policy == policy
        errs[method] = velocity_error(dense, flux_from_state_dict(ck.state_dict, dtype=torch.float32), held)
    assert errs["calibrated"] < errs["absmean"], errs


# ----------------------------------------------------------------------------- CLI


def test_cli_inspect_quantize_convert_flux2(layouts, tmp_path, capsys):
    assert cli(["inspect", str(layouts["sharded"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "FLUX.2" and info["variant"] == "klein" and info["layout"] == "diffusers"
    assert info["params_ternarizable"] == (26 * 2 + 13 * 2) * 256**2
    out = tmp_path / "q.safetensors"
    assert cli(["quantize", str(layouts["bfl"]), "-o", str(out), "--group-size", "128", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "FLUX.2" and info["ternary_policy"] == "blocks"
    assert info["metadata"]["group_size"] == 128 and info["ternary_layers"] == 2 * 8 + 2 * 2
    b3 = tmp_path / "q3.safetensors"
    assert cli(["convert", str(out), "--to", "base3", "-o", str(b3)]) == 0
    a, b = load_checkpoint(out), load_checkpoint(b3)
    assert b.metadata.architecture == "flux2" and b.metadata.ternary_policy == "blocks"
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert b3.stat().st_size < out.stat().st_size
    m = tmp_path / "m.safetensors"
    assert (
        cli(
            [
                "quantize",
                str(layouts["bfl"]),
                "-o",
                str(m),
                "--ternary-layers",
                "blocks+modulation",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "single_stream_modulation.lin" in load_checkpoint(m).ternary_layers


# ----------------------------------------------------------------------------- FLUX.1 <-> FLUX.2 mix-ups


def test_flux1_calibration_for_flux2_is_one_sentence():
    flux1 = CalibrationSample(
        x=torch.randn(1, 16, 8, 8), timestep=torch.rand(1), context=torch.randn(1, 4, 128)
    )
    with pytest.raises(
        QuantizeError, match=r"16 channels but this FLUX\.2 takes 128 \(FLUX\.2 latents have 128"
    ):
        check_calibration_fits([flux1], CFG)
    with pytest.raises(QuantizeError, match=r"128 channels but this FLUX\.1 takes 16"):
        check_calibration_fits(_samples(1, 0), tiny_flux_config(context_in_dim=128))


def test_metadata_architecture_must_match_the_tensors(sd):
    from ternaryflux.quant.writer import MemoryWriter

    w = MemoryWriter()
    quantize_flux_tensors(sd, w, TernaryConfig(method="absmean"), device="cpu")
    tensors = dict(w.tensors)
    meta = json.loads(w.metadata["ternaryflux"])
    meta.update(architecture="flux")
    meta.pop("ternary_policy")
    with pytest.raises(
        TernaryFormatError, match=r"x\.safetensors: metadata says FLUX\.1 but the tensors are FLUX\.2"
    ):
        checkpoint_from_tensors(dict(tensors), json.dumps(meta), "x.safetensors")
    # and the reverse: a FLUX.1 checkpoint labelled FLUX.2
    w1 = MemoryWriter()
    quantize_flux_tensors(
        make_flux_state_dict(tiny_flux_config()), w1, TernaryConfig(method="absmean"), device="cpu"
    )
    m1 = json.loads(w1.metadata["ternaryflux"])
    assert "ternary_policy" not in m1  # FLUX.1 files keep the implicit default (byte-identical)
    m1["architecture"] = "flux2"
    with pytest.raises(TernaryFormatError, match=r"metadata says FLUX\.2 but the tensors are FLUX\.1"):
        checkpoint_from_tensors(dict(w1.tensors), json.dumps(m1), "y.safetensors")


def test_policy_is_validated_and_layers_must_fit_it(sd):
    from ternaryflux.quant.writer import MemoryWriter

    w = MemoryWriter()
    quantize_flux_tensors(sd, w, TernaryConfig(method="absmean"), device="cpu", policy="blocks+modulation")
    meta = json.loads(w.metadata["ternaryflux"])
    meta["ternary_policy"] = "blocks"  # but the global modulation is ternary
    with pytest.raises(
        TernaryFormatError,
        match=r"'double_stream_modulation_img\.lin': not a ternary FLUX\.2 layer under policy 'blocks'",
    ):
        checkpoint_from_tensors(dict(w.tensors), json.dumps(meta), "z.safetensors")
    meta["ternary_policy"] = "everything"
    with pytest.raises(TernaryFormatError, match=r"unknown ternary_policy 'everything'"):
        checkpoint_from_tensors(dict(w.tensors), json.dumps(meta), "z.safetensors")
    with pytest.raises(QuantizeError, match="unknown ternary policy"):
        quantize_flux_tensors(sd, MemoryWriter(), TernaryConfig(method="absmean"), device="cpu", policy="all")


def test_old_metadata_without_policy_still_reads():
    m = TernaryMetadata.from_json(
        json.dumps({"format": "ternaryflux", "format_version": 1, "architecture": "flux"})
    )
    assert m.ternary_policy is None and m.policy == "blocks+modulation"
    assert "ternary_policy" not in json.loads(m.to_json())


def test_a_flux2_file_is_described_as_flux2(layouts, tmp_path):
    from ternaryflux.core.checkpoint import describe_file

    assert "plain FLUX.2 transformer in BFL layout" in describe_file(layouts["bfl"])
    assert "plain FLUX.2 transformer in diffusers layout" in describe_file(layouts["diffusers"])
    save_file({"x": torch.zeros(1)}, tmp_path / "x.safetensors")
    assert "not a FLUX transformer" in describe_file(tmp_path / "x.safetensors")
