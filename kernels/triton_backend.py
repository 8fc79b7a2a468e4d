"""The ``"triton"`` backend: when it may run a call, and how a call is routed to the kernels.

Routing: ``act="a8"`` first quantizes the rows (:mod:`.triton_quant`); then M <= 16 rows take
the small-M kernel (:mod:`.triton_gemv`), larger M the tiled GEMM (:mod:`.triton_gemm`).

Where it runs:

* CUDA tensors, Triton >= :data:`~.triton_common.MIN_TRITON`, compute capability >= 7.0.
  Ampere and newer (sm80+) use bf16/fp16/int8 ``tl.dot``. Older cards (Volta/Turing) run A16
  only: fp16 as is, bf16 upcast to fp32 inside the kernel; A8 goes to the torch reference.
* CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1`` set before the kernels
  were first imported) **and** when the caller forced ``backend="triton"`` (argument or
  ``TERNARYFLUX_BACKEND``): ``"auto"`` never sends CPU tensors to Triton.

The kernel modules import Triton; they are imported lazily on the first call, so this module
(and ``ternaryflux.kernels``) imports fine without Triton.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch

from .triton_common import SMALL_M_MAX, device_capability, interpreting, triton_usable

log = logging.getLogger(__name__)

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_kernels: dict[str, ModuleType] = {}
_kernels_interpreted: bool | None = None  # TRITON_INTERPRET as it was when the kernels were built


def _load_kernels() -> dict[str, ModuleType]:
    global _kernels_interpreted
    if not _kernels:
        from . import triton_gemm, triton_gemv, triton_quant

        _kernels.update(gemm=triton_gemm, gemv=triton_gemv, quant=triton_quant)
        _kernels_interpreted = interpreting()
    return _kernels


def _tensors_ok(x: torch.Tensor, packed: torch.Tensor) -> bool:
    return x.dtype in _FLOAT_DTYPES and packed.dtype == torch.uint8 and x.device == packed.device


def supports(x: torch.Tensor, packed: torch.Tensor, act: str) -> bool:
    """May ``"auto"`` pick Triton for this call? CUDA only."""
    if x.device.type != "cuda" or not _tensors_ok(x, packed) or not triton_usable():
        return False
    cap = device_capability(x.device)
    if cap < (7, 0):
        return False
    return act == "a16" or cap >= (8, 0)


def supports_forced(x: torch.Tensor, packed: torch.Tensor, act: str) -> bool:
    """Like :func:`supports`, plus CPU tensors when the Triton interpreter is on."""
    if x.device.type == "cpu":
        return (
            _tensors_ok(x, packed)
            and triton_usable()
            and interpreting()
            and _kernels_interpreted in (None, True)
        )
    return supports(x, packed, act)


def run(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    act: str,
) -> torch.Tensor:
    """``y = x @ W^T + bias`` with the Triton kernels; returns ``x.dtype``, shape ``[..., N]``."""
    if x.device.type == "cpu" and not (interpreting() and _kernels_interpreted in (None, True)):
        raise RuntimeError("CPU tensors can only reach Triton under TRITON_INTERPRET=1")
    kern = _load_kernels()
    lead = x.shape[:-1]
    n = packed.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    packed = packed.contiguous()
    scale = scale.to(torch.float32).contiguous()
    if bias is not None:
        bias = bias.contiguous()
    m = x2.shape[0]
    interp = x.device.type == "cpu"
    cap = (9, 0) if interp else device_capability(x.device)
    # bf16 arithmetic is broken in the interpreter and has no tensor-core path before sm80
    dot_fp32 = x.dtype == torch.bfloat16 and (interp or cap < (8, 0))
    allow_tf32 = bool(torch.backends.cuda.matmul.allow_tf32) and cap >= (8, 0)

    x_scale = None
    if act == "a8":
        x2, x_scale = kern["quant"].quantize_rows_int8(x2)
    if m <= SMALL_M_MAX:
        y = kern["gemv"].ternary_gemv(
            x2, packed, scale, k, bias, x_scale, out_dtype=x.dtype, dot_fp32=dot_fp32
        )
    else:
        # the interpreter's fp32 -> bf16 store truncates: accumulate to fp32 and round in torch
        out_dtype = torch.float32 if (interp and x.dtype == torch.bfloat16) else x.dtype
        out = torch.empty((m, n), dtype=out_dtype, device=x.device)
        kern["gemm"].ternary_gemm(
            x2,
            packed,
            scale,
            k,
            bias,
            x_scale,
            out=out,
            dot_fp32=dot_fp32,
            input_precision="tf32" if allow_tf32 else "ieee",
        )
        y = out.to(x.dtype)
    return y.reshape(*lead, n)
