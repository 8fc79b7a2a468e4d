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

If a non-reference backend raises, one warning is logged and the call is answered by the
torch reference: a failure never yields a wrong or missing result. What is disabled for the
rest of the process is the failing *route* when the backend names one (Triton: device,
kernel, operand dtype, activation precision, scale kind; one kernel's launch failure does not
turn Triton off for every other call), else the whole backend. :func:`reset_disabled`
re-enables everything.

The public :func:`~.api.ternary_linear` sits above this module and :mod:`.ops` (no import
cycle): ops calls :func:`run_eager`, the API calls the op or :func:`run_eager`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from . import reference, triton_backend

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
    route: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], Hashable] | None = None
    """Key of the code path a call takes: a failure disables that route only; ``None``: the
    whole backend."""


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
        route=triton_backend.route,
    ),
}
_DISABLED: set[str] = set()
_DISABLED_ROUTES: set[tuple[str, Hashable]] = set()


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend
    _DISABLED.discard(backend.name)
    for key in [k for k in _DISABLED_ROUTES if k[0] == backend.name]:
        _DISABLED_ROUTES.discard(key)


def reset_disabled() -> None:
    """Re-enable every backend and route that was disabled after a failure."""
    _DISABLED.clear()
    _DISABLED_ROUTES.clear()


def disabled_routes() -> list[tuple[str, Hashable]]:
    """``(backend, route)`` pairs disabled after a failure (see :class:`Backend.route`)."""
    return sorted(_DISABLED_ROUTES, key=repr)


def _route_key(b: Backend, x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor | None, act: str):
    if b.route is None or scale is None:
        return None
    try:
        return (b.name, b.route(x, packed, scale, act))
    except Exception:  # a route function must never break dispatch
        return None


def _route_disabled(b: Backend, x, packed, scale, act) -> bool:
    key = _route_key(b, x, packed, scale, act)
    return key is not None and key in _DISABLED_ROUTES


def available_backends() -> list[str]:
    """Registered, not disabled backend names, highest priority first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority) if b.name not in _DISABLED]


def resolve_backend(
    name: str, x: torch.Tensor, packed: torch.Tensor, act: str, scale: torch.Tensor | None = None
) -> Backend:
    """Pick the backend that will run a call (see module docstring). ``scale`` (optional) lets
    a route disabled after a failure be skipped."""
    if name == "auto":
        name = os.environ.get(ENV_BACKEND, "auto").strip() or "auto"
    if name == "auto":
        for cand in available_backends():
            b = _BACKENDS[cand]
            if b.supports(x, packed, act) and not _route_disabled(b, x, packed, scale, act):
                return b
        return _BACKENDS["torch"]
    if name not in _BACKENDS:
        raise ValueError(f"unknown ternary backend {name!r}; available: {available_backends()}")
    b = _BACKENDS[name]
    check = b.supports_forced or b.supports
    if name in _DISABLED or _route_disabled(b, x, packed, scale, act) or not check(x, packed, act):
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
    b = resolve_backend(backend, x, packed, act, scale)
    if b.name == "torch":
        return _torch_run(x, packed, scale, k, bias, act)
    try:
        return b.run(x, packed, scale, k, bias, act)
    except Exception as e:  # a compile/launch failure must never give a wrong result
        key = _route_key(b, x, packed, scale, act)
        log.warning(
            "ternary backend %r failed (%s: %s); falling back to torch for %s for this process",
            b.name,
            type(e).__name__,
            e,
            f"route {key[1]}" if key else "every call",
        )
        if key is None:
            _DISABLED.add(b.name)
        else:
            _DISABLED_ROUTES.add(key)
        return _torch_run(x, packed, scale, k, bias, act)
