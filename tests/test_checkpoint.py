import json
import struct
from pathlib import Path

import pytest
import ternaryflux.core.checkpoint as ckpt_mod
import torch
from safetensors.torch import load_file, save_file
from ternaryflux.core.checkpoint import (
    METADATA_KEY,
    TernaryFormatError,
    TernaryMetadata,
    describe_file,
    is_ternary_file,
    load_checkpoint,
    write_checkpoint,
)
from ternaryflux.core.fixtures import make_flux_state_dict, make_tiny_flux, tiny_flux_config
from ternaryflux.core.flux_layout import is_ternary_layer
from ternaryflux.quant.algorithms import TernaryConfig, quantize_


@pytest.fixture(scope="module")
def ternary_sd():
    model = make_tiny_flux(tiny_flux_config(depth=1, depth_single=1), seed=3)
    quantize_(model, TernaryConfig(method="absmean"), filter_fn=lambda m, n: is_ternary_layer(n))
    return model.state_dict()


def meta(**kw) -> TernaryMetadata:
    base = dict(
        variant="dev",
        source_name="tiny",
        source_sha256="ab" * 32,
        method="absmean",
        method_params={"granularity": "channel"},
        calibration={"samples": 0},
    )
    base.update(kw)
    return TernaryMetadata(**base)


@pytest.mark.parametrize("packing", ["2bit", "base3"])
def test_round_trip_with_metadata(tmp_path, ternary_sd, packing):
    path = tmp_path / "m.safetensors"
    write_checkpoint(path, ternary_sd, meta(packing=packing))
    assert is_ternary_file(path)
    ck = load_checkpoint(path)
    assert ck.metadata.source_sha256 == "ab" * 32 and ck.metadata.method_params == {"granularity": "channel"}
    assert ck.metadata.packing == "2bit"  # decoded to the runtime layout at load
    assert len(ck.ternary_layers) == 13
    assert set(ck.state_dict) == set(ternary_sd)
    for k, v in ternary_sd.items():
        assert torch.equal(ck.state_dict[k], v), k
    raw = load_file(path)
    qkv = "double_blocks.0.img_attn.qkv.weight"
    want_cols = 32 if packing == "2bit" else 26  # K = 128: 128/4 bytes vs ceil(128/5)
    assert raw[qkv].shape == (384, want_cols)


def test_scales_stored_fp16_when_lossless(tmp_path, ternary_sd):
    sd = dict(ternary_sd)
    key = "double_blocks.0.img_attn.proj.weight_scale"
    sd[key] = sd[key] + 1e-7  # no longer float16-representable: must stay float32
    path = tmp_path / "s.safetensors"
    write_checkpoint(path, sd, meta())
    raw = load_file(path)
    assert raw[key].dtype == torch.float32
    assert raw["double_blocks.0.img_attn.qkv.weight_scale"].dtype == torch.float16
    ck = load_checkpoint(path)
    assert ck.state_dict["double_blocks.0.img_attn.qkv.weight_scale"].dtype == torch.float32
    assert torch.equal(ck.state_dict[key], sd[key])


def test_base3_is_smaller(tmp_path, ternary_sd):
    write_checkpoint(tmp_path / "a.safetensors", ternary_sd, meta(packing="2bit"))
    write_checkpoint(tmp_path / "b.safetensors", ternary_sd, meta(packing="base3"))
    assert (tmp_path / "b.safetensors").stat().st_size < (tmp_path / "a.safetensors").stat().st_size


def write_raw(path: Path, tensors, metadata) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def expect_error(path, pattern):
    with pytest.raises(TernaryFormatError, match=pattern) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_not_safetensors(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"PK\x03\x04 this is a zip file, not safetensors")
    expect_error(p, "not a safetensors file")
    (tmp_path / "short").write_bytes(b"abc")
    expect_error(tmp_path / "short", "too short")


