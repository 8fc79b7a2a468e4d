"""Backend registry and dispatch for the ternary linear.

A backend is a function ``(x, packed, scale, k, bias, act) -> y`` plus a predicate saying
whether it can run those inputs. ``"torch"`` (the reference, any device) is always present;
GPU backends register themselves beside it. ``backend="auto"`` takes the first registered
backend (in priority order) whose predicate accepts the call. The environment variable
``TERNARYFLUX_BACKEND`` forces a backend for every call that asked for ``"auto"``.

If a non-reference backend raises, one warning is logged, that backend is disabled for the
process, and the call is answered by the torch reference: a failure never yields a wrong or
missing result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference

log = logging.getLogger(__name__)

ACT_PRECISIONS = ("a16", "a8")


@dataclass
class Backend:
    name: str
    run: Callable[..., torch.Tensor]
    supports: Callable[[torch.Tensor, torch.Tensor, str], bool]
    priority: int = 0


def _torch_run(x, packed, scale, k, bias, act):
    fn = reference.ternary_linear_a8 if act == "a8" else reference.ternary_linear_a16
    return fn(x, packed, scale, k, bias)


_BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", _torch_run, lambda x, packed, act: True, priority=-100),
}
_DISABLED: set[str] = set()


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def available_backends() -> list[str]:
    """Registered, not disabled backend names, highest priority first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority) if b.name not in _DISABLED]


def resolve_backend(name: str, x: torch.Tensor, packed: torch.Tensor, act: str) -> Backend:
    """Pick the backend that will run a call (see module docstring)."""
    if name == "auto":
        name = os.environ.get("TERNARYFLUX_BACKEND", "auto")
    if name == "auto":
        for cand in available_backends():
            if _BACKENDS[cand].supports(x, packed, act):
                return _BACKENDS[cand]
        return _BACKENDS["torch"]
    if name not in _BACKENDS:
        raise ValueError(f"unknown ternary backend {name!r}; available: {available_backends()}")
    b = _BACKENDS[name]
    if name in _DISABLED or not b.supports(x, packed, act):
        log.warning("ternary backend %r cannot run this call (%s on %s); using torch", name, x.dtype, x.device)
        return _BACKENDS["torch"]
    return b


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
        backend: ``"auto"``, ``"torch"`` or a registered GPU backend name.
        act: ``"a16"`` (activations in their own dtype) or ``"a8"`` (per-token int8).
    """
    if act not in ACT_PRECISIONS:
        raise ValueError(f"act must be one of {ACT_PRECISIONS}, got {act!r}")
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the ternary weight expects {k}")
    b = resolve_backend(backend, x, packed, act)
    if b.name == "torch":
        return _torch_run(x, packed, scale, k, bias, act)
    try:
        return b.run(x, packed, scale, k, bias, act)
    except Exception as e:  # a compile/launch failure must never give a wrong result
        log.warning("ternary backend %r failed (%s: %s); falling back to torch for this process", b.name, type(e).__name__, e)
        _DISABLED.add(b.name)
        return _torch_run(x, packed, scale, k, bias, act)
