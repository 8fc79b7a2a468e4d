"""``TernaryModelPatcher``: a ModelPatcher that never merges patches into packed ternary weights.

Stock ModelPatcher "bakes" a LoRA by ``W = calculate_weight(patches, W)`` and writing W back —
on a packed uint8 weight that is meaningless, and re-quantizing a merged weight to ternary would
wipe the LoRA out. For the ``.weight`` key of a ternary layer this patcher instead hands the
layer a reference to its patch list (``module.ternary_patches``); the layer then runs plain
LoRAs as a low-rank branch and everything else through an exact dequantize-and-patch path (see
:mod:`.ops`). Every other key (biases, dense layers) goes through the stock code.

DynamicVRAM: the loader always builds this non-dynamic patcher (``disable_dynamic=True``).
``ModelPatcherDynamic`` would re-quantize LoRA-merged weights into the resident copy and treats
modules without ``comfy_cast_weights`` as plain ``.to(device)`` moves; the classic lowvram path
this class inherits handles offloading correctly for packed weights. ``clone()`` keeps the class.
"""

from __future__ import annotations

import logging

import comfy.lora
import comfy.model_patcher
import torch

from .ops import TernaryLinearOp

log = logging.getLogger(__name__)


def _ternary_module_for_key(model: torch.nn.Module, key: str) -> TernaryLinearOp | None:
    path, _, param = key.rpartition(".")
    if param != "weight" or not path:
        return None
    try:
        m = model.get_submodule(path)
    except AttributeError:
        return None
    return m if isinstance(m, TernaryLinearOp) and m.ternary else None


class TernaryModelPatcher(comfy.model_patcher.ModelPatcher):
    """See the module docstring."""

    def is_dynamic(self) -> bool:  # never DynamicVRAM, whatever CoreModelPatcher is bound to
        return False

    def patch_weight_to_device(self, key, device_to=None, *args, **kwargs):
        m = _ternary_module_for_key(self.model, key)
        if m is None:
            return super().patch_weight_to_device(key, device_to, *args, **kwargs)
        return_weight = kwargs.get("return_weight", args[1] if len(args) > 1 else False)
        if return_weight:
            # a caller wants the patched weight as a tensor (LoRA extraction, saving): dense, exact
            w = m.dequantized_weight(device_to)
            if key in self.patches:
                w = comfy.lora.calculate_weight(self.patches[key], w, key)
            return w
        m.ternary_key = key
        m.ternary_patches = (key, self.patches) if key in self.patches else None
        return m.weight

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        out = super().unpatch_model(device_to, unpatch_weights)
        if unpatch_weights:
            for m in self.model.modules():
                if isinstance(m, TernaryLinearOp):
                    m.ternary_patches = None
        return out

    def patch_hook_weight_to_device(self, hooks, combined_patches, key, original_weights, memory_counter):
        if _ternary_module_for_key(self.model, key) is not None:
            raise NotImplementedError(
                f"TernaryFLUX: scheduled LoRA hooks (Create Hook LoRA / Set Model Hooks) cannot patch the ternary "
                f"layer {key!r}; use a plain LoRA loader (LoraLoaderModelOnly or the bypass loader) instead"
            )
        return super().patch_hook_weight_to_device(
            hooks, combined_patches, key, original_weights, memory_counter
        )