def test_truncated(tmp_path, ternary_sd):
    p = tmp_path / "t.safetensors"
    write_checkpoint(p, ternary_sd, meta())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    expect_error(p, "truncated")
    (n,) = struct.unpack("<Q", data[:8])
    p.write_bytes(data[: 8 + n // 2])
    expect_error(p, "truncated")


def test_unknown_format_version(tmp_path, ternary_sd):
    m = json.loads(meta().to_json())
    m["format_version"] = 99
    p = write_raw(
        tmp_path / "v.safetensors",
        {k: v.contiguous() for k, v in ternary_sd.items()},
        {METADATA_KEY: json.dumps(m)},
    )
    expect_error(p, "unknown format version 99")


def test_missing_scale(tmp_path, ternary_sd):
    sd = dict(ternary_sd)
    del sd["single_blocks.0.linear2.weight_scale"]
    p = write_raw(tmp_path / "s.safetensors", sd, {METADATA_KEY: meta().to_json()})
    expect_error(p, "missing scale for layer 'single_blocks.0.linear2'")


def test_packed_shape_disagrees(tmp_path, ternary_sd):
    sd = dict(ternary_sd)
    sd["double_blocks.0.img_mlp.2.weight"] = sd["double_blocks.0.img_mlp.2.weight"][:, :-32].contiguous()
    p = write_raw(tmp_path / "p.safetensors", sd, {METADATA_KEY: meta().to_json()})
    expect_error(p, "packed shape .* disagrees with logical shape")


def test_non_finite_scales(tmp_path, ternary_sd):
    sd = dict(ternary_sd)
    s = sd["double_blocks.0.txt_mod.lin.weight_scale"].clone()
    s[3, 0] = float("nan")
    sd["double_blocks.0.txt_mod.lin.weight_scale"] = s
    p = write_raw(tmp_path / "n.safetensors", sd, {METADATA_KEY: meta().to_json()})
    expect_error(p, "non-finite scales")


def test_unknown_layer_name(tmp_path, ternary_sd):
    sd = {k.replace("single_blocks.0.linear1", "single_blocks.0.linear9"): v for k, v in ternary_sd.items()}
    p = write_raw(tmp_path / "u.safetensors", sd, {METADATA_KEY: meta().to_json()})
    expect_error(p, "unknown layer name 'single_blocks.0.linear9'")


def test_plain_flux_file_is_described(tmp_path):
    sd = make_flux_state_dict(tiny_flux_config(depth=1, depth_single=0))
    p = write_raw(tmp_path / "plain.safetensors", sd, {})
    expect_error(p, "plain FLUX transformer in BFL layout .*BF16.*ternaryflux quantize")
    assert not is_ternary_file(p)
    assert "plain FLUX" in describe_file(p)


def test_bad_metadata_values(tmp_path, ternary_sd):
    p = tmp_path / "m.safetensors"
    for field, value, pattern in [
        ("packing", "3bit", "unknown packing"),
        ("group_size", 100, "group_size"),
        ("architecture", "sd3", "unknown architecture"),
    ]:
        m = json.loads(meta().to_json())
        m[field] = value
        write_raw(p, {k: v.contiguous() for k, v in ternary_sd.items()}, {METADATA_KEY: json.dumps(m)})
        expect_error(p, pattern)


def test_write_is_atomic(tmp_path, ternary_sd, monkeypatch):
    p = tmp_path / "a.safetensors"
    write_checkpoint(p, ternary_sd, meta(method="first"))
    before = p.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(p, ternary_sd, meta(method="second"))
    assert p.read_bytes() == before  # the old file is intact
    assert [f.name for f in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path / "new.safetensors", ternary_sd, meta())
    assert not (tmp_path / "new.safetensors").exists()


def test_writer_rejects_invalid_state_dict(tmp_path, ternary_sd):
    sd = dict(ternary_sd)
    sd["double_blocks.0.img_attn.proj.weight_scale"] = torch.full_like(
        sd["double_blocks.0.img_attn.proj.weight_scale"], float("inf")
    )
    with pytest.raises(TernaryFormatError, match="non-finite"):
        write_checkpoint(tmp_path / "bad.safetensors", sd, meta())
    assert not (tmp_path / "bad.safetensors").exists()
