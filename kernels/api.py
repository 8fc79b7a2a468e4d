"""The public ternary linear: :func:`ternary_linear`, above both :mod:`.dispatch` (backend
choice and fallback) and :mod:`.ops` (the ``torch.ops.ternaryflux.ternary_linear`` custom op).

Eager inference calls :func:`.dispatch.run_eager` directly (no custom-op overhead);
``torch.compile`` tracing and autograd go through the custom op, whose implementation is
:func:`.dispatch.run_eager` again.
"""

from __future__ import annotations

import torch

from .dispatch import ACT_PRECISIONS, run_eager
from .ops import ternary_linear_op


def _needs_autograd(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    act: str = "a16",
) -> torch.Tensor:
    """``y = x @ W^T + bias`` for the ternary ``W`` given by packed codes and scales.

    Args:
        x: activations ``[..., k]`` (fp32/fp16/bf16).
        packed: uint8 ``[N, Kp/4]`` runtime-layout codes.
        scale: float32 ``[N, G]`` scales.
        k: logical in_features.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or another registered backend name.
        act: ``"a16"`` (activations in their own dtype) or ``"a8"`` (per-token int8).
    """
    if act not in ACT_PRECISIONS:
        raise ValueError(f"act must be one of {ACT_PRECISIONS}, got {act!r}")
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the ternary weight expects {k}")
    if torch.compiler.is_compiling() or _needs_autograd(x, scale, bias):
        return ternary_linear_op(x, packed, scale, k, bias, backend, act)
    return run_eager(x, packed, scale, k, bias, backend, act)
