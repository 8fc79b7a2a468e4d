"""Source loading (BFL / ComfyUI prefix / diffusers single + sharded / fp8 / fp16), the streaming
writer, and one clear error for every bad input."""

from __future__ import annotations

import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config
from ternaryflux.quant.errors import QuantizeError
from ternaryflux.quant.sources import open_source
from ternaryflux.quant.testing import write_layouts
from ternaryflux.quant.writer import StreamingSafetensorsWriter
from ternaryflux.quantize_tool.cli import main


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    cfg = tiny_flux_config(hidden=128, depth=1, depth_single=2, context_in_dim=256, vec_in_dim=64)
    sd = make_flux_state_dict(cfg, seed=3, structured=True)
    return sd, write_layouts(d, sd)


@pytest.mark.parametrize("kind", ["bfl", "comfy", "diffusers", "sharded", "fp16", "fp8"])
def test_every_layout_reads_the_same_tensors(layouts, kind):
    sd, paths = layouts
    src = open_source(paths[kind])
    assert set(src.keys()) == set(sd)
    assert src.variant == "dev" and src.config.hidden_size == 128
    for k, v in sd.items():
        want = v.float()
        if kind == "fp8" and v.dim() == 2:
            want = v.to(torch.float8_e4m3fn).float()
        elif kind == "fp16":
            want = v.half().float()
        assert torch.equal(src.get(k), want), k
    assert {"bfl": "bfl", "comfy": "bfl", "fp16": "bfl", "fp8": "bfl"}.get(kind, "diffusers") == src.layout


def test_diffusers_mapping_details(layouts):
    sd, paths = layouts
    src = open_source(paths["diffusers"])
    assert src.recipes["double_blocks.0.img_attn.qkv.weight"].op == "cat"
    assert [s.rsplit(".", 2)[-2] for s in src.recipes["single_blocks.0.linear1.weight"].sources] == [
        "to_q",
        "to_k",
        "to_v",
        "proj_mlp",
    ]
    assert src.recipes["final_layer.adaLN_modulation.1.weight"].op == "swap"
    assert src.recipes["single_blocks.1.linear2.bias"].sources == [
        "single_transformer_blocks.1.proj_out.bias"
    ]


def test_quantize_is_identical_from_every_layout(tmp_path, layouts):
    _, paths = layouts
    outs = {}
    for kind in ("bfl", "comfy", "diffusers", "sharded"):
        outs[kind] = tmp_path / f"{kind}.safetensors"
        assert main(["quantize", str(paths[kind]), "-o", str(outs[kind]), "--no-progress", "--no-hash"]) == 0
    ref = load_checkpoint(outs["bfl"]).state_dict
    for kind, p in outs.items():
        got = load_checkpoint(p).state_dict
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[k], ref[k]) for k in ref), kind
    fp8 = tmp_path / "fp8out.safetensors"
    assert main(["quantize", str(paths["fp8"]), "-o", str(fp8), "--no-progress"]) == 0
    ck = load_checkpoint(fp8)
    assert ck.state_dict["img_in.weight"].dtype == torch.bfloat16  # fp8 sources keep float tensors as bf16
    assert ck.metadata.method_params["source_dtype"] == "fp8_e4m3fn"


def test_streaming_writer_roundtrip_order_and_abort(tmp_path):
    p = tmp_path / "w.safetensors"
    specs = [("a", torch.float32, (2, 3)), ("b", torch.uint8, (5,))]
    with pytest.raises(ValueError, match="header order"):
        with StreamingSafetensorsWriter(p, specs) as w:
            w.write("b", torch.zeros(5, dtype=torch.uint8))
    assert not p.exists() and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ValueError, match="only 1 of 2"):
        with StreamingSafetensorsWriter(p, specs) as w:
            w.write("a", torch.ones(2, 3))
    assert not p.exists()
    from safetensors.torch import load_file

    with StreamingSafetensorsWriter(p, specs, {"k": "v"}) as w:
        w.write("a", torch.ones(2, 3))
        w.write("b", torch.arange(5, dtype=torch.uint8))
    got = load_file(p)
    assert torch.equal(got["b"], torch.arange(5, dtype=torch.uint8)) and torch.equal(
        got["a"], torch.ones(2, 3)
    )


