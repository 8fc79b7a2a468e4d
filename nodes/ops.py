"""``TernaryOps``: ComfyUI ``custom_operations`` whose Linear holds a packed ternary weight.

``comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops})``
builds FLUX with these ops. A Linear is created *empty* (no dense allocation) and becomes, when
its state dict arrives, either

* **ternary** (``<prefix>weight_scale`` present): ``weight`` = uint8 packed codes (an
  ``nn.Parameter`` so ModelPatcher sees the key), ``weight_scale`` / ``weight_shape`` buffers,
  float ``bias``; the forward pass calls :func:`ternaryflux.kernels.ternary_linear`; or
* **dense** (embedders, final layer): the stock ``manual_cast`` Linear behaviour.

``module_size`` sums ``state_dict()`` bytes, so ComfyUI's memory accounting sees packed sizes.
Low-VRAM offloading works: a module left on the offload device is moved per call, and the
``LowVramPatch`` entries ComfyUI puts in ``weight_function`` are read as patch lists, not run on
the packed bytes. Weight patches (LoRA etc.) reach a ternary layer from
:class:`~.patcher.TernaryModelPatcher` (``ternary_patches``) or from a ``LowVramPatch``:
plain LoRAs run as a low-rank branch (:mod:`.lowrank`), anything else through an exact
dequantize → ``comfy.lora.calculate_weight`` → dense matmul path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import comfy.lora
import comfy.ops
import torch
import torch.nn.functional as F

from ..core.checkpoint import layer_from_state_dict
from ..core.ternary_weight import TernaryWeight
from ..kernels import ternary_linear
from .lowrank import apply_branches, plan_lowrank

log = logging.getLogger(__name__)

_run_every_op: Callable[[], None] = getattr(comfy.ops, "run_every_op", lambda: None)


def _is_lowvram_patch(f) -> bool:
    return bool(getattr(f, "is_lowvram_patch", False)) or (hasattr(f, "key") and hasattr(f, "patches"))


def dequantize_packed(packed: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Dense float32 ``[N, K]`` from packed codes (uint8, or the same bytes cast to float)."""
    n, k = shape
    if packed.dtype != torch.uint8:
        packed = packed.round().to(torch.uint8)
    groups = scale.shape[1]
    return TernaryWeight(packed, scale.float(), (n, k), 0 if groups == 1 else k // groups).dequantize(
        torch.float32
    )


