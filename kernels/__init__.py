"""Ternary matmul kernels: the PyTorch reference and (where available) Triton GPU kernels,
behind one dispatch function, :func:`ternary_linear`."""

from .dispatch import ACT_PRECISIONS, Backend, available_backends, register_backend, resolve_backend, ternary_linear

__all__ = ["ACT_PRECISIONS", "Backend", "available_backends", "register_backend", "resolve_backend", "ternary_linear"]
