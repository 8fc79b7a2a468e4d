"""Ahead-of-time compile checks of the Triton kernels for named NVIDIA targets, without a GPU.

Every kernel (tiled GEMM A16 bf16/fp16/tf32 and A8 int8, the small-M kernel, the activation
quantizer) x every autotune config x per-channel / group-128 scales is compiled with
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cap, 32))``
and the ``ptxas`` shipped in the Triton wheel. Each compile yields (:class:`CompileResult`):

* registers, spill stores/loads and stack frame, from ``ptxas -v`` (the cache is bypassed:
  each check runs with a fresh ``TRITON_CACHE_DIR`` so ``ptxas`` really runs);
* shared memory (``metadata.shared``) against the target's per-block limit;
* the tensor-core instructions in the PTX (``mma.sync`` / ``wgmma.mma_async`` and their
  operand types) and, from the SASS (``cuobjdump -sass``), the static instruction count and
  the number of MMA instructions.

:func:`check` turns a result into failures: compile error, any spill, shared memory over the
limit, or missing tensor-core MMA of the expected type (int8 for A8, bf16/fp16/tf32 for A16;
the CUDA-core small-M path must have none).

``@triton.jit`` reads ``TRITON_INTERPRET`` when the kernel modules are imported, and tests run
under the interpreter, so :func:`compile_many` runs the compiles in a child Python process
(``python -m <this module>``) with ``TRITON_INTERPRET`` removed from its environment: it always
gets real JIT functions, whatever the calling process imported. Jobs go in as JSON on stdin,
results come back one JSON line each.

Signatures follow what the JIT would specialize for the FLUX shapes: 16-byte aligned pointers,
``N``, ``K``, strides divisible by 16, ``stride_sn == 1`` (per-channel) as a constant,
``EVEN_K`` true, ``SPLIT_K == 1``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from . import triton_common as tc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    name: str
    capability: int
    smem_limit: int
    """Maximum (opt-in) shared memory per thread block, bytes."""
    cards: str


KB = 1024
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("sm_80", 80, 163 * KB, "A100"),
        Target("sm_86", 86, 99 * KB, "RTX 3090 / A6000"),
        Target("sm_89", 89, 99 * KB, "RTX 4090 / L40"),
        Target("sm_90", 90, 227 * KB, "H100 / H200"),
        Target("sm_120", 120, 99 * KB, "RTX 5090"),
    )
}
"""Per-block shared-memory limits from the CUDA C++ Programming Guide (compute capabilities
table): 163 KB (8.0), 99 KB (8.6, 8.9, 12.0), 227 KB (9.0)."""

GEMM_KINDS = ("bf16", "fp16", "tf32", "int8")
GEMV_KINDS = ("bf16", "fp16", "fp32", "tf32", "int8")
"""Small-M kinds: ``fp32`` is fp32 x on the CUDA-core path (BLOCK_M <= 4), ``tf32`` fp32 x
through ``tl.dot`` (BLOCK_M = 16)."""
GEMV_BLOCK_MS = (1, 4, 16)
"""M blocks compiled for the small-M kernel: 1 (M = 1), 4 (the largest CUDA-core block),
16 (tensor cores). M = 2 sits between 1 and 4 on the same code path."""
GROUPS = (0, 128)
QUANT_BLOCKS = (4096, 16384)
"""Row blocks of the quantizer: next_power_of_2(K) for K = 3072/4096 and 12288/15360/16384."""
_PTR = {"bf16": "*bf16", "fp16": "*fp16", "tf32": "*fp32", "fp32": "*fp32", "int8": "*i8"}
_OUT = {"bf16": "*bf16", "fp16": "*fp16", "tf32": "*fp32", "fp32": "*fp32", "int8": "*bf16"}


@dataclass(frozen=True)
class Job:
    """One compile: a kernel variant with one config for one target."""

    kernel: str  # "gemm" | "gemv" | "quant"
    kind: str  # see GEMM_KINDS / GEMV_KINDS; quant: the input dtype (bf16/fp16/fp32)
    target: str
    group: int = 0  # 0: per-channel scales, else the group size
    config: tuple[int, ...] = ()  # gemm: (BM, BN, BK, warps, stages); gemv: (BN, BK, warps, stages)
    block_m: int = 0  # gemv only
    block: int = 0  # quant only

    @property
    def label(self) -> str:
        cfg = "x".join(map(str, self.config))
        extra = (
            f" M{self.block_m}"
            if self.kernel == "gemv"
            else f" B{self.block}"
            if self.kernel == "quant"
            else ""
        )
        grp = f" g{self.group}" if self.group else ""
        return f"{self.kernel} {self.kind}{grp}{extra} {cfg} {self.target}".replace("  ", " ")


@dataclass
class CompileResult:
    job: Job
    ok: bool = False
    error: str = ""
    seconds: float = 0.0
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack_frame: int = 0
    shared: int = 0
    ptx_mma: list[str] = field(default_factory=list)
    wgmma: bool = False
    mma_version: int = 0
    sass_instructions: int = 0
    sass_mma: int = 0
    loop_instructions: int = 0
    """SASS instructions in the main (K) loop body: the largest backward branch's span."""
    loop_mma: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["job"] = asdict(self.job)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CompileResult:
        j = dict(d["job"])
        j["config"] = tuple(j["config"])
        return cls(**{**d, "job": Job(**j)})


