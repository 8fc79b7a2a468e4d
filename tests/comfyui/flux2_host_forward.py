"""Runs inside the ComfyUI host's Python: ComfyUI's OWN FLUX.2 (``comfy.ldm.flux.model.Flux`` with
the config ``comfy.model_detection`` derives from the keys) on given weights and inputs.

    python flux2_host_forward.py --comfy $COMFYUI_PATH --weights w.safetensors --inputs in.safetensors --out out.safetensors

Writes the output latent and the detected config (JSON in the metadata). No TernaryFLUX import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.comfy))
    sys.argv = ["main.py", "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import comfy.ldm.flux.model
    import comfy.model_detection
    import comfy.ops
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(a.weights)
    inputs = load_file(a.inputs)
    cfg = comfy.model_detection.detect_unet_config(sd, "")
    model_config = comfy.model_detection.model_config_from_unet(sd, "")
    if model_config is None or type(model_config).__name__ != "Flux2":
        raise SystemExit(f"ComfyUI did not detect FLUX.2 (got {type(model_config).__name__})")
    sd = model_config.process_unet_state_dict(dict(sd))  # ComfyUI's own key conversion (*_norm.scale)
    image_model = cfg.pop("image_model")
    model = comfy.ldm.flux.model.Flux(
        image_model=image_model,
        dtype=torch.float32,
        device="cpu",
        operations=comfy.ops.disable_weight_init,
        **cfg,
    )
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise SystemExit(
            f"weights do not fit ComfyUI's model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        out = model(
            inputs["x"],
            inputs["timestep"],
            inputs["context"],
            guidance=inputs.get("guidance"),
            transformer_options={},
        )
    meta = {"config": json.dumps({"image_model": image_model, **{k: v for k, v in cfg.items()}}, default=str)}
    save_file({"out": out.contiguous()}, a.out, metadata=meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
