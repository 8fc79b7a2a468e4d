"""Shared test setup. Tests import the package as ``ternaryflux`` (``pip install -e .``)."""

import os

# Triton reads this when kernels are decorated: set before any kernel module is imported, so
# the Triton kernels run on CPU tensors through the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