def _bad_inputs(d, sd, paths):
    cases = {}
    cases["missing"] = (d / "nope.safetensors", "no such file")
    (d / "x.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    cases["gguf"] = (d / "x.gguf", "GGUF")
    (d / "x.ckpt").write_bytes(pickle.dumps({"a": 1}))
    cases["pickle"] = (d / "x.ckpt", "pickle")
    (d / "junk.safetensors").write_bytes(b"hello world, not a model at all")
    cases["junk"] = (d / "junk.safetensors", "safetensors")
    raw = paths["bfl"].read_bytes()
    (d / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (d / "trunc.safetensors", "truncated")
    save_file(
        {"encoder.down.0.weight": torch.zeros(2, 2), "decoder.up.0.weight": torch.zeros(2)},
        d / "vae.safetensors",
    )
    cases["vae"] = (d / "vae.safetensors", "VAE")
    save_file({"input_blocks.0.0.weight": torch.zeros(2, 2)}, d / "unet.safetensors")
    cases["unet"] = (d / "unet.safetensors", "UNet")
    save_file({"a.weight": torch.zeros(2, 2)}, d / "other.safetensors")
    cases["other"] = (d / "other.safetensors", "not a FLUX transformer")
    save_file(
        {k: v for k, v in sd.items() if "single_blocks.1." not in k or "linear2" not in k},
        d / "incomplete.safetensors",
    )
    cases["incomplete"] = (d / "incomplete.safetensors", "missing")
    bad = dict(sd)
    bad["double_blocks.0.img_mlp.0.weight"] = torch.zeros(3, 3, dtype=torch.bfloat16)
    save_file(bad, d / "shape.safetensors")
    cases["shape"] = (d / "shape.safetensors", "shape")
    i8 = dict(sd)
    i8["double_blocks.0.img_attn.qkv.weight"] = torch.zeros(
        sd["double_blocks.0.img_attn.qkv.weight"].shape, dtype=torch.int8
    )
    save_file(i8, d / "int8.safetensors")
    cases["int8"] = (d / "int8.safetensors", "dtype I8")
    return cases


def test_every_bad_input_gives_one_clear_error(tmp_path, layouts, capsys):
    sd, paths = layouts
    cases = _bad_inputs(tmp_path, sd, paths)
    ternary = tmp_path / "t.safetensors"
    assert main(["quantize", str(paths["bfl"]), "-o", str(ternary), "--no-progress"]) == 0
    cases["already ternary"] = (ternary, "already a TernaryFLUX checkpoint")
    capsys.readouterr()
    for name, (path, needle) in cases.items():
        rc = main(["quantize", str(path), "-o", str(tmp_path / "out.safetensors"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, name
        assert len(err.splitlines()) == 1 and err.startswith("ternaryflux quantize: error:"), (name, err)
        assert needle.lower() in err.lower(), (name, err)
        assert not (tmp_path / "out.safetensors").exists()
    more = [
        (
            ["quantize", str(paths["bfl"]), "--group-size", "100", "-o", str(tmp_path / "o.safetensors")],
            "group",
        ),
        (
            ["quantize", str(paths["bfl"]), "--method", "calibrated", "-o", str(tmp_path / "o.safetensors")],
            "--calibration",
        ),
        (
            [
                "quantize",
                str(paths["bfl"]),
                "--method",
                "calibrated",
                "--calibration",
                str(paths["bfl"]),
                "-o",
                str(tmp_path / "o.safetensors"),
            ],
            "calibration",
        ),
        (
            ["quantize", str(paths["bfl"]), "--device", "cuda:7", "-o", str(tmp_path / "o.safetensors")],
            "device",
        ),
        (
            ["convert", str(paths["bfl"]), "-o", str(tmp_path / "o.safetensors")],
            "not a TernaryFLUX checkpoint",
        ),
        (["inspect", str(tmp_path / "x.gguf")], "GGUF"),
        (["calibrate", "-o", str(tmp_path / "c.safetensors")], "either --recorded"),
    ]
    if torch.cuda.is_available():
        more = [m for m in more if "--device" not in m[0]]
    for argv, needle in more:
        rc = main(argv + ["--no-progress"] if argv[0] == "quantize" else argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle.lower() in err.lower(), (argv, err)


def test_fp8_scaled_checkpoint_applies_scale_weight(tmp_path, layouts):
    sd, _ = layouts
    f8 = {k: v for k, v in sd.items()}
    w = sd["double_blocks.0.img_attn.qkv.weight"].float()
    f8["double_blocks.0.img_attn.qkv.weight"] = (w / 0.5).to(torch.float8_e4m3fn)
    f8["double_blocks.0.img_attn.qkv.scale_weight"] = torch.tensor(0.5)
    f8["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(f8, tmp_path / "scaled.safetensors")
    src = open_source(tmp_path / "scaled.safetensors")
    got = src.get("double_blocks.0.img_attn.qkv.weight")
    assert torch.allclose(got, (w / 0.5).to(torch.float8_e4m3fn).float() * 0.5)
    assert "scaled_fp8" not in src.keys()


def test_header_length_lie_is_caught(tmp_path):
    p = tmp_path / "lie.safetensors"
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(QuantizeError, match="safetensors"):
        open_source(p)
