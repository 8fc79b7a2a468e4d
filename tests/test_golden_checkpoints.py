"""Checkpoints are byte-identical across refactors: quantize the structured tiny FLUX with each
method and packing through the CLI (and the in-memory entry the Ternarize node uses) and compare
the SHA-256 of every written file with hashes recorded by the code before the re-layout.

Regenerate (only after an intended format or recipe change, and say so in the commit):
``TERNARYFLUX_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_checkpoints.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file
from ternaryflux.quantize_tool.cli import main

GOLDEN = Path(__file__).parent / "golden" / "checkpoint_hashes.json"

# name -> extra CLI arguments after `quantize SOURCE -o OUT`
CASES = {
    "absmean-2bit": ["--method", "absmean"],
    "absmean-base3": ["--method", "absmean", "--at-rest", "base3"],
    "twn-2bit-g256": ["--method", "twn", "--group-size", "256"],
    "twn-base3": ["--method", "twn", "--at-rest", "base3"],
    "calibrated-2bit": ["--method", "calibrated", "--calib-samples", "3"],
    "calibrated-base3-g256": [
        "--method",
        "calibrated",
        "--calib-samples",
        "3",
        "--group-size",
        "256",
        "--at-rest",
        "base3",
    ],
    "calibrated-sequential": [
        "--method",
        "calibrated",
        "--calib-samples",
        "3",
        "--block-inputs",
        "sequential",
    ],
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, str]:
    from ternaryflux.quant.testing import write_structured_fixture

    d = tmp_path_factory.mktemp("golden")
    fx = write_structured_fixture(d, cal_prompts=2, held_prompts=1)
    hashes = {"fixture-model": _sha(fx["model"])}
    for name, extra in CASES.items():
        out = d / f"{name}.safetensors"
        argv = ["quantize", str(fx["model"]), "-o", str(out), "--no-progress", *extra]
        if "calibrated" in name:
            argv += ["--calibration", str(fx["cal"])]
        assert main(argv) == 0
        hashes[name] = _sha(out)
    # the in-memory entry of the Ternarize FLUX node: same recipe on a state dict, no source hash
    from ternaryflux.quant.algorithms import TernaryConfig
    from ternaryflux.quant.calibration import load_calibration
    from ternaryflux.quant.flux import quantize_flux_tensors

    samples, summary = load_calibration([fx["cal"]], 3, 0)
    out = d / "memory-calibrated.safetensors"
    quantize_flux_tensors(
        load_file(fx["model"]),
        out,
        TernaryConfig(method="calibrated"),
        calibration=samples,
        calibration_summary=summary,
        device="cpu",
    )
    hashes["memory-calibrated"] = _sha(out)
    return hashes


def test_checkpoints_byte_identical_to_recorded(written):
    if os.environ.get("TERNARYFLUX_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(written, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {len(written)} hashes in {GOLDEN}")
    recorded = json.loads(GOLDEN.read_text())
    assert recorded["fixture-model"] == written["fixture-model"], "the fixture itself changed"
    differ = sorted(k for k in recorded if recorded[k] != written.get(k))
    assert not differ, f"written checkpoints differ from the recorded bytes: {differ}"
    assert set(written) == set(recorded)
