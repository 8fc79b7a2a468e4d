"""The `ternaryflux` subcommands: help texts, inspect, convert, calibrate, eval, prompts."""

from __future__ import annotations

import json

import pytest
import torch
from ternaryflux.core.calibration_data import read_calibration, write_calibration
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.defaults import DEFAULT_METHOD
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config
from ternaryflux.quant.make_prompts import OUT, make_prompts
from ternaryflux.quant.sampling import flux_sigmas
from ternaryflux.quant.testing import trajectory_calibration, write_layouts
from ternaryflux.quantize_tool.cli import COMMAND_MODULES, build_parser, main
from ternaryflux.quantize_tool.cmd_calibrate import builtin_prompts


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = tiny_flux_config(hidden=128, depth=1, depth_single=1, context_in_dim=256, vec_in_dim=64)
    sd = make_flux_state_dict(cfg, seed=1, structured=True)
    paths = write_layouts(d, sd)
    paths["cal"] = d / "cal.safetensors"
    write_calibration(
        paths["cal"],
        trajectory_calibration(sd, 4, size=64, steps=4, record=(0, 2), txt_len=8),
        {"source": "test"},
    )
    paths["ternary"] = d / "t.safetensors"
    assert main(["quantize", str(paths["bfl"]), "-o", str(paths["ternary"]), "--no-progress"]) == 0
    return paths


def test_every_subcommand_has_teaching_help(capsys):
    assert {
        "cmd_demo",
        "cmd_inspect",
        "cmd_calibrate",
        "cmd_quantize",
        "cmd_distill",
        "cmd_eval",
        "cmd_convert",
    } <= set(COMMAND_MODULES)
    p = build_parser()
    top = p.format_help()
    for cmd in ("inspect", "calibrate", "quantize", "distill", "eval", "convert"):
        assert cmd in top
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "Example" in out and f"ternaryflux {cmd}" in out, cmd


@pytest.mark.parametrize("kind", ["bfl", "comfy", "diffusers", "sharded", "fp8"])
def test_inspect_float(small, kind, capsys):
    assert main(["inspect", str(small[kind]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "float" and info["variant"] == "dev" and info["config"]["hidden_size"] == 128
    assert info["layout"] == ("diffusers" if kind in ("diffusers", "sharded") else "bfl")
    assert info["comfyui_checkpoint"] == (kind == "comfy")
    assert ("fp8_e4m3fn" in info["dtypes"]) == (kind == "fp8")
    assert 0 < info["params_ternarizable"] < info["params_total"]
    assert main(["inspect", str(small[kind])]) == 0
    assert "would be ternary" in capsys.readouterr().out


def test_inspect_ternary_and_calibration(small, capsys):
    assert main(["inspect", str(small["ternary"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["kind"] == "ternaryflux"
        and info["metadata"]["method"] == DEFAULT_METHOD
        and info["variant"] == "dev"
    )
    assert len(info["metadata"]["source_sha256"]) == 64 and info["params_ternary"] > 0
    assert main(["inspect", str(small["ternary"])]) == 0
    assert "TernaryFLUX checkpoint" in capsys.readouterr().out
    assert main(["inspect", str(small["cal"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 8


def test_convert_roundtrip(small, tmp_path):
    b3, back = tmp_path / "b3.safetensors", tmp_path / "back.safetensors"
    assert main(["convert", str(small["ternary"]), "--to", "base3", "-o", str(b3)]) == 0
    assert main(["convert", str(b3), "-o", str(back)]) == 0  # default: the other packing
    assert b3.stat().st_size < small["ternary"].stat().st_size
    a, c = load_checkpoint(small["ternary"]), load_checkpoint(back)
    assert c.metadata.packing == "2bit" and load_checkpoint(b3).metadata.method == DEFAULT_METHOD
    assert all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_calibrate_recorded_merge_subsample_split(small, tmp_path, capsys):
    out, held = tmp_path / "c.safetensors", tmp_path / "h.safetensors"
    argv = [
        "calibrate",
        "--recorded",
        str(small["cal"]),
        str(small["cal"]),
        "--max-samples",
        "12",
        "--heldout-fraction",
        "0.25",
        "--heldout-out",
        str(held),
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    a, b = read_calibration(out), read_calibration(held)
    assert len(a) + len(b) == 12 and len(b) == 3


def test_calibrate_synthetic_records_real_trajectories(small, tmp_path):
    out, held = tmp_path / "c.safetensors", tmp_path / "h.safetensors"
    argv = ["calibrate", "--model", str(small["diffusers"]), "--synthetic", "--num-prompts", "3", "--size", "64", "--steps", "6",
            "--record-steps", "0,2,5", "--txt-len", "8", "--heldout-fraction", "0.34", "--heldout-out", str(held), "-o", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    cal = read_calibration(out)
    assert len(cal) == 6 and len(read_calibration(held)) == 3  # split by trajectory
    sig = flux_sigmas(6, 16)
    assert [round(float(s.timestep), 5) for s in cal[:3]] == [round(float(sig[i]), 5) for i in (0, 2, 5)]
    assert float(sig[1]) > 1 - 1 / 6  # the FLUX shift pushes sigmas towards 1
    assert not torch.equal(cal[0].x, cal[1].x) and torch.equal(cal[0].context, cal[1].context)


def test_calibrate_model_without_synthetic_points_to_comfyui(small, tmp_path, capsys):
    """The tool has no text encoder: --model needs --synthetic, and the error says where real
    calibration data comes from. --t5/--clip no longer exist."""
    out = tmp_path / "c.safetensors"
    rc = main(["calibrate", "--model", str(small["bfl"]), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--synthetic" in err and "Record Calibration" in err and not out.exists()
    with pytest.raises(SystemExit):
        main(["calibrate", "--model", str(small["bfl"]), "--t5", "x", "--clip", "x", "-o", str(out)])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_eval_table_and_json(small, tmp_path, capsys):
    js = tmp_path / "e.json"
    assert (
        main(
            [
                "eval",
                "--teacher",
                str(small["bfl"]),
                "--student",
                str(small["ternary"]),
                "--heldout",
                str(small["cal"]),
                "--json",
                str(js),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "VELOCITY" in out and "double_blocks.0" in out
    r = next(iter(json.loads(js.read_text())["results"].values()))
    assert 0 < r["velocity_rel_err"] < 2 and len(r["blocks"]) == 2 and r["num_samples"] == 8


def test_builtin_prompts():
    prompts = builtin_prompts()
    assert len(prompts) >= 1000 and len(set(prompts)) == len(prompts)
    assert prompts == make_prompts()  # the committed file is the generator's output
    assert OUT.is_file()
    text = " ".join(prompts)
    for word in (
        "red",
        "square",
        "wooden",
        "left of",
        "behind",
        "three",
        "chasing",
        "watercolor",
        '"OPEN"',
        "portrait",
        "fjord",
    ):
        assert word in text, word