# ----------------------------------------------------------------------------- the matrix
def gemm_jobs(targets: Iterable[str], kinds: Iterable[str] = GEMM_KINDS, groups=GROUPS) -> list[Job]:
    out = []
    for t in targets:
        for kind in kinds:
            for g in groups:
                for cfg in tc.gemm_candidates():
                    if kind == "int8" and g and g % cfg[2]:
                        continue  # an A8 K tile must lie in one group: pruned by rule, not compiled
                    out.append(Job("gemm", kind, t, g, cfg))
    return out


def gemv_jobs(
    targets: Iterable[str], kinds: Iterable[str] = GEMV_KINDS, groups=GROUPS, block_ms=GEMV_BLOCK_MS
) -> list[Job]:
    out = []
    for t in targets:
        for kind in kinds:
            for bm in block_ms:
                use_dot = bm > 4
                if (kind == "fp32" and use_dot) or (kind == "tf32" and not use_dot):
                    continue
                for g in groups:
                    for cfg in tc.GEMV:
                        if not tc.gemv_block_ok(bm, cfg, use_dot):
                            continue
                        if kind == "int8" and use_dot and g and g % cfg[1]:
                            continue
                        out.append(Job("gemv", kind, t, g, cfg, block_m=bm))
    return out


def quant_jobs(targets: Iterable[str]) -> list[Job]:
    return [
        Job("quant", kind, t, 0, (8 if b >= 4096 else 4,), block=b)
        for t in targets
        for kind in ("bf16", "fp16", "fp32")
        for b in QUANT_BLOCKS
    ]


def full_matrix(targets: Iterable[str] | None = None) -> list[Job]:
    """Every kernel x config x kind x scale kind for the targets (default: all supported)."""
    ts = list(targets or supported_targets())
    return gemm_jobs(ts) + gemv_jobs(ts) + quant_jobs(ts)


# ----------------------------------------------------------------------------- checks
def expected_mma(job: Job) -> str | None:
    """Operand type the job's tensor-core MMA must have (``None``: no MMA expected)."""
    if job.kernel == "quant" or (job.kernel == "gemv" and job.block_m <= 4):
        return None
    return {"int8": "s8", "bf16": "bf16", "fp16": "f16", "tf32": "tf32"}[job.kind]


