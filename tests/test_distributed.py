"""quant/distributed.py with real processes: 2 ranks on gloo started by torchrun
(``python -m torch.distributed.run --nproc-per-node 2 --standalone``) running
tests/distributed_worker.py, a small block of two STE ternary layers trained the way distill
trains, against the same script run as one process.

Measured (torch 2.13 CPU, gloo, OMP_NUM_THREADS=1): with one sample per rank (global batch 2)
the data-parallel and the FSDP2-sharded runs give bitwise the 1-process weights and losses; with
two samples per rank (batch 4) the summation order differs, max |diff| 1.5e-8 on weights of
magnitude ~1 after 6 steps (tolerance here 1e-6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ternaryflux.quant import distributed as D
from ternaryflux.quant.errors import QuantizeError

WORKER = str(Path(__file__).with_name("distributed_worker.py"))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in D.ENV_VARS and k != D.KILL_HOOK_ENV}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args, env=None, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", WORKER]
    return subprocess.run(
        [*cmd, *map(str, args)], env=env or _env(), capture_output=True, text=True, timeout=180, **kw
    )


def one_process(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, WORKER, *map(str, args)], env=_env(), capture_output=True, text=True, timeout=120
    )


def _final(d: Path) -> dict:
    return torch.load(d / "final.pt", weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1-process runs, by (batch, steps)."""
    cache: dict[tuple[int, int], dict] = {}

    def get(batch: int, steps: int = 6) -> dict:
        if (batch, steps) not in cache:
            d = tmp_path_factory.mktemp(f"ref-b{batch}-s{steps}")
            r = one_process("train", "--batch", batch, "--steps", steps, "--out", d, "--state", d / "st.pt")
            assert r.returncode == 0, r.stderr
            cache[batch, steps] = _final(d)
        return cache[batch, steps]

    return get


def _assert_same(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    diff = [k for k in a["params"] if not torch.equal(a["params"][k], b["params"][k])]
    assert not diff, diff
    assert a["losses"] == b["losses"]


def test_one_process_world_without_torchrun(monkeypatch):
    for k in D.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    w = D.init_world("cpu")
    assert (w.rank, w.size, w.is_main, w.distributed) == (0, 1, True, False)
    assert D.local_positions([3, 1, 2], w) == [3, 1, 2]
    p = torch.nn.Parameter(torch.zeros(2))
    D.all_reduce_grads([p], w)
    assert p.grad is None and D.all_reduce_sum(0.5, w) == 0.5 and D.broadcast_object(7, w) == 7
    D.barrier(w)
    D.shutdown(w)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(QuantizeError, match="MASTER_ADDR is not: start distributed runs with torchrun"):
        D.init_world("cpu")


def test_primitives_two_ranks(tmp_path):
    r = torchrun("primitives", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [torch.load(tmp_path / f"prim-{i}.pt", weights_only=False) for i in range(2)]
    assert [g["world"] for g in got] == [(0, 2, 0, "cpu", "gloo"), (1, 2, 1, "cpu", "gloo")]
    assert [g["positions"] for g in got] == [[0, 2, 4], [1, 3, 5]]
    assert "not a multiple of the number of processes (2)" in got[0]["odd_batch"]
    assert "use --batch 2 or 4" in got[0]["odd_batch"]
    # the single-process sums of the same per-rank gradients, bitwise
    gens = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    a = [torch.randn(5, 7, generator=g) for g in gens]
    b = [torch.randn(3, generator=g).to(torch.bfloat16) for g in gens]
    c0 = torch.randn(4, generator=gens[0])
    for g in got:
        assert torch.equal(g["grads"]["a"], a[0] + a[1])
        assert g["grads"]["b"].dtype == torch.bfloat16 and torch.equal(g["grads"]["b"], b[0] + b[1])
        assert torch.equal(g["grads"]["c"], c0)  # missing on rank 1: zeros there
        assert g["grads"]["d"] is None  # missing everywhere: stays None, as in one process
        assert g["loss"] == 0.1 * 1 + 0.1 * 2
        assert g["bcast"] == {"from": 0}


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["none", "fsdp"])
def test_two_ranks_equal_one_process_bitwise(tmp_path, reference, shard):
    """One sample per rank (global batch 2): the 2-rank step is bitwise the 1-process step."""
    r = torchrun("train", "--shard", shard, "--batch", 2, "--out", tmp_path, "--state", tmp_path / "st.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same(_final(tmp_path), reference(2))


@pytest.mark.slow
def test_fsdp_two_samples_per_rank_within_tolerance(tmp_path, reference):
    r = torchrun("train", "--shard", "fsdp", "--batch", 4, "--out", tmp_path, "--state", tmp_path / "st.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    got, ref = _final(tmp_path), reference(4)
    worst = max((got["params"][k] - v).abs().max().item() for k, v in ref["params"].items())
    print(f"fsdp batch 4 vs 1 process: max |diff| {worst:.3g}")
    assert worst <= 1e-6
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-6)
    assert got["optimizer"] == "adamw"


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["none", "fsdp"])
def test_kill_one_rank_then_resume(tmp_path, reference, shard):
    """Rank 1 SIGKILLed after step 3 (state saved at step 2): torchrun stops the group, the
    survivor exits with one clear line or by torchrun's SIGTERM, the state file is the step-2 one
    (no temporary left, no output), and --resume gives the uninterrupted result bitwise."""
    state = tmp_path / "st.pt"
    args = ["train", "--shard", shard, "--batch", 2, "--save-every", 2, "--out", tmp_path, "--state", state]
    r = torchrun(*args, env=_env(**{D.KILL_HOOK_ENV: "1:3"}))
    assert r.returncode != 0
    assert "rank 1 kills itself" in r.stderr
    survivor = [ln for ln in r.stderr.splitlines() if ln.startswith("worker rank 0:")]
    assert not survivor or "another rank died or was stopped" in survivor[0] or "SIGTERM" in survivor[0], (
        survivor
    )
    assert "exitcode  : -9" in r.stderr  # torchrun names the killed rank
    assert torch.load(state, weights_only=False)["step"] == 2
    assert not (tmp_path / "final.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.pt"]
    r = torchrun(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    got = _final(tmp_path)
    ref = reference(2)
    assert got["losses"] == ref["losses"][2:]
    _assert_same({**got, "losses": []}, {**ref, "losses": []})


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_the_same_step(tmp_path, reference):
    """SIGTERM to torchrun (a scheduler's preemption): it forwards it to both ranks, they agree on
    the next step boundary, rank 0 saves that step, both exit as terminated; --resume finishes
    the run bitwise equal to the uninterrupted one."""
    state = tmp_path / "st.pt"
    args = ["train", "--batch", 2, "--steps", 20, "--save-every", 100, "--out", tmp_path, "--state", state]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", WORKER]
    proc = subprocess.Popen(
        [*cmd, *map(str, args), "--sleep", "0.3"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.strip() == "step 2" or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert sum("terminated (SIGTERM); state saved" in ln for ln in err.splitlines()) == 2, err[-2000:]
    step = torch.load(state, weights_only=False)["step"]
    assert 2 <= step < 20
    assert not (tmp_path / "final.pt").exists()
    r = torchrun(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    got, ref = _final(tmp_path), reference(2, 20)
    assert got["losses"] == ref["losses"][step:]
    _assert_same({**got, "losses": []}, {**ref, "losses": []})
