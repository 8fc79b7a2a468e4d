"""Ahead-of-time compile checks of the Triton kernels for real NVIDIA targets, no GPU needed.

A representative subset of ``bench/aot_check.py``'s matrix (the full one is ~1,300 compiles):
for every supported target, the first config the pruned autotune tables offer for the main
routes (A16 bf16 / A8 int8 GEMM, per-channel and group 128; the small-M kernel at M = 1 and
M = 16; the quantizer) is compiled with the Triton wheel's ptxas and must not spill, must fit
the target's shared memory and must issue the expected tensor-core MMA. Two known-bad combos
prove the check catches a shared-memory overflow and a register spill. The compiles run in a
child process with TRITON_INTERPRET unset (kernels/aot.py).
"""

import pytest

pytest.importorskip("triton")

from ternaryflux.kernels import aot  # noqa: E402
from ternaryflux.kernels import triton_common as tc  # noqa: E402

TARGETS = aot.supported_targets()
pytestmark = pytest.mark.skipif(not TARGETS, reason="Triton without its NVIDIA backend")


def _subset() -> list[aot.Job]:
    jobs = []
    for t in TARGETS:
        for kind, group in (("bf16", 0), ("bf16", 128), ("int8", 0), ("int8", 128)):
            cfg = tc.allowed_gemm(t, kind, group > 0, 4096)
            cfg = [c for c in cfg if not (kind == "int8" and group and group % c[2])]
            jobs.append(aot.Job("gemm", kind, t, group, cfg[0]))
        jobs.append(aot.Job("gemm", "bf16", t, 0, tc.allowed_gemm(t, "bf16", False, 256)[0]))
        jobs.append(aot.Job("gemv", "bf16", t, 0, tc.allowed_gemv(t, "bf16", False, 1)[0], block_m=1))
        cfg16 = [c for c in tc.allowed_gemv(t, "int8", True, 16) if 128 % c[1] == 0]
        jobs.append(aot.Job("gemv", "int8", t, 128, cfg16[0], block_m=16))
    jobs.append(aot.Job("quant", "bf16", TARGETS[0], 0, (8,), block=16384))
    return jobs


# known-bad: a 256-wide K tile of bf16 activations, 3 stages, needs ~200 KB of shared memory
SMEM_BAD = aot.Job("gemm", "bf16", "sm_89", 128, (128, 128, 256, 8, 3))
# known-bad: a 4 x 64 x 128 fp32 register accumulator on 4 warps (256 registers a thread;  the rule gemv_block_ok forbids)
SPILL_BAD = aot.Job("gemv", "fp32", "sm_80", 0, (64, 512, 4, 1), block_m=4)


@pytest.fixture(scope="module")
def results() -> dict[aot.Job, aot.CompileResult]:
    jobs = _subset() + [j for j in (SMEM_BAD, SPILL_BAD) if j.target in TARGETS]
    return {r.job: r for r in aot.compile_many(jobs, sass=False)}


def test_allowed_configs_compile_clean_for_every_target(results):
    failures = {
        f"{r.job.label} ({r.registers} regs, {r.shared // 1024} KB)": aot.check(r)
        for job, r in results.items()
        if job not in (SMEM_BAD, SPILL_BAD) and aot.check(r)
    }
    assert not failures, failures
    assert {j.target for j in results} >= set(TARGETS)


def test_tensor_core_instructions(results):
    for job, r in results.items():
        if job.kernel != "gemm":
            continue
        want = "s8" if job.kind == "int8" else "bf16"
        assert any(want in op for op in r.ptx_mma), (job.label, r.ptx_mma)
        if job.target == "sm_90" and job.kind == "bf16":
            assert r.wgmma, f"{job.label}: {aot.wgmma_note(r)}"


def test_check_catches_smem_overflow_and_spill(results):
    if SMEM_BAD in results:
        r = results[SMEM_BAD]
        assert r.ok and r.shared > aot.TARGETS["sm_89"].smem_limit
        assert any("shared memory" in f for f in aot.check(r))
    if SPILL_BAD in results:
        r = results[SPILL_BAD]
        assert r.ok and r.spill_stores > 0
        assert any("spill" in f for f in aot.check(r))
        assert not tc.gemv_block_ok(4, SPILL_BAD.config, use_dot=False)


def test_every_candidate_config_can_be_picked_somewhere():
    """A config in the autotune lists that no (target, kind, scales) table allows is dead."""
    if not tc.GEMM_PASSED:
        pytest.skip("no AOT tables recorded")
    allowed = set().union(*tc.GEMM_PASSED.values())
    dead = [c for c in tc.gemm_candidates() if c not in allowed]
    assert not dead, f"GEMM configs no target can use: {dead}"
    allowed_v = set().union(*tc.GEMV_PASSED.values())
    dead_v = [c for c in tc.GEMV if c not in allowed_v]
    assert not dead_v, f"small-M configs no target can use: {dead_v}"
    for key, cfgs in tc.GEMM_PASSED.items():
        assert cfgs <= set(tc.gemm_candidates()), key
