"""The user's path through the `ternaryflux` CLI (issue 12): held-out split by prompt, refusing to
overwrite, interrupts, leftovers, threads, `demo --write-models`, clearer messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.calibration_data import read_calibration, write_calibration
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config
from ternaryflux.quant.testing import trajectory_calibration
from ternaryflux.quantize_tool.args import ToolError
from ternaryflux.quantize_tool.cli import default_threads, main, resolve_threads

TOOL = [sys.executable, "-m", "ternaryflux"]


def _env(tmp: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    sd = make_flux_state_dict(tiny_flux_config(), 0)
    save_file(sd, str(d / "flux.safetensors"))
    # 3 prompts, each recorded at 4 steps, spread over 2 files per prompt (as two queue runs would)
    files = []
    for i in range(3):
        samples = trajectory_calibration(sd, 1, size=64, steps=8, record=(0, 2, 4, 6), seed=100 + i)
        for j, part in enumerate((samples[:2], samples[2:])):
            p = d / f"rec_{i}_{j}.safetensors"
            write_calibration(p, part, {"source": "comfyui-record"})
            files.append(p)
    t = d / "t.safetensors"
    assert main(["quantize", str(d / "flux.safetensors"), "-o", str(t), "--no-progress", "--no-hash"]) == 0
    return {"dir": d, "model": d / "flux.safetensors", "rec": files, "ternary": t}


def test_heldout_split_is_by_prompt_for_recorded_files(tiny, tmp_path):
    rc = main(
        [
            "calibrate",
            "--recorded",
            *map(str, tiny["rec"]),
            "--heldout-fraction",
            "0.34",
            "--heldout-out",
            str(tmp_path / "held.safetensors"),
            "-o",
            str(tmp_path / "cal.safetensors"),
        ]
    )
    assert rc == 0
    cal, held = (
        read_calibration(tmp_path / "cal.safetensors"),
        read_calibration(tmp_path / "held.safetensors"),
    )
    assert len(held) == 4 and len(cal) == 8  # one whole prompt (its 4 steps from 2 files) held out
    for h in held:
        assert not any(torch.equal(h.context, c.context) for c in cal), (
            "a held-out prompt is also in calibration"
        )


def test_outputs_are_never_silently_replaced(tiny, tmp_path):
    out = tmp_path / "q.safetensors"
    out.write_bytes(b"precious")
    q = ["quantize", str(tiny["model"]), "-o", str(out), "--no-progress", "--no-hash"]
    assert main(q) == 2 and out.read_bytes() == b"precious"
    assert main([*q, "--overwrite"]) == 0 and out.read_bytes() != b"precious"
    conv = tmp_path / "c.safetensors"
    conv.write_bytes(b"precious")
    c = ["convert", str(tiny["ternary"]), "--to", "base3", "-o", str(conv)]
    assert main(c) == 2 and conv.read_bytes() == b"precious"
    assert main([*c, "--overwrite"]) == 0
    cal = tmp_path / "cal.safetensors"
    cal.write_bytes(b"precious")
    assert main(["calibrate", "--recorded", str(tiny["rec"][0]), "-o", str(cal)]) == 2
    assert cal.read_bytes() == b"precious"


def test_convert_on_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "no such file" not in err


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_removes_temp_files_and_says_one_line(tiny, tmp_path, sig, rc):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [
        *TOOL,
        "quantize",
        str(tiny["model"]),
        "--method",
        "calibrated",
        "--calibration",
        *map(str, tiny["rec"]),
        "--candidates",
        "twn,aw_sqrt,gptq",
        "-o",
        str(out_dir / "q.safetensors"),
        "--no-progress",
        "--no-hash",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path)
    )
    _wait_for(lambda: any(out_dir.glob(".*.tmp")), 120, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in lines[0]
    assert list(out_dir.iterdir()) == [], list(out_dir.iterdir())


def _distill_cmd(tiny, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        *TOOL,
        "distill",
        "--teacher",
        str(tiny["model"]),
        "--student",
        str(tiny["ternary"]),
        "--calibration",
        *map(str, tiny["rec"][:2]),
        "--steps",
        str(steps),
        "--save-every",
        "1",
        "--optimizer",
        "adamw",
        "--cache-dir",
        str(tiny["model"].parent / "teacher-cache"),
        "-o",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_distill_interrupt_names_resume(tiny, tmp_path):
    out = tmp_path / "d.safetensors"
    proc = subprocess.Popen(
        _distill_cmd(tiny, out, 100000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )
    state = tmp_path / "d.distill-state"  # --memory streamed (the default): a folder
    _wait_for(lambda: state.is_dir() and any(state.glob("*.pt")), 120, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert "--resume" in last and str(state) in last and "Traceback" not in err, err
    assert not [p for p in [*tmp_path.iterdir(), *state.iterdir()] if p.name.endswith(".tmp")]


def test_distill_removes_its_state_on_success_unless_keep_state(tiny, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    env = _env(tmp_path)
    subprocess.run(_distill_cmd(tiny, a, 2), check=True, env=env, capture_output=True)
    assert a.exists() and not (tmp_path / "a.distill-state").exists()
    subprocess.run(_distill_cmd(tiny, b, 2, "--keep-state"), check=True, env=env, capture_output=True)
    assert b.exists() and (tmp_path / "b.distill-state" / "settings.json").is_file()


def test_demo_leaves_nothing_in_tmp(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        [
            *TOOL,
            "demo",
            "--hidden",
            "128",
            "--depth",
            "1",
            "--depth-single",
            "1",
            "--calibration-prompts",
            "0",
        ],
        env=_env(tmp),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == []


def test_demo_write_models_gives_a_float_model_to_try_the_tool_on(tmp_path):
    d = tmp_path / "models"
    base = ["demo", "--write-models", str(d), "--hidden", "128", "--depth", "1", "--depth-single", "1"]
    assert main([*base, "--calibration-prompts", "2"]) == 0
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(
        ["tiny-flux-float.safetensors", "tiny-flux-calibration.safetensors", "tiny-flux-heldout.safetensors"]
    )
    out = d / "t.safetensors"
    q = ["quantize", str(d / "tiny-flux-float.safetensors"), "--method", "calibrated"]
    q += ["--calibration", str(d / "tiny-flux-calibration.safetensors"), "-o", str(out), "--no-progress"]
    assert main(q) == 0 and out.exists()
    before = (d / "tiny-flux-float.safetensors").read_bytes()
    assert main([*base, "--calibration-prompts", "2"]) == 2  # refuses to replace
    assert main([*base, "--calibration-prompts", "2", "--overwrite"]) == 0
    assert (d / "tiny-flux-float.safetensors").read_bytes() == before  # seeded: the same model


def test_threads_option_and_default(tiny, monkeypatch):
    assert 1 <= default_threads() <= 8
    assert resolve_threads(3) == 3
    monkeypatch.setenv("TERNARYFLUX_THREADS", "2")
    assert resolve_threads(None) == 2
    monkeypatch.setenv("TERNARYFLUX_THREADS", "many")
    with pytest.raises(ToolError, match="TERNARYFLUX_THREADS"):
        resolve_threads(None)
    monkeypatch.delenv("TERNARYFLUX_THREADS")
    assert resolve_threads(None) == default_threads()
    before = torch.get_num_threads()
    try:
        assert main(["inspect", str(tiny["model"]), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["inspect", str(tiny["model"]), "--threads", "0"]) == 2
    finally:
        torch.set_num_threads(before)


def test_long_stages_show_progress_and_cpu_gets_a_size_warning(tiny, tmp_path):
    """calibrate ticks per Euler step (not per prompt) and warns at 1024 px on the CPU; eval has a bar."""
    r = subprocess.run(
        [
            *TOOL,
            "calibrate",
            "--model",
            str(tiny["model"]),
            "--synthetic",
            "--num-prompts",
            "1",
            "--steps",
            "4",
        ]
        + [
            "--record-steps",
            "0,2",
            "--size",
            "1024",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "c.safetensors"),
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "--size 256" in r.stderr and "4/4" in r.stderr, r.stderr
    rec = str(tiny["rec"][0])
    r = subprocess.run(
        [*TOOL, "eval", "--teacher", str(tiny["model"]), "--student", str(tiny["ternary"]), "--heldout", rec],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "eval t.safetensors" in r.stderr, r.stderr
    r = subprocess.run(
        [
            *TOOL,
            "eval",
            "--teacher",
            str(tiny["ternary"]),
            "--student",
            str(tiny["ternary"]),
            "--heldout",
            rec,
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "TernaryFLUX checkpoint" in r.stderr and "quantize" not in r.stderr, r.stderr


def test_inspect_names_the_missing_tensor_of_a_flux_file(tmp_path, capsys):
    sd = make_flux_state_dict(tiny_flux_config(), 0)
    del sd["double_blocks.0.img_mlp.0.weight"]
    save_file(sd, str(tmp_path / "broken.safetensors"))
    assert main(["inspect", str(tmp_path / "broken.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "not a TernaryFLUX checkpoint" not in err, err


def test_bitsandbytes_install_advice_does_not_leak(tiny, tmp_path):
    code = (
        "import logging, sys\n"
        "from ternaryflux.quantize_tool import cli\n"
        "rc = cli.main(['inspect', sys.argv[1]])\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('Please make sure you `pip install kernels`')\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tiny["model"])], capture_output=True, text=True)
    assert r.returncode == 0 and "pip install kernels" not in r.stderr, r.stderr


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_honour_the_umask(tiny, tmp_path, umask, mode):
    """Checkpoints and calibration files get 0666 minus the umask (mkstemp alone gives 0600, which a
    ComfyUI running as another user cannot read)."""
    old = os.umask(umask)
    try:
        q, c, cal = tmp_path / "q.safetensors", tmp_path / "c.safetensors", tmp_path / "cal.safetensors"
        assert main(["quantize", str(tiny["model"]), "-o", str(q), "--no-progress", "--no-hash"]) == 0
        assert main(["convert", str(q), "--to", "base3", "-o", str(c)]) == 0
        assert main(["calibrate", "--recorded", str(tiny["rec"][0]), "-o", str(cal)]) == 0
    finally:
        os.umask(old)
    for p in (q, c, cal):
        assert p.stat().st_mode & 0o777 == mode, (p.name, oct(p.stat().st_mode & 0o777))


def test_distill_evaluations_are_inside_progress_bars(tiny, tmp_path):
    cmd = [a for a in _distill_cmd(tiny, tmp_path / "p.safetensors", 2) if a != "--no-progress"]
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "distill: error before" in r.stderr and "distill: error after" in r.stderr, r.stderr


def test_calibrated_summary_shows_the_error_it_minimizes(tiny, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    argv = ["quantize", str(tiny["model"]), "--method", "calibrated", "--calibration", str(tiny["rec"][0])]
    assert main([*argv, "-o", str(out), "--no-progress", "--no-hash"]) == 0
    text = capsys.readouterr().out
    assert "mean block-output rel. err" in text and "what calibrated minimizes" in text
    assert " 0 MB/s" not in text