def check(res: CompileResult) -> list[str]:
    """Failures of one compile (empty: it passes)."""
    if not res.ok:
        return [f"compile error: {res.error.splitlines()[0] if res.error else '?'}"]
    fails = []
    if res.spill_stores or res.spill_loads:
        fails.append(f"register spill ({res.spill_stores} B stores, {res.spill_loads} B loads)")
    limit = TARGETS[res.job.target].smem_limit
    if res.shared > limit:
        fails.append(f"shared memory {res.shared / KB:.0f} KB > {limit // KB} KB")
    want = expected_mma(res.job)
    if want is None:
        if res.ptx_mma:
            fails.append(f"unexpected tensor-core MMA {res.ptx_mma}")
    elif not any(op.endswith(f".{want}") or f".{want}." in op for op in res.ptx_mma):
        fails.append(f"no {want} tensor-core MMA (found {res.ptx_mma or 'none'})")
    return fails


def wgmma_note(res: CompileResult) -> str:
    """sm_90: whether the tensor-core job uses wgmma, and the likely reason if not."""
    if res.job.target != "sm_90" or expected_mma(res.job) is None or not res.ok:
        return ""
    if res.wgmma:
        return "wgmma"
    warps = res.job.config[-2] if res.job.kernel != "quant" else 0
    if warps % 4:
        return f"mma.sync (v{res.mma_version}): {warps} warps is not a whole warpgroup"
    return f"mma.sync (v{res.mma_version}): the tile is too small for a warpgroup MMA (Triton picks v2)"


# ----------------------------------------------------------------------------- compiling
_PTXAS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers",
    re.S,
)
_PTX_MMA = re.compile(r"\b(wgmma\.mma_async[\w.]*|mma\.sync[\w.]*)")
_SASS_LINE = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[.\w]*\s*(?:!?U?P\w+,\s*)?(?:0x([0-9a-f]+))?"
)
_SASS_MMA = {"HMMA", "IMMA", "HGMMA", "IGMMA", "QMMA", "OMMA"}


def _jit_fn(obj: Any) -> Any:
    import triton

    while not isinstance(obj, triton.runtime.jit.JITFunction):
        obj = obj.fn
    return obj


def _spec(job: Job) -> tuple[Any, dict[str, str], dict[str, Any], set[str], dict[str, int]]:
    """(jit fn, signature types, constexprs, 16-divisible args, options) of a job."""
    if job.kernel == "quant":
        from . import triton_quant as q

        sig = {
            "x_ptr": _PTR[job.kind],
            "q_ptr": "*i8",
            "s_ptr": "*fp32",
            "K": "i32",
            "stride_xm": "i32",
            "stride_qm": "i32",
        }
        const = {"BLOCK": job.block, "ONE_PASS": True}
        return (
            q._quant_rows_kernel,
            sig,
            const,
            {"x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm"},
            {
                "num_warps": job.config[0],
                "num_stages": 1,
            },
        )
    int8 = job.kind == "int8"
    sig = {
        "x_ptr": _PTR[job.kind],
        "xs_ptr": "*fp32",
        "w_ptr": "*u8",
        "s_ptr": "*fp32",
        "b_ptr": _OUT[job.kind],
        "y_ptr": _OUT[job.kind],
        "M": "i32",
        "N": "i32",
        "K": "i32",
        "KPB": "i32",
        "stride_xm": "i32",
        "stride_wn": "i32",
        "stride_sn": "i32",
        "stride_ym": "i32",
        "M_BUCKET": "i32",
    }
    div16 = {
        "x_ptr",
        "xs_ptr",
        "w_ptr",
        "s_ptr",
        "b_ptr",
        "y_ptr",
        "N",
        "K",
        "KPB",
        "stride_xm",
        "stride_wn",
        "stride_ym",
    }
    const: dict[str, Any] = {
        "GROUP_SIZE": job.group,
        "HAS_BIAS": True,
        "HAS_XSCALE": int8,
        "INT8_DOT": int8 and (job.kernel == "gemm" or job.block_m > 4),
        "DOT_FP32": job.kind in ("tf32", "fp32"),
        "EVEN_K": True,
    }
    if job.group == 0:
        const["stride_sn"] = 1
        sig["stride_sn"] = "constexpr"
    if job.kernel == "gemm":
        from . import triton_gemm as g

        bm, bn, bk, warps, stages = job.config
        const.update(INPUT_PRECISION="tf32", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=tc.GEMM_GROUP_M)
        fn = g._ternary_gemm_kernel
    else:
        from . import triton_gemv as v

        bn, bk, warps, stages = job.config
        const.update(
            USE_DOT=job.block_m > 4,
            SPLIT_K=1,
            BLOCK_M=job.block_m,
            BLOCK_N=bn,
            BLOCK_K=bk,
            INPUT_PRECISION="tf32",
        )
        fn = v._ternary_gemv_kernel
    jit = _jit_fn(fn)
    const = {k: v for k, v in const.items() if k in jit.arg_names}
    for name in jit.arg_names:
        sig.setdefault(name, "constexpr")
    return fn, sig, const, div16, {"num_warps": warps, "num_stages": stages}


