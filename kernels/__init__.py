"""Ternary matmul kernels: the PyTorch reference and (where available) Triton GPU kernels,
behind one dispatch function, :func:`ternary_linear`, which is also the ``torch.library``
custom op ``torch.ops.ternaryflux.ternary_linear`` under ``torch.compile``.

Importing this package never imports Triton (it is optional; see :mod:`.triton_backend`)."""

from .api import ternary_linear
from .dispatch import (
    ACT_PRECISIONS,
    ENV_BACKEND,
    Backend,
    available_backends,
    disabled_routes,
    register_backend,
    reset_disabled,
    resolve_backend,
    run_eager,
)
from .ops import ternary_linear_op

__all__ = [
    "ACT_PRECISIONS",
    "ENV_BACKEND",
    "Backend",
    "available_backends",
    "disabled_routes",
    "register_backend",
    "reset_disabled",
    "resolve_backend",
    "run_eager",
    "ternary_linear",
    "ternary_linear_op",
]
