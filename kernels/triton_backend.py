"""The ``"triton"`` backend: when it may run a call, and how a call is routed to the kernels.

Routing: ``act="a8"`` first quantizes the rows (:mod:`.triton_quant`); then M <= 16 rows take
the small-M kernel (:mod:`.triton_gemv`), larger M the tiled GEMM (:mod:`.triton_gemm`).

Where it runs:

* CUDA tensors, Triton >= :data:`~.triton_common.MIN_TRITON`, compute capability >= 8.0
  (:data:`~.triton_common.MIN_CAPABILITY`): bf16/fp16/int8 tensor-core ``tl.dot``. Volta/Turing
  compile but get no tensor cores and spill registers (AOT check): they take the torch path.
* fp32 activations, A16: through tf32 tensor cores when
  ``torch.backends.cuda.matmul.allow_tf32`` is set, else the torch reference (an ieee-fp32
  ``tl.dot`` spills on every target and fits no config in 99 KB of shared memory). A8 quantizes
  fp32 like any other dtype.
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

from .triton_common import (
    MIN_CAPABILITY,
    SMALL_M_MAX,
    allowed_gemm,
    device_capability,
    interpreting,
    m_bucket,
    target_family,
    triton_usable,
)

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
    if cap < MIN_CAPABILITY:
        return False
    if act == "a16" and x.dtype == torch.float32:  # tf32 tensor cores, where checked, or torch
        fam = target_family(cap)
        return bool(torch.backends.cuda.matmul.allow_tf32) and all(
            allowed_gemm(fam, "tf32", False, mb) for mb in (256, 512)
        )
    return True


def route(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, act: str) -> tuple:
    """The code path of a call, for disabling just that path after a launch failure:
    (device, target family, kernel, M bucket, dtype, act, per-group scales)."""
    m = x.numel() // max(1, x.shape[-1])
    kernel = "gemv" if m <= SMALL_M_MAX else "gemm"
    fam = "cpu" if x.device.type != "cuda" else target_family(device_capability(x.device))
    return (str(x.device), fam, kernel, m_bucket(m), str(x.dtype), act, scale.shape[-1] > 1)


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
    # bf16 arithmetic is broken in the interpreter: upcast there (GPUs use bf16 tensor cores)
    dot_fp32 = x.dtype == torch.bfloat16 and interp

    x_scale = None
    if act == "a8":
        x2, x_scale = kern["quant"].quantize_rows_int8(x2)
    if m <= SMALL_M_MAX:
        y = kern["gemv"].ternary_gemv(
            x2, packed, scale, k, bias, x_scale, out_dtype=x.dtype, dot_fp32=dot_fp32, input_precision="tf32"
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
            input_precision="tf32",
        )
        y = out.to(x.dtype)
    return y.reshape(*lead, n)
