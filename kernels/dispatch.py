"""Backend registry and dispatch for the ternary linear.

A backend is a function ``(x, packed, scale, k, bias, act) -> y`` plus a predicate saying
whether it can run those inputs. ``"torch"`` (the reference, any device) is always present;
``"triton"`` (CUDA; see :mod:`.triton_backend`) registers itself beside it when this module is
imported, whether or not Triton is installed (its predicate then says no).
``backend="auto"`` takes the first registered backend (in priority order) whose ``supports``
predicate accepts the call. The environment variable ``TERNARYFLUX_BACKEND`` forces a backend
for every call that asked for ``"auto"``. A *forced* backend (by argument or environment) is
checked with its ``supports_forced`` predicate when it has one (Triton's also accepts CPU
tensors under ``TRITON_INTERPRET=1``); if it cannot run the call, one warning is logged and the
torch reference answers.

If a non-reference backend raises, one warning is logged, that backend is disabled for the
process (:func:`reset_disabled` re-enables), and the call is answered by the torch reference:
a failure never yields a wrong or missing result.

:func:`ternary_linear` goes through the ``torch.ops.ternaryflux.ternary_linear`` custom op
(:mod:`.ops`) while ``torch.compile`` traces or when autograd needs it, and straight to
:func:`run_eager` otherwise (no custom-op overhead for eager inference).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference, triton_backend
from .ops import ternary_linear_op

log = logging.getLogger(__name__)

ACT_PRECISIONS = ("a16", "a8")
ENV_BACKEND = "TERNARYFLUX_BACKEND"


@dataclass
class Backend:
    name: str
    run: Callable[..., torch.Tensor]
    supports: Callable[[torch.Tensor, torch.Tensor, str], bool]
    priority: int = 0
    supports_forced: Callable[[torch.Tensor, torch.Tensor, str], bool] | None = None
    """Predicate used instead of ``supports`` when the backend was forced; ``None``: same."""


def _torch_run(x, packed, scale, k, bias, act):
    fn = reference.ternary_linear_a8 if act == "a8" else reference.ternary_linear_a16
    return fn(x, packed, scale, k, bias)


_BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", _torch_run, lambda x, packed, act: True, priority=-100),
    "triton": Backend(
        "triton",
        triton_backend.run,
        triton_backend.supports,
        priority=100,
        supports_forced=triton_backend.supports_forced,
    ),
}
_DISABLED: set[str] = set()


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend
    _DISABLED.discard(backend.name)


def reset_disabled() -> None:
    """Re-enable every backend that was disabled after a failure."""
    _DISABLED.clear()


def available_backends() -> list[str]:
    """Registered, not disabled backend names, highest priority first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority) if b.name not in _DISABLED]


def resolve_backend(name: str, x: torch.Tensor, packed: torch.Tensor, act: str) -> Backend:
    """Pick the backend that will run a call (see module docstring)."""
    if name == "auto":
        name = os.environ.get(ENV_BACKEND, "auto").strip() or "auto"
    if name == "auto":
        for cand in available_backends():
            if _BACKENDS[cand].supports(x, packed, act):
                return _BACKENDS[cand]
        return _BACKENDS["torch"]
    if name not in _BACKENDS:
        raise ValueError(f"unknown ternary backend {name!r}; available: {available_backends()}")
    b = _BACKENDS[name]
    check = b.supports_forced or b.supports
    if name in _DISABLED or not check(x, packed, act):
        log.warning(
            "ternary backend %r cannot run this call (%s on %s); using torch", name, x.dtype, x.device
        )
        return _BACKENDS["torch"]
    return b


def run_eager(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    backend: str,
    act: str,
) -> torch.Tensor:
    """Resolve the backend and run it, falling back to torch (once-warned) on any failure."""
    b = resolve_backend(backend, x, packed, act)
    if b.name == "torch":
        return _torch_run(x, packed, scale, k, bias, act)
    try:
        return b.run(x, packed, scale, k, bias, act)
    except Exception as e:  # a compile/launch failure must never give a wrong result
        log.warning(
            "ternary backend %r failed (%s: %s); falling back to torch for this process",
            b.name,
            type(e).__name__,
            e,
        )
        _DISABLED.add(b.name)
        return _torch_run(x, packed, scale, k, bias, act)


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
