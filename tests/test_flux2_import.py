"""``ternaryflux import``: Bonsai Image layouts (unpacked diffusers bf16, gemlite-int2 pickle) built
synthetically from a tiny FLUX.2, imported, and compared with the ternary weights they were made
from (bit for bit) and with the dense model's forward. Bad inputs: one sentence, nothing written.

The synthetic files are written here by code independent of the importer: the gemlite packer
below follows gemlite's public ``pack_weights_over_rows`` (code of input k in bits 2*(k % 4) of
byte k // 4, stored (K/4, N)), the unpacked file is the dense dequantized weight in bf16.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.checkpoint import layer_from_state_dict, load_checkpoint, read_header
from ternaryflux.core.fixtures import make_flux_inputs, make_flux_state_dict, tiny_flux2_config
from ternaryflux.core.flux_layout import FLUX2
from ternaryflux.core.flux_model import flux_from_state_dict
from ternaryflux.core.ternarize import ternarize
from ternaryflux.quant.errors import QuantizeError
from ternaryflux.quant.importers import import_bonsai_gemlite, import_bonsai_unpacked
from ternaryflux.quant.sources import bfl_to_diffusers
from ternaryflux.quantize_tool.cli import main as cli

CFG = tiny_flux2_config(hidden=256, depth=2, depth_single=2, context_in_dim=128)


def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def ternary_reference(policy: str = "blocks") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(BFL dense state dict whose ternary layers hold (code-1)*scale in bf16, {layer: codes}).
    Scales are made bf16-representable (they are then exact float16 too), as an unpacked bf16
    file can only carry those."""
    sd = {k: v.float() for k, v in make_flux_state_dict(CFG, seed=11, structured=True).items()}
    codes = {}
    for k in list(sd):
        p = k[: -len(".weight")]
        if k.endswith(".weight") and FLUX2.is_ternary_layer(p, policy):
            tw = ternarize(sd[k], "absmean", 128)
            s = _bf16_exact(tw.scale)
            codes[p] = tw.codes()
            sd[k] = ((codes[p].float() - 1) * s.repeat_interleave(128, 1)).to(torch.bfloat16).float()
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}, codes


def write_diffusers(folder: Path, bfl: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """A sharded diffusers transformer folder (index + shards), like a hub download."""
    d = bfl_to_diffusers(bfl)
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(d)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: d[k].contiguous() for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "Flux2Transformer2DModel"}))
    return folder


