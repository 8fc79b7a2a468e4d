"""The defaults every entry point shares (CLI, nodes, shipped workflows, hints), in one place.

The *value* of :data:`DEFAULT_METHOD` is decided by the quality measurements (docs/QUANTIZATION.md:
``twn`` is the best data-free method on the trained proxy (held-out velocity error 0.434 vs 0.537
for absmean) and on MiniLM (cosine 0.467 vs 0.395); with calibration data use ``calibrated``):
change it here and the `ternaryflux quantize` default, the Ternarize FLUX node's default, the
`inspect` next-step hint and the ternarize-and-save workflow follow (tests/test_defaults.py checks
that they agree). ``absmean`` stays available everywhere, labelled as the data-free baseline.
"""

from __future__ import annotations

BASELINE_METHOD = "absmean"
DEFAULT_METHOD = "twn"


def method_needs_calibration(method: str) -> bool:
    return method == "calibrated"
