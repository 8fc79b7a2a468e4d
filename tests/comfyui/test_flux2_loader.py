"""Load Ternary FLUX with FLUX.2 checkpoints in a REAL ComfyUI host: the tool's FLUX.2 output
(policies ``blocks`` and ``blocks+modulation``, group 128) and a Bonsai import (synthetic
unpacked file) load into ComfyUI's own Flux2 model through the pack's ternary ops, and its forward
equals the library's ternary FLUX.2. Needs ``COMFYUI_PATH`` (skips otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
if not COMFYUI_PATH or not Path(COMFYUI_PATH, "main.py").is_file():
    pytest.skip("ComfyUI integration tests need COMFYUI_PATH (and COMFYUI_PYTHON)", allow_module_level=True)

from ternaryflux.core.checkpoint import load_checkpoint  # noqa: E402
from ternaryflux.core.fixtures import make_flux_inputs, make_flux_state_dict, tiny_flux2_config  # noqa: E402
from ternaryflux.core.flux_model import flux_from_state_dict  # noqa: E402
from ternaryflux.quant.algorithms import TernaryConfig  # noqa: E402
from ternaryflux.quant.flux import quantize_flux_tensors  # noqa: E402
from ternaryflux.quant.importers import import_bonsai_unpacked  # noqa: E402

pytestmark = pytest.mark.comfyui
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_flux2_import import ternary_reference, write_diffusers  # noqa: E402

LOADER = {"kernel_backend": "auto", "activations": "bf16", "compute_dtype": "default"}
CFG = tiny_flux2_config(hidden=256, depth=2, depth_single=2, context_in_dim=128)
FILES = {
    "blocks": "tiny_flux2_blocks.safetensors",
    "modulation": "tiny_flux2_mod.safetensors",
    "bonsai": "tiny_bonsai_import.safetensors",
}


def _job(tag: str, fname: str, base: Path, inputs: Path) -> dict:
    return {
        "name": f"fwd_{tag}",
        "prompt": {
            "1": {"class_type": "TernaryFluxLoader", "inputs": {"unet_name": fname, **LOADER}},
            "900": {
                "class_type": "TFTestForward",
                "inputs": {
                    "model": ["1", 0],
                    "inputs_path": str(inputs),
                    "output_path": str(base / f"fwd_{tag}.safetensors"),
                    "mode": "normal",
                },
            },
        },
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfybase_flux2")
    dm = base / "models" / "diffusion_models"
    for d in (dm, base / "custom_nodes"):
        d.mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "ComfyUI-TernaryFLUX").symlink_to(ROOT, target_is_directory=True)
    (base / "custom_nodes" / "tf_test_nodes").symlink_to(HERE / "test_nodes_pack", target_is_directory=True)
    sd = make_flux_state_dict(CFG, seed=7, structured=True)
    quantize_flux_tensors(
        sd, dm / FILES["blocks"], TernaryConfig(method="absmean", group_size=128), device="cpu"
    )
    quantize_flux_tensors(
        sd,
        dm / FILES["modulation"],
        TernaryConfig(method="twn", group_size=128),
        device="cpu",
        policy="blocks+modulation",
    )
    bonsai_bfl, _ = ternary_reference()
    import_bonsai_unpacked(write_diffusers(base / "bonsai_unpacked", bonsai_bfl), dm / FILES["bonsai"])
    inputs = make_flux_inputs(CFG, batch=2, height=6, width=5, txt_len=7, seed=8)
    inp = base / "inputs.safetensors"
    save_file({k: v for k, v in inputs.items() if v is not None}, str(inp))
    jobs = [_job(tag, f, base, inp) for tag, f in FILES.items()]
    (base / "jobs.json").write_text(json.dumps(jobs))
    out = base / "results.json"
    t0 = time.time()
    proc = subprocess.run(
        [COMFYUI_PYTHON, str(HERE / "host_driver.py"), "--comfy", COMFYUI_PATH, "--base", str(base)]
        + ["--jobs", str(base / "jobs.json"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    (base / "host.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and out.exists(), (proc.stdout + proc.stderr)[-4000:]
    return base, json.loads(out.read_text()), inputs, time.time() - t0


@pytest.mark.parametrize("tag", list(FILES))
def test_flux2_ternary_checkpoint_runs_in_comfyui_flux2(run, tag):
    base, results, inputs, _ = run
    r = results[f"fwd_{tag}"]
    assert r.get("valid", True) and r["success"], r.get("errors") or r.get("node_errors")
    got = load_file(str(base / f"fwd_{tag}.safetensors"))["out"]
    ck = load_checkpoint(base / "models" / "diffusion_models" / FILES[tag])
    tsd = ck.state_dict
    with safe_open(str(base / f"fwd_{tag}.safetensors"), "pt") as f:
        meta = f.metadata()
    # every ternary layer ran on the packed codes (no dense fallback)
    assert meta["kernel_layers"] == str(len(ck.ternary_layers)) and meta["exact_layers"] == "0", meta
    with torch.no_grad():
        ref = flux_from_state_dict(tsd, dtype=torch.float32).forward_latent(**inputs)
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"FLUX.2 {tag}: ComfyUI host vs library rel {rel:.3g}")
    assert rel < 1e-4, rel
