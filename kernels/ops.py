"""``torch.ops.ternaryflux.ternary_linear``: the ternary linear as a ``torch.library`` custom op.

``torch.compile`` (ComfyUI's TorchCompileModel included) treats the op as one opaque node with
a fake (meta) implementation for shape propagation, so a model full of ``TernaryLinear`` layers
compiles with ``fullgraph=True`` (no graph breaks on Triton launches or dispatch logic). At run
time the op's implementation is the eager dispatch (:func:`.dispatch.run_eager`: backend
choice, one-warning fallback to torch). This module imports :mod:`.dispatch`, never the other
way round; the public :func:`~.api.ternary_linear` sits above both.

Autograd: the backward pass recomputes the product with the PyTorch reference (A16 semantics;
for ``act="a8"`` that is the straight-through estimator) and differentiates ``x``, ``scale``
and ``bias``. The packed codes get no gradient.

(No ``from __future__ import annotations`` here: ``torch.library`` reads the annotations.)
"""

import logging

import torch

from . import reference
from .dispatch import run_eager

log = logging.getLogger(__name__)

OP_NAME = "ternaryflux::ternary_linear"


def _impl(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    backend: str,
    act: str,
) -> torch.Tensor:
    return run_eager(x, packed, scale, k, bias, backend, act)


def _fake(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    backend: str,
    act: str,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, packed, scale, k, bias, _backend, _act = inputs
    ctx.save_for_backward(x, packed, scale, bias)
    ctx.k = k


def _backward(ctx, grad_y: torch.Tensor):
    x, packed, scale, bias = ctx.saved_tensors
    need_x, need_s, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[4]
    with torch.enable_grad():
        xl = x.detach().requires_grad_(need_x)
        sl = scale.detach().requires_grad_(need_s)
        bl = bias.detach().requires_grad_(need_b) if bias is not None else None
        y = reference.ternary_linear_a16(xl, packed, sl, ctx.k, bl)
        leaves = [t for t in (xl, sl, bl) if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(y, leaves, grad_y.to(y.dtype)) if leaves else ())
    gx = next(grads) if need_x else None
    gs = next(grads) if need_s else None
    gb = next(grads) if bl is not None and need_b else None
    return gx, None, gs, None, gb, None, None


def _make_op():
    lib_ns, name = OP_NAME.split("::")
    existing = getattr(getattr(torch.ops, lib_ns), name, None) if hasattr(torch.ops, lib_ns) else None
    if existing is not None:  # the pack was imported twice under two module names
        log.debug("%s already registered; reusing it", OP_NAME)
        return existing
    op = torch.library.custom_op(OP_NAME, _impl, mutates_args=())
    op.register_fake(_fake)
    op.register_autograd(_backward, setup_context=_setup_context)
    return op


ternary_linear_op = _make_op()
"""The custom op; call it as ``ternary_linear_op(x, packed, scale, k, bias, backend, act)``."""