def _sass_counts(cubin: bytes) -> tuple[int, int, int, int]:
    """(instructions, MMA instructions, main-loop instructions, main-loop MMAs) of a cubin."""
    import triton.backends.nvidia as nv

    tool = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        r = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, timeout=120)
    instrs = []  # (address, opcode, branch target or None)
    for line in r.stdout.splitlines():
        m = _SASS_LINE.search(line)
        if m:
            target = int(m.group(3), 16) if m.group(2) == "BRA" and m.group(3) else None
            instrs.append((int(m.group(1), 16), m.group(2), target))
    ops = Counter(op for _, op, _ in instrs)
    loops = [(a - t, t, a) for a, op, t in instrs if t is not None and t < a]
    loop_n = loop_mma = 0
    if loops:
        _, lo, hi = max(loops)
        body = [op for a, op, _ in instrs if lo <= a <= hi]
        loop_n, loop_mma = len(body), sum(op in _SASS_MMA for op in body)
    return sum(ops.values()), sum(v for k, v in ops.items() if k in _SASS_MMA), loop_n, loop_mma


def compile_one(job: Job, sass: bool = True) -> CompileResult:
    """Compile one job in *this* process (it must not be interpreting). See :func:`compile_many`."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    if tc.interpreting():
        raise RuntimeError("compile_one needs real JIT functions: run it with TRITON_INTERPRET unset")
    res = CompileResult(job)
    t0 = time.perf_counter()
    try:
        fn, sig, const, div16, opts = _spec(job)
        jit = _jit_fn(fn)
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(jit.arg_names) if a in div16}
        knobs.nvidia.dump_ptxas_log = True
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            kern = triton.compile(
                triton.compiler.ASTSource(jit, sig, const, attrs),
                target=GPUTarget("cuda", TARGETS[job.target].capability, 32),
                options=opts,
            )
    except Exception as e:  # a compile error is a result, not a crash of the check
        res.error = f"{type(e).__name__}: {e}"[:4000]
        res.seconds = time.perf_counter() - t0
        return res
    res.seconds = time.perf_counter() - t0
    m = _PTXAS.search(buf.getvalue())
    if m is None:
        res.error = "no ptxas -v report (cached compile?)"
        return res
    res.ok = True
    res.stack_frame, res.spill_stores, res.spill_loads, res.registers = map(int, m.groups())
    res.shared = int(kern.metadata.shared)
    ptx = kern.asm["ptx"]
    res.ptx_mma = sorted({op for op in _PTX_MMA.findall(ptx) if not op.endswith(("fence", "sync.aligned"))})
    res.ptx_mma = [op for op in res.ptx_mma if op.startswith(("mma.sync.aligned.m", "wgmma.mma_async"))]
    res.wgmma = any(op.startswith("wgmma.mma_async") for op in res.ptx_mma)
    v = re.search(r"nvidia_mma<\{versionMajor = (\d)", kern.asm.get("ttgir", ""))
    res.mma_version = int(v.group(1)) if v else 0
    if sass:
        counts = _sass_counts(kern.asm["cubin"])
        res.sass_instructions, res.sass_mma, res.loop_instructions, res.loop_mma = counts
    return res


def supported_targets() -> list[str]:
    """The targets of :data:`TARGETS` the installed Triton's CUDA backend can compile for."""
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability
    except Exception:  # Triton missing or without its NVIDIA backend
        return []
    out = []
    for name, t in TARGETS.items():
        try:
            sm_arch_from_capability(t.capability)
        except Exception:
            continue
        out.append(name)
    return out


