#!/usr/bin/env bash
# One prepared GPU benchmark run, sized for about 9 minutes on an H100:
#   1. bench/kernels.py    Triton kernels vs cuBLAS per FLUX.1 / FLUX.2 [klein] linear shape,
#                          30 timed calls each; its JSON also records the config the autotuner
#                          chose per kernel key ("autotune") and is rewritten after every shape,
#                          so a timeout keeps what was measured
#   2. bench/flux_e2e.py   full FLUX.1-dev, bf16 vs ternary: latency, peak VRAM, file sizes
#   3. bench/flux_e2e.py --model flux2-klein-4b
#                          full FLUX.2 [klein] 4B at 1024² b1, bf16 vs ternary (`blocks`, group-128
#                          scales), Bonsai Image 4B's published figures beside ours
#   4. bench/report.py     PNG charts from every bench/results/flux_e2e-*.json
# The stages' time limits add up to the old 9 minutes (200 + 200 + 100 + 40 s): each one stops
# starting new measurements before its limit (--budget-s) and its JSON is rewritten after every
# measurement, so a stage cut short keeps what it measured and the next stage still runs.
# Everything lands in bench/results/ (JSON named after the GPU, logs, PNGs). When $OUT is set
# (a folder whose contents are collected afterwards) a tarball of bench/results/ and the main
# JSON/PNGs are copied there as well (at most 8 files).
#
#   bash bench/run_gpu.sh                  # python3 from PATH; PYTHON=... to choose another
#   KERNELS_TIMEOUT=200 KERNELS_ITERS=30 E2E_TIMEOUT=200 E2E_BUDGET=160 KLEIN_TIMEOUT=100 KLEIN_BUDGET=70 bash bench/run_gpu.sh   (the defaults)
#
# Needs torch with CUDA (+ triton for the kernel backend), safetensors and matplotlib; the
# package itself need not be installed: a shim on PYTHONPATH points `ternaryflux` here.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RES=bench/results
mkdir -p "$RES"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
SHIM=$(mktemp -d)
ln -s "$ROOT" "$SHIM/ternaryflux"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
status=0

{
    date -u
    nvidia-smi || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
    "$PY" -c 'import triton; print("triton", triton.__version__)' || echo "triton: not importable"
    "$PY" -c 'import ternaryflux.kernels as k; print("ternaryflux backends", k.available_backends())'
} >"$RES/gpu-env.txt" 2>&1
cat "$RES/gpu-env.txt"

if [ -f bench/kernels.py ]; then
    echo "== bench/kernels.py ($(($(date +%s) - T0)) s)"
    timeout -k 10 "${KERNELS_TIMEOUT:-200}" "$PY" bench/kernels.py --iters "${KERNELS_ITERS:-30}" --warmup 3 2>&1 |
        tee "$RES/kernels.log" || status=1
else
    echo "bench/kernels.py not present: skipped" | tee "$RES/kernels.log"
fi

echo "== bench/flux_e2e.py ($(($(date +%s) - T0)) s)"
# --budget-s stops starting new configurations in time; the JSON is rewritten after every
# measurement, so even a timeout leaves the figures measured so far.
timeout -k 10 "${E2E_TIMEOUT:-200}" "$PY" bench/flux_e2e.py --budget-s "${E2E_BUDGET:-160}" 2>&1 |
    tee "$RES/flux_e2e.log" || status=1

echo "== bench/flux_e2e.py --model flux2-klein-4b ($(($(date +%s) - T0)) s)"
# 1024² batch 1 (Bonsai's published setting); bf16 first, then Triton A16 / A8, the torch
# reference last (the first thing the budget drops)
timeout -k 10 "${KLEIN_TIMEOUT:-100}" "$PY" bench/flux_e2e.py --model flux2-klein-4b \
    --budget-s "${KLEIN_BUDGET:-70}" 2>&1 | tee "$RES/flux_e2e-klein.log" || status=1

echo "== bench/report.py ($(($(date +%s) - T0)) s)"
timeout -k 5 40 "$PY" bench/report.py 2>&1 | tee "$RES/report.log" || status=1

echo "== done in $(($(date +%s) - T0)) s, status $status"
rm -rf "$SHIM"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    tar czf "$OUT/bench-results.tar.gz" "$RES"
    n=1
    for f in "$RES"/flux_e2e-*.json "$RES"/kernels-*.json "$RES"/flux_e2e-*-latency.png "$RES"/flux_e2e-*-vram.png; do
        case "$f" in *sizes* | *\**) continue ;; esac
        [ "$n" -lt 8 ] || break
        cp "$f" "$OUT/" && n=$((n + 1))
    done
fi
exit $status
