"""LoRA patches on a ternary layer, applied as a low-rank branch beside the ternary matmul.

ComfyUI keeps a layer's weight patches as a list of tuples
``(strength_patch, adapter, strength_model, offset, function)`` and merges them with
``comfy.lora.calculate_weight``: for each patch in order,

    W[offset] *= strength_model
    W[offset] += function(strength_patch * (alpha / rank) * up @ down)        (LoRA adapters)

Merging into a ternary weight would need a dense copy and a re-quantization that destroys the
LoRA, so for *plain* LoRA patches the layer computes instead

    y = base_scale * (x @ T^T * s) + bias + sum_b scale_b * ((x[in] @ down_b^T) @ up_b^T)  -> y[out]

which is the same linear map (exact up to float rounding). :func:`plan_lowrank` decides whether a
patch list can be run that way; anything else (DoRA, LoCon mids, reshapes, LoKr/LoHa/OFT, diffs,
``function`` hooks, scaled-and-sliced patches) returns ``None`` and the caller takes the exact
dequantize-and-patch path. This module does not import ComfyUI: adapters are duck-typed
(``adapter.name == "lora"`` and ``adapter.weights = (up, down, alpha, mid, dora_scale, reshape)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LowRankBranch:
    """One LoRA branch: ``scale * up @ (down @ x)`` added to the output rows ``out_slice``."""

    up: torch.Tensor  # [N_out, r]
    down: torch.Tensor  # [r, K_in]
    scale: float
    out_slice: tuple[int, int] | None = None  # (start, length) along the output features
    in_slice: tuple[int, int] | None = None  # (start, length) along the input features


@dataclass
class LowRankPlan:
    """``y = base_scale * ternary(x) + bias + sum(branches)``."""

    base_scale: float
    branches: list[LowRankBranch]


def is_plain_lora(adapter: Any) -> bool:
    """True for a LoRA adapter without DoRA scale, LoCon mid weight or reshape."""
    if getattr(adapter, "name", None) != "lora":
        return False
    w = getattr(adapter, "weights", None)
    if not isinstance(w, (tuple, list)) or len(w) < 2:
        return False
    extras = list(w[3:6]) + [None] * (6 - len(w))
    if any(e is not None for e in extras[:3]):
        return False
    return isinstance(w[0], torch.Tensor) and isinstance(w[1], torch.Tensor)


def plan_lowrank(patches: Sequence[tuple]) -> LowRankPlan | None:
    """A :class:`LowRankPlan` equivalent to merging ``patches`` into the weight, or ``None``
    when some patch needs the exact dense path."""
    base = 1.0
    branches: list[LowRankBranch] = []
    for p in patches:
        strength, adapter, strength_model = p[0], p[1], p[2]
        offset = p[3] if len(p) > 3 else None
        function = p[4] if len(p) > 4 else None
        if function is not None or not is_plain_lora(adapter):
            return None
        out_slice = in_slice = None
        if offset is not None:
            dim, start, length = (int(v) for v in offset)
            if strength_model != 1.0 or dim not in (0, 1):
                return None
            if dim == 0:
                out_slice = (start, length)
            else:
                in_slice = (start, length)
        if strength_model != 1.0:
            base *= float(strength_model)
            for b in branches:
                b.scale *= float(strength_model)
        up, down, alpha = adapter.weights[0], adapter.weights[1], adapter.weights[2]
        up, down = up.flatten(start_dim=1), down.flatten(start_dim=1)
        if up.shape[1] != down.shape[0]:
            return None
        a = float(alpha) / down.shape[0] if alpha is not None else 1.0
        branches.append(LowRankBranch(up, down, float(strength) * a, out_slice, in_slice))
    return LowRankPlan(base, branches)


def apply_branches(y: torch.Tensor, x: torch.Tensor, branches: Sequence[LowRankBranch]) -> torch.Tensor:
    """Add every branch to ``y`` (``[..., N]``, modified in place and returned); math in x's dtype."""
    for b in branches:
        if b.scale == 0.0:
            continue
        xin = x if b.in_slice is None else x.narrow(-1, b.in_slice[0], b.in_slice[1])
        down = b.down.to(device=x.device, dtype=x.dtype)
        up = b.up.to(device=x.device, dtype=x.dtype)
        h = torch.nn.functional.linear(torch.nn.functional.linear(xin, down), up) * b.scale
        if b.out_slice is None:
            y += h.to(y.dtype)
        else:
            y.narrow(-1, b.out_slice[0], b.out_slice[1]).add_(h.to(y.dtype))
    return y


def dense_delta(shape: tuple[int, int], plan: LowRankPlan) -> torch.Tensor:
    """The dense ``W' - base_scale * W`` a plan stands for (float32; tests and debugging only)."""
    d = torch.zeros(shape, dtype=torch.float32)
    for b in plan.branches:
        delta = b.scale * (b.up.float() @ b.down.float())
        rows = slice(None) if b.out_slice is None else slice(b.out_slice[0], b.out_slice[0] + b.out_slice[1])
        cols = slice(None) if b.in_slice is None else slice(b.in_slice[0], b.in_slice[0] + b.in_slice[1])
        d[rows, cols] += delta
    return d
