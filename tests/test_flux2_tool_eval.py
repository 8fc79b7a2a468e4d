"""FLUX.2 through ``calibrate --synthetic``, ``eval`` and ``convert``, checked against direct
computations with the models' own ``forward_latent`` (not the tool's code paths), and the clear
one-sentence errors when FLUX.1 and FLUX.2 inputs are mixed up. Tiny fixtures (hidden 128)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ternaryflux.core.calibration_data import CalibrationSample, read_calibration, write_calibration
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux2_config, tiny_flux_config
from ternaryflux.core.flux_model import flux_from_state_dict
from ternaryflux.quant.prompts import builtin_prompts
from ternaryflux.quant.sampling import flux2_empirical_mu, flux2_sigmas, synthetic_conditioning
from ternaryflux.quant.testing import write_layouts
from ternaryflux.quantize_tool.cli import main as cli

CFG = tiny_flux2_config(hidden=128, depth=1, depth_single=2, context_in_dim=64)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return make_flux_state_dict(CFG, seed=5, structured=True)


@pytest.fixture(scope="module")
def layouts(sd, tmp_path_factory) -> dict[str, Path]:
    return write_layouts(tmp_path_factory.mktemp("flux2eval"), sd)


@pytest.fixture(scope="module")
def teacher(sd):
    return flux_from_state_dict({k: v.float() for k, v in sd.items()}, dtype=torch.float32)


def _samples(
    n: int, seed: int, channels: int = 128, ctx: int = CFG.context_in_dim
) -> list[CalibrationSample]:
    g = torch.Generator().manual_seed(seed)
    return [
        CalibrationSample(
            x=torch.randn(1, channels, 4, 4, generator=g),
            timestep=torch.rand(1, generator=g),
            context=torch.randn(1, 5, ctx, generator=g),
        )
        for _ in range(n)
    ]


# ----------------------------------------------------------------------------- the FLUX.2 schedule


def test_flux2_schedule_hits_bfl_fits_at_10_and_200_steps():
    # BFL's empirical mu: the two fits it interpolates between (10 and 200 steps), tokens only above 4300
    for tokens in (16, 1024, 4096):
        assert flux2_empirical_mu(tokens, 10) == pytest.approx(8.73809524e-05 * tokens + 1.89833333)
        assert flux2_empirical_mu(tokens, 200) == pytest.approx(0.00016927 * tokens + 0.45666666)
    assert (
        flux2_empirical_mu(5000, 4)
        == flux2_empirical_mu(5000, 50)
        == pytest.approx(0.00016927 * 5000 + 0.45666666)
    )
    s = flux2_sigmas(4, 256)
    mu = flux2_empirical_mu(256, 4)
    assert s[0] == 1.0 and s[-1] == 0.0 and bool((s[1:] < s[:-1]).all())
    assert float(s[2]) == pytest.approx(1 / (1 + math.exp(-mu)), rel=1e-6)  # t = 0.5 -> sigmoid(mu)


# ----------------------------------------------------------------------------- calibrate --synthetic


@pytest.mark.parametrize("layout", ["bfl", "sharded"])
def test_calibrate_synthetic_flux2_records_the_models_own_euler_steps(layouts, teacher, tmp_path, layout):
    out = tmp_path / "cal.safetensors"
    argv = ["calibrate", "--model", str(layouts[layout]), "--synthetic", "--num-prompts", "2", "--size", "64",
            "--steps", "3", "--record-steps", "0,1", "--txt-len", "6", "--seed", "3", "-o", str(out),
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    got = read_calibration(out)
    assert len(got) == 4
    for s in got:  # FLUX.2 inputs: 128 channels at size/16, txt_in's width, no pooled vector (klein)
        assert s.x.shape == (1, 128, 4, 4) and s.context.shape == (1, 6, CFG.context_in_dim)
        assert s.y is None and s.guidance is None
    # independent reference: the same seeded draws, then one Euler step with Flux2.forward_latent
    g = torch.Generator().manual_seed(3)
    prompts = builtin_prompts()
    first = prompts[torch.randperm(len(prompts), generator=g)[:2].tolist()[0]]
    noise = torch.randn(1, 128, 4, 4, generator=g)
    ctx, y = synthetic_conditioning(first, 6, CFG.context_in_dim, None)
    assert y is None
    sig = flux2_sigmas(3, 16)
    s0, s1 = got[0], got[1]
    assert torch.equal(s0.x, noise) and torch.equal(s0.context, ctx)
    assert float(s0.timestep) == 1.0 and float(s1.timestep) == pytest.approx(float(sig[1]))
    with torch.no_grad():
        v = teacher.forward_latent(noise, torch.ones(1), ctx)
    torch.testing.assert_close(s1.x, noise + (float(sig[1]) - 1.0) * v, rtol=1e-4, atol=1e-5)
    info = json.loads(
        __import__("safetensors").safe_open(str(out), "pt").metadata()["ternaryflux_calibration"]
    )
    assert info["architecture"] == "flux2" and "FLUX.2" in info["sampler"]


# ----------------------------------------------------------------------------- eval


def _direct_errors(teacher, student, samples):
    """Velocity and per-block errors computed directly (no BlockCapture, no compare_models)."""
    num = den = 0.0
    loc = {"num": 0.0, "den": 0.0}
    last = {"num": 0.0, "den": 0.0}
    with torch.no_grad():
        for s in samples:
            inp = s.as_inputs(dtype=torch.float32)
            vt, vs = teacher.forward_latent(**inp), student.forward_latent(**inp)
            num += float((vs - vt).pow(2).sum())
            den += float(vt.pow(2).sum())
            toks = teacher.latent_to_tokens(inp["x"], inp["timestep"], inp["context"], n_axes=4)
            st, ss = teacher.embed(**toks), student.embed(**toks)
            # local error of double_blocks.0: both blocks on the teacher's input
            args = (st["img"], st["txt"], st["mod_img"], st["mod_txt"], st["pe"])
            ot, os_ = teacher.double_blocks[0](*args), student.double_blocks[0](*args)
            for a, b, i in zip(os_, ot, args[:2]):
                loc["num"] += float((a - b).pow(2).sum())
                loc["den"] += float((b - i).pow(2).sum())
            # stream error after the last single block: each model on its own stream
            outs = []
            for m, e in ((teacher, st), (student, ss)):
                img, txt = m.double_blocks[0](e["img"], e["txt"], e["mod_img"], e["mod_txt"], e["pe"])
                x = torch.cat((txt, img), 1)
                for blk in m.single_blocks:
                    x = blk(x, e["mod_single"], e["pe"])
                outs.append(x)
            last["num"] += float((outs[1] - outs[0]).pow(2).sum())
            last["den"] += float(outs[0].pow(2).sum())
    r = lambda d: math.sqrt(d["num"] / d["den"])  # noqa: E731
    return math.sqrt(num / den), r(loc), r(last)


@pytest.mark.parametrize("policy", ["blocks", "blocks+modulation"])
def test_eval_flux2_matches_direct_computation(layouts, teacher, tmp_path, capsys, policy):
    held = tmp_path / "held.safetensors"
    samples = _samples(3, 1)
    write_calibration(held, samples, {"source": "test"})
    st = tmp_path / "s.safetensors"
    assert cli(["quantize", str(layouts["bfl"]), "-o", str(st), "--method", "twn", "--ternary-layers", policy,
                "--no-progress", "--no-hash"]) == 0  # fmt: skip
    js = tmp_path / "e.json"
    assert cli(["eval", "--teacher", str(layouts["sharded"]), "--student", str(st), "--heldout", str(held),
                "--json", str(js), "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "single_blocks.1" in table and "VELOCITY" in table
    r = json.loads(js.read_text())["results"][str(st)]
    student = flux_from_state_dict(load_checkpoint(st).state_dict, dtype=torch.float32)
    vel, local0, stream_last = _direct_errors(teacher, student, samples)
    assert [b["block"] for b in r["blocks"]] == ["double_blocks.0", "single_blocks.0", "single_blocks.1"]
    assert r["velocity_rel_err"] == pytest.approx(vel, rel=1e-4)
    assert r["blocks"][0]["local_rel_err"] == pytest.approx(local0, rel=1e-4)
    assert r["blocks"][-1]["stream_rel_err"] == pytest.approx(stream_last, rel=1e-4)
    assert 0.01 < vel < 2.0  # ternary: not identical, not garbage


def test_eval_flux2_mixups_are_one_sentence_naming_the_file(layouts, tmp_path, capsys):
    f1_held = tmp_path / "flux1-held.safetensors"
    write_calibration(f1_held, _samples(1, 0, channels=16), {"source": "test"})
    f2_held = tmp_path / "flux2-held.safetensors"
    write_calibration(f2_held, _samples(1, 0), {"source": "test"})
    st = tmp_path / "s.safetensors"
    assert cli(["quantize", str(layouts["bfl"]), "-o", str(st), "--no-progress", "--no-hash"]) == 0
    capsys.readouterr()
    # FLUX.1 held-out data for a FLUX.2 teacher
    rc = cli(["eval", "--teacher", str(layouts["bfl"]), "--student", str(st), "--heldout", str(f1_held),
              "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "flux1-held.safetensors: calibration latents have 16 channels but this FLUX.2 takes 128" in err
    assert "bfl.safetensors" in err
    # FLUX.2 held-out data for a FLUX.1 teacher
    f1 = tmp_path / "f1"
    f1.mkdir()
    f1_sd = make_flux_state_dict(tiny_flux_config(context_in_dim=CFG.context_in_dim), 0)
    from safetensors.torch import save_file

    save_file(f1_sd, str(f1 / "flux1.safetensors"))
    rc = cli(["eval", "--teacher", str(f1 / "flux1.safetensors"), "--student", str(st), "--heldout",
              str(f2_held), "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "flux2-held.safetensors: calibration latents have 128 channels but this FLUX.1 takes 16" in err
    # a FLUX.2 student for a FLUX.1 teacher (data fits the teacher)
    rc = cli(["eval", "--teacher", str(f1 / "flux1.safetensors"), "--student", str(st), "--heldout",
              str(f1_held), "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{st}: a FLUX.2 checkpoint, but --teacher" in err and "is FLUX.1" in err
    # quantize --method calibrated names the calibration file too
    rc = cli(["quantize", str(layouts["bfl"]), "-o", str(tmp_path / "c.safetensors"), "--method", "calibrated",
              "--calibration", str(f1_held), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "flux1-held.safetensors: calibration latents have 16 channels but this FLUX.2" in err


# ----------------------------------------------------------------------------- convert


def test_convert_flux2_modulation_policy_roundtrip_runs_identically(layouts, tmp_path):
    a = tmp_path / "a.safetensors"
    assert cli(["quantize", str(layouts["comfy"]), "-o", str(a), "--ternary-layers", "blocks+modulation",
                "--at-rest", "base3", "--no-progress", "--no-hash"]) == 0  # fmt: skip
    b = tmp_path / "b.safetensors"
    assert cli(["convert", str(a), "-o", str(b)]) == 0  # base3 -> 2bit (the other one)
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert cb.metadata.packing == "2bit" and cb.metadata.ternary_policy == "blocks+modulation"
    assert cb.metadata.architecture == "flux2" and "single_stream_modulation.lin" in cb.ternary_layers
    assert b.stat().st_size > a.stat().st_size
    s = _samples(1, 4)[0].as_inputs(dtype=torch.float32)
    with torch.no_grad():
        ya = flux_from_state_dict(ca.state_dict, dtype=torch.float32).forward_latent(**s)
        yb = flux_from_state_dict(cb.state_dict, dtype=torch.float32).forward_latent(**s)
    assert torch.equal(ya, yb)


# ----------------------------------------------------------------------------- demo


def test_demo_flux2(tmp_path, capsys):
    js = tmp_path / "d.json"
    out = tmp_path / "ck"
    argv = ["demo", "--architecture", "flux2", "--hidden", "128", "--depth", "1", "--depth-single", "2",
            "--calibration-prompts", "3", "--out", str(out), "--json", str(js)]  # fmt: skip
    assert cli(argv) == 0
    assert "tiny FLUX.2 hidden 128, 1+2 blocks, klein" in capsys.readouterr().out
    f = json.loads(js.read_text())
    assert f["params_ternary"] == (26 * 1 + 13 * 2) * 128**2  # FLUX.2 block Linears, policy "blocks"
    assert f["reload_matches_in_memory"] and 0.01 < f["velocity_rel_err"] < 2.0
    assert f["held_out"]["calibrated"] < f["held_out"]["absmean"], f["held_out"]
    ck = load_checkpoint(out / "tiny-flux-ternary-base3.safetensors")
    assert (
        ck.metadata.architecture == "flux2" and ck.metadata.ternary_policy == "blocks"
    )  # named, as FLUX.2 writers do
    assert not any("modulation" in n for n in ck.ternary_layers)