def gemlite_pack(w: torch.Tensor, nbits: int = 2, meta_len: int = 12) -> dict[str, torch.Tensor]:
    """One dense ternary-valued weight [N, K] -> gemlite-int2 tensors (independent encoder)."""
    n, k = w.shape
    wf = w.float().reshape(n, k // 128, 128)
    s = wf.abs().amax(2)  # [N, K/128]
    q = (torch.sign(wf) + 1).to(torch.int32).reshape(n, k).t()  # [K, N], q in {0,1,2}
    packed = torch.zeros(k // 4, n, dtype=torch.int32)
    for j in range(k):
        packed[j // 4] |= q[j] << (2 * (j % 4))
    meta = [nbits, 128, 3, 4, 0, 0, 0, 0, 0, 2, 1]
    return {
        "W_q": packed.to(torch.uint8),
        "scales": s.t().contiguous().to(torch.float16),
        "zeros": torch.ones(k // 128, n, dtype=torch.float16),
        "metadata": torch.tensor(([0] if meta_len == 12 else []) + meta, dtype=torch.int32),
        "orig_shape": torch.tensor([n, k], dtype=torch.int32),
    }


def write_gemlite(path: Path, bfl: dict[str, torch.Tensor], policy: str = "blocks", **kw) -> Path:
    d = bfl_to_diffusers(bfl)
    ternary_diffusers = set()
    # a diffusers layer is ternary when the BFL layer it feeds is
    probe = {k: torch.full_like(v, float(i)) for i, (k, v) in enumerate(bfl.items())}
    back = bfl_to_diffusers(probe)
    for dk, v in back.items():
        src_bfl = list(bfl)[int(v.flatten()[0].item())]
        if src_bfl.endswith(".weight") and FLUX2.is_ternary_layer(src_bfl[:-7], policy):
            ternary_diffusers.add(dk)
    out = {}
    for dk, v in d.items():
        if dk in ternary_diffusers:
            for f, t in gemlite_pack(v, **kw).items():
                out[f"{dk[: -len('.weight')]}.{f}"] = t
        else:
            out[dk] = v.to(torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return path


def _check_imported(path: Path, bfl: dict[str, torch.Tensor], codes: dict[str, torch.Tensor], policy: str):
    ck = load_checkpoint(path)
    assert ck.metadata.architecture == "flux2" and ck.metadata.policy == policy
    assert ck.metadata.group_size == 128
    assert sorted(ck.ternary_layers) == sorted(codes)
    model = flux_from_state_dict(ck.state_dict, dtype=torch.float32)
    for p in codes:
        tw = layer_from_state_dict(ck.state_dict, p)
        assert torch.equal(tw.codes(), codes[p]), p  # codes exact
        assert torch.equal(tw.dequantize(), bfl[f"{p}.weight"].float()), p  # weights bit for bit
    dense = flux_from_state_dict({k: v.float() for k, v in bfl.items()}, dtype=torch.float32)
    inputs = make_flux_inputs(CFG, batch=1, height=4, width=4, txt_len=5)
    with torch.no_grad():
        a, b = model.forward_latent(**inputs), dense.forward_latent(**inputs)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


@pytest.fixture(scope="module")
def reference():
    return ternary_reference()


def test_unpacked_import_is_lossless(tmp_path: Path, reference):
    bfl, codes = reference
    folder = write_diffusers(tmp_path / "transformer", bfl)
    rep = import_bonsai_unpacked(folder, tmp_path / "out.safetensors")
    assert rep.policy == "blocks" and rep.ternary_layers == len(codes) == 2 * 8 + 2 * 2
    _check_imported(tmp_path / "out.safetensors", bfl, codes, "blocks")


def test_unpacked_import_base3_and_modulation_policy(tmp_path: Path):
    bfl, codes = ternary_reference("blocks+modulation")
    folder = write_diffusers(tmp_path / "transformer", bfl, shards=1)
    rep = import_bonsai_unpacked(folder, tmp_path / "out.safetensors", packing="base3")
    assert rep.policy == "blocks+modulation"
    meta = json.loads(read_header(tmp_path / "out.safetensors")["__metadata__"]["ternaryflux"])
    assert meta["packing"] == "base3" and meta["ternary_policy"] == "blocks+modulation"
    _check_imported(tmp_path / "out.safetensors", bfl, codes, "blocks+modulation")


@pytest.mark.parametrize("meta_len", [12, 11])
def test_gemlite_import_is_lossless_and_equals_unpacked(tmp_path: Path, reference, meta_len: int):
    bfl, codes = reference
    pt = write_gemlite(
        tmp_path / "bonsai" / "transformer-gemlite-int2" / "state_dict.pt", bfl, meta_len=meta_len
    )
    rep = import_bonsai_gemlite(tmp_path / "bonsai" / "transformer-gemlite-int2", tmp_path / "g.safetensors")
    assert rep.policy == "blocks" and rep.ternary_layers == len(codes)
    # float tensors went through fp16 in the pickle (as Bonsai keeps them): compare on those
    bfl16 = {k: (v if k[:-7] in codes else v.to(torch.float16).to(torch.bfloat16)) for k, v in bfl.items()}
    _check_imported(tmp_path / "g.safetensors", bfl16, codes, "blocks")
    assert pt.is_file()


def test_unpacked_group_of_four_values_is_refused(tmp_path: Path, reference):
    bfl, _ = reference
    bad = dict(bfl)
    w = bad["double_blocks.1.txt_attn.qkv.weight"].clone()
    w[300, 130] = w[300, 130:256].abs().max() * 0.5  # a 4th value in group 1 of row 300 (the k part)
    bad["double_blocks.1.txt_attn.qkv.weight"] = w
    folder = write_diffusers(tmp_path / "transformer", bad)
    out = tmp_path / "out.safetensors"
    with pytest.raises(QuantizeError) as e:
        import_bonsai_unpacked(folder, out)
    msg = str(e.value)
    assert "transformer_blocks.1.attn.add_k_proj" in msg and "4 distinct values" in msg, msg
    assert "group 1 of output row 44" in msg and ".safetensors" in msg
    assert not out.exists() and not list(tmp_path.glob(".out.safetensors*"))


def test_unpacked_scale_outside_float16_is_refused(tmp_path: Path, reference):
    bfl, _ = reference
    bad = dict(bfl)
    w = bad["single_blocks.0.linear2.weight"].float().clone()
    w[3] = torch.sign(w[3]) * 1e-6  # a bf16 value below float16's normal range
    bad["single_blocks.0.linear2.weight"] = w.to(torch.bfloat16)
    with pytest.raises(QuantizeError, match=r"single_transformer_blocks\.0\.attn\.to_out.*round-trip"):
        import_bonsai_unpacked(write_diffusers(tmp_path / "t", bad), tmp_path / "o.safetensors")


def test_unpacked_missing_shard_is_refused(tmp_path: Path, reference):
    folder = write_diffusers(tmp_path / "transformer", reference[0])
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(QuantizeError, match=r"index\.json: shard diffusion_pytorch_model-00002-of-00002"):
        import_bonsai_unpacked(folder, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_unpacked_import_refuses_a_float_flux2(tmp_path: Path):
    bfl = make_flux_state_dict(CFG, seed=1)  # not ternary-valued
    with pytest.raises(
        QuantizeError,
        match=r"layer 'transformer_blocks\.0\.attn\.to_out\.0' \(-> double_blocks\.0\.img_attn\.proj\) is not ternary",
    ):
        import_bonsai_unpacked(write_diffusers(tmp_path / "t", bfl), tmp_path / "o.safetensors")


def test_gemlite_one_bit_metadata_is_refused(tmp_path: Path, reference):
    pt = write_gemlite(tmp_path / "state_dict.pt", reference[0], nbits=1)
    with pytest.raises(QuantizeError, match=r"state_dict\.pt: gemlite layer .*1 bit.*binary Bonsai"):
        import_bonsai_gemlite(pt, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_gemlite_layout_mismatches_fail_loudly(tmp_path: Path, reference):
    bfl = reference[0]
    pt = write_gemlite(tmp_path / "state_dict.pt", bfl)
    raw = torch.load(pt, weights_only=True)
    key = "transformer_blocks.0.attn.to_q"
    cases = {
        "not transposed": {f"{key}.W_q": raw[f"{key}.W_q"].t().contiguous()},
        "zeros": {f"{key}.zeros": raw[f"{key}.zeros"] * 0},
        "group size": {
            f"{key}.metadata": torch.tensor([0, 2, 64, 3, 4, 0, 0, 0, 0, 0, 2, 1], dtype=torch.int32)
        },
        "code 3": {f"{key}.W_q": raw[f"{key}.W_q"] | 3},
        "scales": {f"{key}.scales": raw[f"{key}.scales"][:1]},
    }
    for what, patch in cases.items():
        bad = tmp_path / f"bad_{what.replace(' ', '_')}.pt"
        torch.save({**raw, **patch}, bad)
        with pytest.raises(QuantizeError, match=rf"{bad.name}: gemlite layer '{key}'"):
            import_bonsai_gemlite(bad, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


class _NotATensor:  # a pickled object of an arbitrary class: weights_only must refuse it
    pass


def test_pickle_refused_by_weights_only(tmp_path: Path):
    pt = tmp_path / "state_dict.pt"
    torch.save({"x": _NotATensor()}, pt)
    with pytest.raises(QuantizeError, match=r"state_dict\.pt: refused by torch\.load\(weights_only=True\)"):
        import_bonsai_gemlite(pt, tmp_path / "o.safetensors")


def test_cli_import_both_layouts(tmp_path: Path, reference, capsys):
    bfl, codes = reference
    folder = write_diffusers(tmp_path / "transformer", bfl)
    assert (
        cli(["import", str(folder), "--from", "bonsai-unpacked", "-o", str(tmp_path / "u.safetensors")]) == 0
    )
    pt = write_gemlite(tmp_path / "g" / "state_dict.pt", bfl)
    assert (
        cli(
            [
                "import",
                str(pt),
                "--from",
                "bonsai-gemlite",
                "-o",
                str(tmp_path / "g.safetensors"),
                "--at-rest",
                "base3",
            ]
        )
        == 0
    )
    a, b = load_checkpoint(tmp_path / "u.safetensors"), load_checkpoint(tmp_path / "g.safetensors")
    for p in codes:
        assert torch.equal(a.state_dict[f"{p}.weight"], b.state_dict[f"{p}.weight"])
        assert torch.equal(a.state_dict[f"{p}.weight_scale"], b.state_dict[f"{p}.weight_scale"])
    # a bad file: one line on stderr, exit code 1, nothing written
    pt1 = write_gemlite(tmp_path / "b" / "state_dict.pt", bfl, nbits=1)
    rc = cli(["import", str(pt1), "--from", "bonsai-gemlite", "-o", str(tmp_path / "b.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "1 bit" in err[0] and not (tmp_path / "b.safetensors").exists()
