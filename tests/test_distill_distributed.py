"""`torchrun --nproc-per-node 2 -m ternaryflux distill` (gloo, CPU) against the one-process run
with the same global batch: the checkpoint is byte-identical (one sample per rank: the summed
gradient is bitwise the accumulated one), and a run whose rank 1 is SIGKILLed mid-run, resumed
with --resume, writes the same file again."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.calibration_data import write_calibration
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config
from ternaryflux.quant import distributed as D
from ternaryflux.quant.testing import trajectory_calibration
from ternaryflux.quantize_tool.cli import main

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddistill")
    sd = make_flux_state_dict(tiny_flux_config(), 0)
    save_file(sd, str(d / "flux.safetensors"))
    cal = trajectory_calibration(sd, 2, size=64, steps=8, record=(0, 2, 4, 6), seed=1)
    write_calibration(d / "cal.safetensors", cal, {"source": "synthetic"})
    argv = ["quantize", str(d / "flux.safetensors"), "--method", "twn", "-o", str(d / "student.safetensors")]
    assert main([*argv, "--no-progress", "--threads", "1"]) == 0
    return d


@pytest.fixture(scope="module", params=["resident", "streamed"])
def mode(request):
    return request.param


def _argv(d, out, *extra, mode="resident"):
    return [
        "distill", "--memory", mode, "--cache-dir", str(d / "cache"), "--teacher", str(d / "flux.safetensors"), "--student", str(d / "student.safetensors"),
        "--calibration", str(d / "cal.safetensors"), "-o", str(out), "--steps", "6", "--block-steps", "3",
        "--batch", "2", "--seed", "3", "--save-every", "2", "--no-progress", "--threads", "1", *extra,
    ]  # fmt: skip


def _run(prefix, argv, **env):
    e = {k: v for k, v in os.environ.items() if k not in D.ENV_VARS and k != D.KILL_HOOK_ENV}
    e = {**e, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([*prefix, *argv], env=e, capture_output=True, text=True, timeout=300)


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def one_process(fx, mode):
    out = fx / f"one-{mode}.safetensors"
    r = _run([sys.executable, "-m", "ternaryflux"], _argv(fx, out, mode=mode))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_two_ranks_write_the_one_process_checkpoint(fx, mode, one_process, tmp_path):
    out = tmp_path / "two.safetensors"
    r = _run([*TORCHRUN, "-m", "ternaryflux"], _argv(fx, out, mode=mode))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ternaryflux distill") == 1  # rank 0 reports, once
    assert "2 (gloo), 1 sample(s) each per step" in r.stdout
    assert _sha(out) == _sha(one_process)
    assert not list(tmp_path.glob("*.distill-state*"))


def test_batch_not_a_multiple_of_the_ranks_is_refused(fx, tmp_path):
    out = tmp_path / "odd.safetensors"
    r = _run([*TORCHRUN, "-m", "ternaryflux"], [*_argv(fx, out), "--batch", "3"])
    assert r.returncode != 0 and not out.exists()
    assert "multiple of the number of processes (2)" in r.stderr


def test_kill_one_rank_then_resume_writes_the_same_checkpoint(fx, mode, one_process, tmp_path):
    out = tmp_path / "killed.safetensors"
    state = tmp_path / ("killed.distill-state.pt" if mode == "resident" else "killed.distill-state")
    r = _run([*TORCHRUN, "-m", "ternaryflux"], _argv(fx, out, mode=mode), **{D.KILL_HOOK_ENV: "1:3"})
    assert r.returncode != 0 and "rank 1 kills itself" in r.stderr
    assert "exitcode  : -9" in r.stderr
    survivor = [ln for ln in r.stderr.splitlines() if ln.startswith("ternaryflux distill:")]
    assert all("another rank died or was stopped" in ln or "SIGTERM" in ln for ln in survivor), survivor
    assert not out.exists() and state.exists()
    if mode == "resident":
        assert torch.load(state, weights_only=False)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.name]  # no temporaries left
    r = _run([*TORCHRUN, "-m", "ternaryflux"], [*_argv(fx, out, mode=mode), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _sha(out) == _sha(one_process)
    assert load_checkpoint(out).metadata.method == "twn+distill"


def test_sigterm_to_torchrun_stops_both_ranks_with_the_state_saved(fx, tmp_path):
    import signal
    import time

    out = tmp_path / "term.safetensors"
    state = tmp_path / "term.distill-state.pt"
    argv = [*_argv(fx, out), "--steps", "3000", "--save-every", "20"]
    e = {k: v for k, v in os.environ.items() if k not in D.ENV_VARS and k != D.KILL_HOOK_ENV}
    proc = subprocess.Popen(
        [*TORCHRUN, "-m", "ternaryflux", *argv],
        env={**e, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # training has started once the first state is saved
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.startswith("ternaryflux distill: terminated (SIGTERM)")]
    assert len(lines) == 2, err[-3000:]  # both ranks, each with the resume hint
    assert all("--resume" in ln for ln in lines)
    assert not out.exists() and 20 <= torch.load(state, weights_only=False)["step"] < 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.name]


def test_fsdp_two_ranks_write_the_one_process_checkpoint(fx, tmp_path):
    """--shard fsdp (FSDP2 over the trained block, torch AdamW): the same checkpoint as one
    process with --optimizer adamw and the same global batch."""
    one = tmp_path / "one.safetensors"
    r = _run([sys.executable, "-m", "ternaryflux"], _argv(fx, one, "--optimizer", "adamw", mode="streamed"))
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two.safetensors"
    r = _run([*TORCHRUN, "-m", "ternaryflux"], _argv(fx, two, "--shard", "fsdp", mode="streamed"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "using torch AdamW" in r.stderr
    a, b = load_checkpoint(one).state_dict, load_checkpoint(two).state_dict
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_fsdp_needs_the_streamed_run(fx, tmp_path):
    out = tmp_path / "x.safetensors"
    r = _run([sys.executable, "-m", "ternaryflux"], _argv(fx, out, "--shard", "fsdp", mode="resident"))
    assert r.returncode == 2 and "use it with --memory streamed" in r.stderr and not out.exists()