def _worker() -> None:
    """Child-process entry: JSON list of jobs on stdin, one JSON result per line on stdout."""
    jobs = [Job(**{**j, "config": tuple(j["config"])}) for j in json.load(sys.stdin)]
    sass = os.environ.get("TERNARYFLUX_AOT_SASS", "1") == "1"
    out = sys.stdout
    for job in jobs:
        with contextlib.redirect_stdout(sys.stderr):  # Triton/ptxas chatter must not mix in
            res = compile_one(job, sass=sass)
        out.write(json.dumps(res.to_json()) + "\n")
        out.flush()


def compile_many(
    jobs: list[Job],
    sass: bool = True,
    progress: Callable[[int, int, CompileResult], None] | None = None,
    timeout_s: float | None = None,
) -> list[CompileResult]:
    """Compile jobs in one child process with ``TRITON_INTERPRET`` unset and a fresh Triton
    cache (so ``ptxas`` runs and reports). ``progress(i, n, result)`` is called per result."""
    return list(iter_compile(jobs, sass, progress, timeout_s))


def iter_compile(
    jobs: list[Job],
    sass: bool = True,
    progress: Callable[[int, int, CompileResult], None] | None = None,
    timeout_s: float | None = None,
) -> Iterator[CompileResult]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["TERNARYFLUX_AOT_SASS"] = "1" if sass else "0"
    with tempfile.TemporaryDirectory(prefix="ternaryflux-aot-") as cache:
        env["TRITON_CACHE_DIR"] = cache
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps([asdict(j) for j in jobs]))
        proc.stdin.close()
        t0 = time.monotonic()
        n = 0
        try:
            for line in proc.stdout:
                res = CompileResult.from_json(json.loads(line))
                n += 1
                if progress is not None:
                    progress(n, len(jobs), res)
                yield res
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    log.warning("AOT check stopped after %.0f s (%d of %d jobs)", timeout_s, n, len(jobs))
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if n < len(jobs) and proc.returncode not in (0, -9):
            raise RuntimeError(
                f"AOT worker exited with status {proc.returncode} after {n} of {len(jobs)} jobs"
            )


# ----------------------------------------------------------------------------- summaries
def passed_tables(results: Iterable[CompileResult]) -> tuple[dict, dict]:
    """(GEMM_PASSED, GEMV_PASSED) as in :mod:`.triton_common`, from a full matrix's results."""
    gemm: dict[tuple[str, str, bool], set] = {}
    gemv: dict[tuple[str, str, bool, int], set] = {}
    for r in results:
        j = r.job
        if j.kernel == "gemm":
            s = gemm.setdefault((j.target, j.kind, j.group > 0), set())
        elif j.kernel == "gemv":
            s = gemv.setdefault((j.target, j.kind, j.group > 0, j.block_m), set())
        else:
            continue
        if not check(r):
            s.add(j.config)
    return gemm, gemv


def format_table(gemm: dict, gemv: dict) -> str:
    """Python source of the two tables, for pasting into triton_common.py."""
    lines = ["GEMM_PASSED: dict[tuple[str, str, bool], set[tuple[int, int, int, int, int]]] = {"]
    for key in sorted(gemm):
        lines.append(f"    {key!r}: {{{', '.join(map(repr, sorted(gemm[key])))}}},")
    lines.append("}")
    lines.append("GEMV_PASSED: dict[tuple[str, str, bool, int], set[tuple[int, int, int, int]]] = {")
    for key in sorted(gemv):
        lines.append(f"    {key!r}: {{{', '.join(map(repr, sorted(gemv[key])))}}},")
    lines.append("}")
    return "\n".join(lines)


if __name__ == "__main__":
    _worker()
