"""FLUX.2: the library's plain-PyTorch model (``core.flux2_model``) against ComfyUI's OWN Flux2
(``comfy.ldm.flux.model.Flux``, ``image_model="flux2"``, config from ``comfy.model_detection``)
on the same tiny weights and inputs, dense and with ternary block weights (dequantized for the host).

Needs ``COMFYUI_PATH`` (and ``COMFYUI_PYTHON``), like the FLUX.1 integration tests; skips otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
if not COMFYUI_PATH:
    pytest.skip(
        "ComfyUI integration tests need COMFYUI_PATH (and COMFYUI_PYTHON); build a CPU host with "
        "../shared/comfyhost/setup.sh",
        allow_module_level=True,
    )
if not Path(COMFYUI_PATH, "main.py").is_file():
    pytest.skip(f"COMFYUI_PATH={COMFYUI_PATH} has no main.py", allow_module_level=True)

from ternaryflux.core.fixtures import make_flux_inputs, make_flux_state_dict, tiny_flux2_config  # noqa: E402
from ternaryflux.core.flux_layout import FLUX2  # noqa: E402
from ternaryflux.core.flux_model import flux_from_state_dict  # noqa: E402
from ternaryflux.core.ternarize import ternarize  # noqa: E402

pytestmark = pytest.mark.comfyui
HERE = Path(__file__).resolve().parent


def host_forward(tmp: Path, sd: dict[str, torch.Tensor], inputs: dict) -> tuple[torch.Tensor, dict]:
    w, i, o = tmp / "w.safetensors", tmp / "in.safetensors", tmp / "out.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, w)
    save_file({k: v.contiguous() for k, v in inputs.items() if v is not None}, i)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [COMFYUI_PYTHON, str(HERE / "flux2_host_forward.py"), "--comfy", COMFYUI_PATH]
        + ["--weights", str(w), "--inputs", str(i), "--out", str(o)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with safe_open(str(o), "pt") as f:
        return f.get_tensor("out"), json.loads(f.metadata()["config"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("guidance", [False, True], ids=["klein", "dev"])
def test_flux2_matches_comfyui_own_model(tmp_path: Path, guidance: bool):
    cfg = tiny_flux2_config(hidden=256, depth=2, depth_single=2, guidance=guidance, context_in_dim=96)
    sd = {k: v.float() for k, v in make_flux_state_dict(cfg, seed=3, structured=True).items()}
    inputs = make_flux_inputs(cfg, batch=2, height=6, width=5, txt_len=7, seed=4)
    out, host_cfg = host_forward(tmp_path, sd, inputs)
    # the host detected FLUX.2 with the facts our config encodes
    assert host_cfg["image_model"] == "flux2"
    assert host_cfg["hidden_size"] == cfg.hidden_size and host_cfg["num_heads"] == cfg.num_heads
    assert host_cfg["depth"] == cfg.depth and host_cfg["depth_single_blocks"] == cfg.depth_single_blocks
    assert host_cfg["guidance_embed"] == guidance and host_cfg["in_channels"] == cfg.in_channels
    assert host_cfg["context_in_dim"] == cfg.context_in_dim
    with torch.no_grad():
        ref = flux_from_state_dict(sd, dtype=torch.float32).forward_latent(**inputs)
    assert out.shape == ref.shape == inputs["x"].shape
    diff = (out - ref).abs().max().item()
    print(
        f"FLUX.2 ({'dev' if guidance else 'klein'}) max |ours - ComfyUI| = {diff:.3g}, rel {_rel(out, ref):.3g}"
    )
    assert _rel(out, ref) < 1e-5 and diff < 1e-4 * ref.abs().max().item()


def test_flux2_ternary_library_model_matches_comfyui_on_dequantized_weights(tmp_path: Path):
    """Our FLUX.2 with TernaryLinear block layers (g128) == ComfyUI's FLUX.2 on the dense
    dequantized weights: the ternary path computes the model ComfyUI would."""
    cfg = tiny_flux2_config(hidden=256, depth=1, depth_single=1, context_in_dim=128)
    sd = {k: v.float() for k, v in make_flux_state_dict(cfg, seed=5).items()}
    tsd, dense = {}, {}
    for k, v in sd.items():
        p = k[: -len(".weight")]
        if k.endswith(".weight") and FLUX2.is_ternary_layer(p, "blocks+modulation"):
            tw = ternarize(v, "absmean", 128)
            tsd[f"{p}.weight"], tsd[f"{p}.weight_scale"] = tw.packed, tw.scale
            tsd[f"{p}.weight_shape"] = torch.tensor(tw.shape, dtype=torch.int64)
            dense[k] = tw.dequantize().float()
        else:
            tsd[k] = dense[k] = v
    inputs = make_flux_inputs(cfg, batch=1, height=4, width=4, txt_len=5, seed=6)
    out, _ = host_forward(tmp_path, dense, inputs)
    with torch.no_grad():
        ref = flux_from_state_dict(tsd, dtype=torch.float32).forward_latent(**inputs)
    assert _rel(out, ref) < 1e-5
