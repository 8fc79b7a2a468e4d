"""Self-distillation: improves its starting point, and a killed/stopped run resumed with
--resume gives bit-identical tensors to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.quant.testing import write_structured_fixture
from ternaryflux.quantize_tool.cli import main


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    fx = write_structured_fixture(d, cal_prompts=12, held_prompts=6)
    fx["student"] = d / "calibrated.safetensors"
    fx["cache"] = d / "teacher-cache"  # shared by the tests: the second run reuses it
    argv = [
        "quantize",
        str(fx["model"]),
        "--method",
        "calibrated",
        "--calibration",
        str(fx["cal"]),
        "-o",
        str(fx["student"]),
        "--no-progress",
    ]
    assert main(argv) == 0
    return fx


def _distill_argv(fx, out, steps, *extra):
    return [
        "distill", "--teacher", str(fx["model"]), "--student", str(fx["student"]), "--calibration", str(fx["cal"]),
        "--heldout", str(fx["held"]), "-o", str(out), "--steps", str(steps), "--no-progress",
        "--cache-dir", str(fx["cache"]), *extra,
    ]  # fmt: skip


def test_distill_improves_on_its_starting_point(fixture, tmp_path):
    out = tmp_path / "distilled.safetensors"
    assert main(_distill_argv(fixture, out, 60, "--save-every", "1000")) == 0
    rep = json.loads(out.with_name("distilled.report.json").read_text())
    before, after = rep["velocity_rel_err_before"], rep["velocity_rel_err_after"]
    print(f"held-out velocity rel. err: calibrated {before:.4f} -> distilled {after:.4f}")
    assert rep["eval_on"] == "heldout"
    assert after < before - 0.005, (before, after)
    ck = load_checkpoint(out)
    assert ck.metadata.method == "calibrated+distill" and ck.metadata.method_params["distill"]["steps"] == 60
    losses = [h["loss"] for h in rep["loss_history"] if h["phase"] == "e2e"]
    assert sum(losses[-10:]) < sum(losses[:10])


def _run(argv, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "ternaryflux.quantize_tool.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )


def _same(a, b):
    sa, sb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, diff[:5]


def test_resume_after_stop_equals_uninterrupted(fixture, tmp_path):
    steps = ["--block-steps", "3", "--save-every", "2", "--seed", "5", "--batch", "2"]
    full = tmp_path / "full.safetensors"
    r = _run(_distill_argv(fixture, full, 8, *steps))
    assert r.returncode == 0, r.stderr
    part = tmp_path / "part.safetensors"
    r = _run(_distill_argv(fixture, part, 8, *steps, "--stop-after-steps", "5"))
    assert r.returncode == 0 and "stopped after step 5" in r.stdout, r.stderr
    assert not part.exists()
    # a resume with different settings is refused (while the state exists: it is removed on success)
    r = _run(_distill_argv(fixture, part, 8, "--seed", "6", "--resume"))
    assert r.returncode == 2 and "different settings" in r.stderr
    r = _run(_distill_argv(fixture, part, 8, *steps, "--resume"))
    assert r.returncode == 0, r.stderr
    _same(full, part)


def test_resume_after_kill_equals_uninterrupted(fixture, tmp_path):
    steps = ["--save-every", "2", "--seed", "1", "--block-steps", "4"]
    full = tmp_path / "full.safetensors"
    assert _run(_distill_argv(fixture, full, 12, *steps)).returncode == 0
    out = tmp_path / "killed.safetensors"
    state = tmp_path / "killed.distill-state"  # --memory streamed (the default): a folder
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ternaryflux.quantize_tool.cli", *_distill_argv(fixture, out, 12, *steps)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def saved() -> list[str]:
        return sorted(p.name for p in state.glob("*.pt")) if state.is_dir() else []

    deadline = time.time() + 120
    while not saved() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert saved() and not out.exists(), saved()
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]
    r = _run(_distill_argv(fixture, out, 12, *steps, "--resume"))
    assert r.returncode == 0, r.stderr
    _same(full, out)


def test_streamed_equals_resident(fixture, tmp_path):
    """The bounded-memory run (teacher cached, one block trained at a time, paged end-to-end
    phase) is the resident run's math: same checkpoint bit for bit, same losses."""
    common = ["--steps", "5", "--block-steps", "2", "--batch", "2", "--seed", "3", "--save-every", "100"]
    outs = {}
    for mem in ("resident", "streamed"):
        outs[mem] = tmp_path / f"{mem}.safetensors"
        assert (
            main(_distill_argv(fixture, outs[mem], 5, *common, "--memory", mem, "--cache-dtype", "float32"))
            == 0
        )
    _same(outs["resident"], outs["streamed"])
    rep = {m: json.loads(o.with_name(f"{m}.report.json").read_text()) for m, o in outs.items()}
    e2e = {m: [h["loss"] for h in r["loss_history"] if h["phase"] == "e2e"] for m, r in rep.items()}
    assert len(e2e["streamed"]) == 3 and e2e["streamed"] == e2e["resident"]
    # resident evaluates its in-memory student (float32 scales), streamed the written checkpoint
    # (float16 scales): the same weights up to the scale rounding
    assert rep["streamed"]["velocity_rel_err_after"] == pytest.approx(
        rep["resident"]["velocity_rel_err_after"], rel=1e-4
    )
    assert load_checkpoint(outs["streamed"]).metadata.method_params["distill"]["memory"] == "streamed"


def test_resume_refuses_a_changed_teacher(fixture, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(fixture["model"].read_bytes())
    out = tmp_path / "d.safetensors"
    argv = _distill_argv(fixture, out, 6, "--block-steps", "2", "--save-every", "1")
    argv[argv.index("--teacher") + 1] = str(teacher)
    assert main([*argv, "--stop-after-steps", "3"]) == 0 and not out.exists()
    from safetensors.torch import load_file, save_file

    sd = load_file(str(teacher))
    k = next(k for k in sd if k.endswith("img_attn.qkv.weight"))
    sd[k] = sd[k] * 1.01
    save_file(sd, str(teacher))
    r = _run([*argv, "--resume"])
    assert r.returncode == 2 and "different settings" in r.stderr and "teacher_sha256" in r.stderr, r.stderr
    assert not out.exists()
