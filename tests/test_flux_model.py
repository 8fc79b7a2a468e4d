import pytest
import torch
from ternaryflux.core.fixtures import make_flux_inputs, make_flux_state_dict, make_tiny_flux, tiny_flux_config
from ternaryflux.core.flux_layout import (
    FluxConfig,
    config_from_state_dict,
    is_ternary_layer,
    ternary_layer_names,
)
from ternaryflux.core.flux_model import Flux, apply_rope, flux_from_state_dict, patchify, rope, unpatchify
from ternaryflux.core.ternary_linear import TernaryLinear
from ternaryflux.quant.algorithms import TernaryConfig, quantize_


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_forward_shapes_and_determinism(guidance):
    c = tiny_flux_config(hidden=128, depth=1, depth_single=2, guidance=guidance)
    m = make_tiny_flux(c, seed=0)
    inp = make_flux_inputs(c, batch=2, height=12, width=20, txt_len=5)
    with torch.no_grad():
        a = m.forward_latent(**inp)
        b = m.forward_latent(**inp)
    assert a.shape == inp["x"].shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    # batch items are independent: running item 1 alone gives the same result
    one = {k: (v[1:] if v is not None else None) for k, v in inp.items()}
    with torch.no_grad():
        assert torch.allclose(m.forward_latent(**one), a[1:], atol=1e-5)
    # guidance changes dev's output, and schnell ignores it
    inp2 = dict(inp, guidance=torch.full((2,), 7.0))
    with torch.no_grad():
        changed = not torch.allclose(m.forward_latent(**inp2), a)
    assert changed == guidance


def test_config_inferred_from_state_dict():
    c = tiny_flux_config(
        hidden=256, depth=2, depth_single=3, guidance=False, context_in_dim=64, vec_in_dim=32
    )
    sd = make_flux_state_dict(c)
    assert config_from_state_dict(sd) == c
    assert FluxConfig().variant == "dev" and c.variant == "schnell"
    with pytest.raises(ValueError, match="head dim"):
        FluxConfig(hidden_size=200, num_heads=2)
    with pytest.raises(KeyError, match="img_in.weight"):
        config_from_state_dict({"foo": torch.zeros(1)})


def test_flux1_dev_layout_is_995_percent_ternary():
    with torch.device("meta"):
        m = Flux(FluxConfig())
    total = sum(p.numel() for p in m.parameters())
    tern = sum(m.get_submodule(n).weight.numel() for n in ternary_layer_names(19, 38))
    assert 11.8e9 < total < 12.0e9
    assert 0.994 < tern / total < 0.996
    names = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and is_ternary_layer(n)]
    assert sorted(names) == sorted(ternary_layer_names(19, 38))
    assert not is_ternary_layer("img_in") and not is_ternary_layer("final_layer.linear")


def test_patchify_round_trip_and_ids():
    x = torch.randn(2, 16, 6, 10)
    img, ids, (h, w) = patchify(x)
    assert img.shape == (2, 15, 64) and (h, w) == (3, 5)
    assert ids[0, 7].tolist() == [0.0, 1.0, 2.0]  # token 7 = row 1, column 2
    assert torch.equal(unpatchify(img, h, w, 6, 10), x)


def test_rope_rotates_pairs_by_position_angle():
    pos = torch.tensor([[0.0, 3.0]])
    pe = rope(pos, 4, 10_000).unsqueeze(1)  # [1, 1, L, 2, 2, 2]
    x = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(1, 1, 2, 4)
    out = apply_rope(x, pe)
    assert torch.allclose(out[0, 0, 0], x[0, 0, 0])  # position 0: identity
    # position 3, first pair frequency 1: (cos 3, sin 3); second pair frequency 1/100
    expect = torch.tensor(
        [
            torch.cos(torch.tensor(3.0)),
            torch.sin(torch.tensor(3.0)),
            torch.cos(torch.tensor(0.03)),
            torch.sin(torch.tensor(0.03)),
        ]
    )
    assert torch.allclose(out[0, 0, 1], expect, atol=1e-6)


def test_ternary_state_dict_loads_without_dense_weights():
    c = tiny_flux_config(hidden=128, depth=1, depth_single=1)
    m = make_tiny_flux(c, seed=1)
    quantize_(m, TernaryConfig(method="absmean"), filter_fn=lambda mod, n: is_ternary_layer(n))
    inp = make_flux_inputs(c)
    with torch.no_grad():
        want = m.forward_latent(**inp)
    loaded = flux_from_state_dict(m.state_dict())
    tern = [n for n, mod in loaded.named_modules() if isinstance(mod, TernaryLinear)]
    assert sorted(tern) == sorted(ternary_layer_names(1, 1))
    for n in tern:
        mod = loaded.get_submodule(n)
        assert mod.weight.dtype == torch.uint8 and not any(
            p.numel() >= mod.in_features * mod.out_features for p in mod.parameters()
        )
    with torch.no_grad():
        assert torch.equal(loaded.forward_latent(**inp), want)


def test_fixture_writer_writes_a_loadable_bfl_file(tmp_path):
    from safetensors.torch import load_file
    from ternaryflux.core.fixtures import write_flux_fixture

    c = tiny_flux_config(hidden=128, depth=1, depth_single=1, guidance=False)
    p = write_flux_fixture(tmp_path / "flux-tiny.safetensors", c, seed=5, structured=True)
    sd = load_file(p)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert config_from_state_dict(sd) == c
    assert torch.equal(sd["img_in.weight"], make_flux_state_dict(c, 5, True)["img_in.weight"])  # seeded
    assert not torch.equal(sd["img_in.weight"], make_flux_state_dict(c, 6, True)["img_in.weight"])
