"""Test-only ComfyUI nodes for the TernaryFLUX integration tests (never shipped to users).

* ``TFTestConditioning`` — seeded random FLUX conditioning ``[B, L, dim]`` (``dim`` 4096 = T5-XXL
  by default; FLUX.2 tests set their tiny model's context width) + pooled ``[B, 768]``, standing in
  for DualCLIPLoader / CLIPLoader + CLIPTextEncode (no text encoder weights in tests). With a
  ``text`` (typed or linked, e.g. from the Calibration Prompt node) the seed is derived from the
  text instead (:func:`text_seed`), so different prompts give different conditioning.
* ``TFTestForward`` — loads a MODEL the way samplers do and runs its diffusion model once on
  inputs from a safetensors file, saving the output (in-host vs library reference comparison).
* ``TFTestModelInfo`` — writes facts about a MODEL (class, sizes, patches) as JSON.
"""

import hashlib
import json

import comfy.model_management
import torch
from safetensors.torch import load_file, save_file


def text_seed(text: str) -> int:
    """Seed for a prompt text (same formula as ``workflow_tools.text_seed``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little") & 0x7FFFFFFF


class TFTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 16}),
            },
            "optional": {
                "text": ("STRING", {"default": "", "multiline": True}),
                "dim": ("INT", {"default": 4096, "min": 1, "max": 65536}),
            },
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "TernaryFLUX/testing"

    def make(self, seed, tokens, batch, text="", dim=4096):
        g = torch.Generator().manual_seed(text_seed(text) if text else seed)
        cond = torch.randn(batch, tokens, dim, generator=g)
        pooled = torch.randn(batch, 768, generator=g)
        return ([[cond, {"pooled_output": pooled}]],)


def _path_counts(model):
    total = {"kernel": 0, "lowrank": 0, "exact": 0}
    for m in model.model.diffusion_model.modules():
        for k, v in getattr(m, "path_counts", {}).items():
            total[k] += v
    return total


class TFTestForward:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "inputs_path": ("STRING", {"default": ""}),
                "output_path": ("STRING", {"default": ""}),
                "mode": (["normal", "lowvram"],),
            }
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "TernaryFLUX/testing"

    def run(self, model, inputs_path, output_path, mode="normal"):
        if mode == "lowvram":  # every module offloaded: weights cast per call, LoRAs via LowVramPatch
            comfy.model_management.unload_all_models()
            model.patch_model(device_to=model.load_device, lowvram_model_memory=1)
        else:
            comfy.model_management.load_models_gpu([model])
        inp = load_file(inputs_path)
        counts_before = _path_counts(model)
        dev = model.load_device
        # get_dtype_inference() is newer than ComfyUI 0.9.0; older hosts run in the weight dtype
        dtype_of = getattr(model.model, "get_dtype_inference", None) or model.model.get_dtype
        dtype = dtype_of()
        get = lambda k: inp[k].to(dev, dtype) if k in inp else None  # noqa: E731
        with torch.no_grad():
            out = model.model.diffusion_model(
                get("x"),
                inp["timestep"].to(dev).float(),
                get("context"),
                y=get("y"),
                guidance=get("guidance"),
                transformer_options=model.model_options.get("transformer_options", {}),
            )
        after = _path_counts(model)
        info = {f"{k}_layers": str(after[k] - counts_before[k]) for k in after}
        info |= {
            "lowvram_patches": str(model.model.lowvram_patch_counter),
            "model_lowvram": str(model.model.model_lowvram),
        }
        if mode == "lowvram":
            model.unpatch_model(model.offload_device)
        save_file({"out": out.float().cpu().contiguous()}, output_path, metadata=info)
        return {}


class TFTestModelInfo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "output_path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "TernaryFLUX/testing"

    def run(self, model, output_path):
        dm = model.model.diffusion_model
        ternary = [n for n, m in dm.named_modules() if getattr(m, "ternary", False)]
        info = {
            "patcher_class": type(model).__name__,
            "patcher_mro": [c.__name__ for c in type(model).__mro__],
            # is_dynamic / cached_patcher_init are newer than ComfyUI 0.9.0 (absent there: not dynamic)
            "is_dynamic": bool(getattr(model, "is_dynamic", lambda: False)()),
            "model_size": int(model.model_size()),
            "ternary_layers": len(ternary),
            "patches": len(model.patches),
            "dtype": str(model.model.get_dtype()),
            "model_type": type(model.model).__name__,
            "param_bytes_uint8": int(sum(p.numel() for p in dm.parameters() if p.dtype == torch.uint8)),
            "cached_patcher_init": getattr(model, "cached_patcher_init", None) is not None,
        }
        with open(output_path, "w") as f:
            json.dump(info, f)
        return {}


NODE_CLASS_MAPPINGS = {
    "TFTestConditioning": TFTestConditioning,
    "TFTestForward": TFTestForward,
    "TFTestModelInfo": TFTestModelInfo,
}