class TernaryLinearOp(comfy.ops.manual_cast.Linear):
    """See the module docstring. ``backend``/``act`` are class attributes set by :func:`make_ternary_ops`."""

    backend: str = "auto"
    act: str = "a16"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        torch.nn.Module.__init__(self)  # no dense allocation: the state dict decides what we hold
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None
        self.ternary = False
        self.has_bias = bias
        self.dtype_ = dtype
        self.ternary_patches: tuple[str, dict] | None = None  # (key, patches dict) from the patcher
        self.ternary_key: str | None = None
        self.path_counts = {"kernel": 0, "lowrank": 0, "exact": 0}  # which forward path ran (diagnostics)

    def reset_parameters(self) -> None:
        return None

    # ----------------------------------------------------------------- loading
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        own = {k[len(prefix) :]: k for k in state_dict if k.startswith(prefix)}
        dtype = self.dtype_
        if "weight_scale" in own:
            try:
                self._load_ternary(state_dict, prefix, own)
            except ValueError as e:  # TernaryFormatError included: its .problem names the layer
                error_msgs.append(getattr(e, "problem", f"{prefix[:-1]}: {e}"))
                return
            consumed = {"weight", "weight_scale", "weight_shape", "bias"}
        else:
            consumed = {"weight", "bias"}
            if "weight" in own:
                w = state_dict[own["weight"]]
                self.weight = torch.nn.Parameter(w.to(dtype) if dtype is not None else w, requires_grad=False)
            else:
                missing_keys.append(prefix + "weight")
                self.weight = torch.nn.Parameter(
                    torch.zeros(self.out_features, self.in_features, dtype=dtype), requires_grad=False
                )
        if "bias" in own:
            b = state_dict[own["bias"]]
            self.bias = torch.nn.Parameter(b.to(dtype) if dtype is not None else b, requires_grad=False)
        elif self.has_bias:
            missing_keys.append(prefix + "bias")
            self.bias = torch.nn.Parameter(torch.zeros(self.out_features, dtype=dtype), requires_grad=False)
        unexpected_keys.extend(full for short, full in own.items() if short not in consumed)

    def _load_ternary(self, sd, prefix: str, own: dict[str, str]) -> None:
        tw = layer_from_state_dict(sd, prefix[:-1])  # the format's own validator (TernaryFormatError)
        if tw.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"logical shape {tw.shape} does not match the model's Linear {(self.out_features, self.in_features)}"
            )
        self.weight = torch.nn.Parameter(tw.packed, requires_grad=False)
        self.register_buffer("weight_scale", tw.scale)
        self.register_buffer("weight_shape", sd[own["weight_shape"]].to(torch.int64))
        self.ternary = True

    # ----------------------------------------------------------------- LoRA & friends
    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        """Dense float weight from this layer's packed codes (ComfyUI's ``convert_<param>`` hook,
        used e.g. when merging models). Dense layers return ``weight`` unchanged."""
        if not self.ternary or tuple(weight.shape) != tuple(self.weight.shape):
            return weight
        return dequantize_packed(
            weight, self.weight_scale.to(weight.device), (self.out_features, self.in_features)
        )

    def dequantized_weight(self, device=None) -> torch.Tensor:
        w = self.weight if device is None else self.weight.to(device)
        s = self.weight_scale if device is None else self.weight_scale.to(device)
        return dequantize_packed(w, s, (self.out_features, self.in_features))

    def _patch_list(self) -> tuple[str | None, list | None, list]:
        """(key, weight patches or None, other weight functions)."""
        key, patches, others = None, None, []
        for f in self.weight_function:
            if _is_lowvram_patch(f):
                key, patches = f.key, f.patches[f.key]
            else:
                others.append(f)
        if patches is None and self.ternary_patches is not None:
            key, pdict = self.ternary_patches
            patches = pdict.get(key)
        return key, (patches or None), others

    # ----------------------------------------------------------------- forward
    def forward(self, *args, **kwargs):
        if not self.ternary:
            return super().forward(*args, **kwargs)
        _run_every_op()
        return self.forward_ternary(args[0] if args else kwargs["input"])

    def forward_ternary(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        nb = dev.type == "cuda"
        packed = self.weight if self.weight.device == dev else self.weight.to(dev, non_blocking=nb)
        scale = (
            self.weight_scale
            if self.weight_scale.device == dev
            else self.weight_scale.to(dev, non_blocking=nb)
        )
        bias = None
        if self.bias is not None:
            bias = self.bias.to(device=dev, dtype=x.dtype, non_blocking=nb)
            for f in self.bias_function:
                bias = f(bias)
        key, patches, others = self._patch_list()
        k = self.in_features
        plan = plan_lowrank(patches) if (patches and not others) else None
        if patches is None and not others:
            self.path_counts["kernel"] += 1
            return ternary_linear(x, packed, scale, k, bias, backend=self.backend, act=self.act)
        if plan is not None:
            self.path_counts["lowrank"] += 1
            y = ternary_linear(x, packed, scale, k, None, backend=self.backend, act=self.act)
            if plan.base_scale != 1.0:
                y = y * plan.base_scale
            y = apply_branches(y, x, plan.branches)
            return y if bias is None else y + bias
        # exact path: dense float32 weight, ComfyUI's own patch math, then any weight functions
        self.path_counts["exact"] += 1
        w = dequantize_packed(packed, scale, (self.out_features, k))
        if patches:
            w = comfy.lora.calculate_weight(patches, w, key or self.ternary_key or "ternary")
        for f in others:
            w = f(w)
        return F.linear(x, w.to(x.dtype), bias)

    def extra_repr(self) -> str:
        kind = f"ternary, backend={self.backend}, act={self.act}" if self.ternary else "dense"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


def make_ternary_ops(backend: str = "auto", act: str = "a16") -> type:
    """A ``custom_operations`` class (subclass of ``comfy.ops.manual_cast``) for one load."""

    class Linear(TernaryLinearOp):
        pass

    Linear.backend, Linear.act = backend, act

    class TernaryOps(comfy.ops.manual_cast):
        pass

    TernaryOps.Linear = Linear
    return TernaryOps


def ternary_op_modules(model: torch.nn.Module) -> Sequence[tuple[str, TernaryLinearOp]]:
    """``(path, module)`` for every ternary Linear of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TernaryLinearOp) and m.ternary]
