"""Ahead-of-time compile check of every Triton kernel for every supported NVIDIA target, no GPU.

    python bench/aot_check.py                      # full matrix -> bench/results/aot-<triton>.json
    python bench/aot_check.py --targets sm_89 --kernels gemm --out /tmp/aot.json
    python bench/aot_check.py --from-json bench/results/aot-3.7.1.json --emit-table

Compiles (``kernels/aot.py``) each kernel x autotune config x operand kind x per-channel /
group-128 scales for sm_80, sm_86, sm_89, sm_90, sm_120 (those the installed Triton supports)
with the ptxas shipped in the Triton wheel, and reports per compile: registers, spills, shared
memory vs the target's per-block limit, the tensor-core instructions (PTX) and static SASS
counts. A compile *fails* on a compile error, any spill, shared memory over the limit, or a
missing / unexpected tensor-core MMA. Failing combos are expected in the candidate matrix: the
autotune lists are pruned per target to the passing ones (``GEMM_PASSED`` / ``GEMV_PASSED`` in
``kernels/triton_common.py``; ``--emit-table`` prints them). The exit status is 1 if a config
the pruned tables allow fails, or an allowed (target, kind, scale, M) route is left with no
config. Run it with ``nice``: the full matrix is ~2,000 compiles (~1-2 s each, one core).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from ternaryflux.kernels import aot
from ternaryflux.kernels import triton_common as tc

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="*", default=None, help="subset of " + ", ".join(aot.TARGETS))
    p.add_argument(
        "--kernels", nargs="*", default=["gemm", "gemv", "quant"], choices=["gemm", "gemv", "quant"]
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/aot-<triton>.json)"
    )
    p.add_argument(
        "--from-json", type=Path, default=None, help="re-report an earlier run instead of compiling"
    )
    p.add_argument("--emit-table", action="store_true", help="print GEMM_PASSED / GEMV_PASSED as Python")
    p.add_argument("--no-sass", action="store_true", help="skip the SASS instruction counts (faster)")
    p.add_argument(
        "--markdown", action="store_true", help="print the summary and main-config tables as Markdown"
    )
    return p.parse_args(argv)


def allowed(r: aot.CompileResult) -> bool:
    """Does the pruned table in triton_common let the autotuner pick this combo?"""
    j = r.job
    if j.kernel == "gemm":
        cfgs = set(tc.allowed_gemm(j.target, j.kind, j.group > 0, 512)) | set(
            tc.allowed_gemm(j.target, j.kind, j.group > 0, 256)
        )
        return j.config in cfgs
    if j.kernel == "gemv":
        return j.config in tc.allowed_gemv(j.target, j.kind, j.group > 0, j.block_m)
    return True


def summarize(results: list[aot.CompileResult]) -> dict:
    per_target: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        c = per_target[r.job.target]
        fails = aot.check(r)
        c["combos"] += 1
        c["compile_ok"] += r.ok
        c["spill"] += r.ok and bool(r.spill_stores or r.spill_loads)
        c["smem_over"] += r.ok and r.shared > aot.TARGETS[r.job.target].smem_limit
        c["mma_fail"] += any("MMA" in f for f in fails)
        c["pass"] += not fails
        c["allowed"] += allowed(r)
        c["allowed_fail"] += allowed(r) and bool(fails)
    return {t: dict(c) for t, c in per_target.items()}


def empty_routes(targets: list[str]) -> list[str]:
    """(target, kind, scales, M) routes the pruned tables leave without any config."""
    out = []
    for t in targets:
        for kind in aot.GEMM_KINDS:
            for g in (False, True):
                for mb in (256, 512):
                    if not tc.allowed_gemm(t, kind, g, mb):
                        out.append(
                            f"gemm {t} {kind} {'group' if g else 'channel'} M{'>=512' if mb >= 512 else '<512'}"
                        )
        for kind in ("bf16", "fp16", "int8"):
            for g in (False, True):
                for bm in (1, 2, 4, 16):
                    if not tc.allowed_gemv(t, kind, g, bm):
                        out.append(f"gemv {t} {kind} {'group' if g else 'channel'} M{bm}")
    return out


def print_report(results: list[aot.CompileResult]) -> None:
    print(f"{'combo':<44} {'regs':>4} {'spill':>6} {'smem KB':>7} {'SASS':>6} {'/MMA':>5}  verdict")
    for r in results:
        fails = aot.check(r)
        per = f"{r.sass_instructions / r.sass_mma:5.1f}" if r.sass_mma else "    -"
        note = aot.wgmma_note(r)
        verdict = "; ".join(fails) if fails else "ok"
        print(
            f"{r.job.label:<44} {r.registers:>4} {r.spill_stores:>6} {r.shared / 1024:>7.0f} "
            f"{r.sass_instructions:>6} {per}  {verdict}{'  [' + note + ']' if note else ''}"
        )


def main_configs(results: list[aot.CompileResult]) -> list[tuple[str, aot.CompileResult]]:
    """Per target, the result of the config the pruned tables offer first on the main routes."""
    by = {
        (r.job.kernel, r.job.kind, r.job.target, r.job.group, r.job.config, r.job.block_m): r for r in results
    }
    out = []
    for t in sorted({r.job.target for r in results}, key=lambda t: aot.TARGETS[t].capability):
        routes = [
            ("GEMM A16 bf16, M >= 512", "gemm", "bf16", 0, tc.allowed_gemm(t, "bf16", False, 4096), 0),
            ("GEMM A16 bf16 g128, M >= 512", "gemm", "bf16", 128, tc.allowed_gemm(t, "bf16", True, 4096), 0),
            ("GEMM A8, M >= 512", "gemm", "int8", 0, tc.allowed_gemm(t, "int8", False, 4096), 0),
            ("GEMM A16 bf16, M = 256", "gemm", "bf16", 0, tc.allowed_gemm(t, "bf16", False, 256), 0),
            ("small-M bf16, M = 1", "gemv", "bf16", 0, tc.allowed_gemv(t, "bf16", False, 1), 1),
            ("small-M A8, M = 16", "gemv", "int8", 0, tc.allowed_gemv(t, "int8", False, 16), 16),
        ]
        for label, kernel, kind, group, cfgs, bm in routes:
            r = by.get((kernel, kind, t, group, cfgs[0], bm)) if cfgs else None
            if r is not None:
                out.append((label, r))
    return out


def print_markdown(results: list[aot.CompileResult], summary: dict) -> None:
    print(
        "| target | cards | smem limit | combos | compile | spill | over smem | MMA check fails | pass | allowed after pruning (failing) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, c in sorted(summary.items(), key=lambda kv: aot.TARGETS[kv[0]].capability):
        tg = aot.TARGETS[t]
        print(
            f"| {t} | {tg.cards} | {tg.smem_limit // 1024} KB | {c.get('combos', 0)} | {c.get('compile_ok', 0)} | "
            f"{c.get('spill', 0)} | {c.get('smem_over', 0)} | {c.get('mma_fail', 0)} | {c.get('pass', 0)} | "
            f"{c.get('allowed', 0)} ({c.get('allowed_fail', 0)}) |"
        )
    print()
    print(
        "| target | route | first config | registers | spill | smem KB | main-loop SASS / K tile | MMAs in loop | SASS per MMA | tensor-core op |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, r in main_configs(results):
        per = f"{r.loop_instructions / r.loop_mma:.1f}" if r.loop_mma else "-"
        op = (
            ", ".join(
                o.replace("mma.sync.aligned.", "mma.").replace("wgmma.mma_async.sync.aligned.", "wgmma.")
                for o in r.ptx_mma
            )
            or "none (CUDA cores)"
        )
        cfg = "x".join(map(str, r.job.config[:-2])) + f" w{r.job.config[-2]} s{r.job.config[-1]}"
        print(
            f"| {r.job.target} | {label} | {cfg} | {r.registers} | {r.spill_stores} | {r.shared / 1024:.0f} | "
            f"{r.loop_instructions or '-'} | {r.loop_mma or '-'} | {per} | {op} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import triton

    if args.from_json:
        data = json.loads(args.from_json.read_text())
        results = [aot.CompileResult.from_json(d) for d in data["results"]]
        targets = sorted({r.job.target for r in results})
    else:
        targets = args.targets or aot.supported_targets()
        unknown = [t for t in targets if t not in aot.TARGETS]
        if unknown or not targets:
            print(
                f"unknown or no targets {unknown or targets}; supported: {aot.supported_targets()}",
                file=sys.stderr,
            )
            return 2
        jobs = []
        if "gemm" in args.kernels:
            jobs += aot.gemm_jobs(targets)
        if "gemv" in args.kernels:
            jobs += aot.gemv_jobs(targets)
        if "quant" in args.kernels:
            jobs += aot.quant_jobs(targets)
        # the routes FLUX runs first (bf16 and int8), so an interrupted run has them
        prio = {"bf16": 0, "int8": 0, "fp16": 1, "tf32": 2, "fp32": 2}
        jobs.sort(key=lambda j: (prio.get(j.kind, 3), j.kernel != "gemm"))
        out = args.out or RESULTS / f"aot-{triton.__version__}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        results = []

        def save(complete: bool) -> None:
            done = sorted({r.job.target for r in results})
            doc = {
                "triton": triton.__version__,
                "python": platform.python_version(),
                "complete": complete,
                "jobs": len(jobs),
                "targets": {
                    t: {
                        "capability": aot.TARGETS[t].capability,
                        "smem_limit": aot.TARGETS[t].smem_limit,
                        "cards": aot.TARGETS[t].cards,
                    }
                    for t in targets
                },
                "seconds": round(time.monotonic() - t0, 1),
                "summary": summarize(results),
                "no_config_left": empty_routes(done)
                if complete and set(args.kernels) >= {"gemm", "gemv"}
                else [],
                "results": [r.to_json() for r in results],
            }
            out.write_text(json.dumps(doc, indent=0))

        for i, r in enumerate(aot.iter_compile(jobs, sass=not args.no_sass), 1):
            results.append(r)
            if i % 25 == 0 or i == len(jobs):
                print(
                    f"[{i}/{len(jobs)}] {time.monotonic() - t0:.0f} s  {r.job.label}",
                    file=sys.stderr,
                    flush=True,
                )
                save(complete=False)
        elapsed = time.monotonic() - t0
        save(complete=len(results) == len(jobs))
    print_report(results)
    summary = summarize(results)
    print(
        "\n== per target: combos, compiled, spilling, over shared memory, MMA check failures, passing;"
        " allowed by the pruned tables (and of those failing)"
    )
    for t, c in summary.items():
        print(
            f"{t:>7}: {c.get('combos', 0):4d} combos, {c.get('compile_ok', 0):4d} compile, {c.get('spill', 0):4d} spill, "
            f"{c.get('smem_over', 0):4d} over smem, {c.get('mma_fail', 0):3d} MMA fail, {c.get('pass', 0):4d} pass; "
            f"{c.get('allowed', 0):4d} allowed ({c.get('allowed_fail', 0)} failing)"
        )
    if args.markdown:
        print()
        print_markdown(results, summary)
    holes = empty_routes(targets) if set(args.kernels) >= {"gemm", "gemv"} else []
    for h in holes:
        print(f"no config left: {h}")
    if args.emit_table:
        print()
        print(aot.format_table(*aot.passed_tables(results)))
    if not args.from_json:
        print(f"\nwrote {out} ({len(results)} compiles, {elapsed:.0f} s)")
    bad = sum(c.get("allowed_fail", 0) for c in summary.values())
    return 1 if bad or holes else 0


if __name__ == "__main__":
    sys.exit(main())
