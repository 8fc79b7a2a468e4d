"""Triton kernel: per-token (row) dynamic int8 quantization of activations, W1.58A8's input.

One program per row, one pass over the row when it fits in one block (every FLUX K does:
K <= 16384): load, absmax, scale, round, store int8 and the fp32 row scale. Semantics are
bit-identical to :func:`ternaryflux.kernels.reference.quantize_activations_int8`:
``s = max(max|x|, 1e-12) / 127``, ``q = clamp(round_half_even(x / s), -127, 127)``, with IEEE
division (``div_rn``; Triton's plain ``/`` is approximate on GPUs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ONE_PASS_MAX = 16384
"""Rows up to this length are quantized from registers in one pass; longer rows take two."""


@triton.jit
def _round_half_even(v):
    # exact for |v| < 2**23: v - floor(v) is exact there
    t = tl.floor(v)
    d = v - t
    odd = (t - 2.0 * tl.floor(t * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, t + 1.0, t)


@triton.jit
def _quantize(x, s):
    q = _round_half_even(tl.math.div_rn(x, s))
    return tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int8)


@triton.jit
def _quant_rows_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    K,
    stride_xm,
    stride_qm,
    BLOCK: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK)
    if ONE_PASS:
        m = offs < K
        x = tl.load(x_row + offs, mask=m, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=0)
        s = tl.math.div_rn(tl.maximum(amax, 1e-12), 127.0)
        tl.store(q_row + offs, _quantize(x, s), mask=m)
    else:
        amax_v = tl.zeros([BLOCK], tl.float32)
        for k0 in range(0, K, BLOCK):
            m = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=m, other=0.0).to(tl.float32)
            amax_v = tl.maximum(amax_v, tl.abs(x))
        s = tl.math.div_rn(tl.maximum(tl.max(amax_v, axis=0), 1e-12), 127.0)
        for k0 in range(0, K, BLOCK):
            m = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(q_row + k0 + offs, _quantize(x, s), mask=m)
    tl.store(s_ptr + row, s)


def quantize_rows_int8(x: torch.Tensor, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax int8 of a 2-D ``x`` (last dim contiguous): int8 ``[M, K]``, fp32 ``[M]``.

    ``block`` overrides the row block (tests use it to exercise the two-pass branch).
    """
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError("quantize_rows_int8 expects a 2-D tensor with a contiguous last dim")
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    if block is None:
        block = max(triton.next_power_of_2(k), 16)
        one_pass = block <= ONE_PASS_MAX
        if not one_pass:
            block = 4096
    else:
        one_pass = block >= k
    warps = 8 if block >= 4096 else 4
    _quant_rows_kernel[(m,)](
        x, q, s, k, x.stride(0), q.stride(0), BLOCK=block, ONE_PASS=one_pass, num_warps=warps
    )
    return q, s
