"""Triton kernel: the small-M path (M <= 16 rows), memory bound, reading 2 bits per weight.

FLUX's adaLN modulation linears (3072 -> 18432 / 9216, over a third of the parameters) run
with M = batch size, so they are pure weight streaming: the win over a bf16 GEMV is the 8x
smaller weight read. Each program owns ``BLOCK_N`` output channels and, with ``SPLIT_K > 1``,
one of ``SPLIT_K`` interleaved subsets of the K tiles (partial sums are ``atomic_add``-ed into a
zeroed fp32 output). The weight tile is loaded row-major ``[BLOCK_N, BLOCK_K/4]`` bytes
(coalesced along K) and unpacked with the same four shifts as :mod:`.triton_gemm`.

* ``USE_DOT=False`` (M <= 4): fp32 multiply-and-reduce on CUDA cores (a 3-D broadcast
  ``[BLOCK_M, BLOCK_N, BLOCK_K/4]`` summed over K); no tensor-core padding of M to 16.
* ``USE_DOT=True`` (4 < M <= 16): ``tl.dot`` with ``BLOCK_M = 16`` (int8 x int8 -> int32 for
  A8, fp32-upcast under ``DOT_FP32``).

A8 (``HAS_XSCALE``) reads the int8 activations of :mod:`.triton_quant`; the integer partial sums
are exact in fp32 (< 2**24) and the epilogue multiplies act scale x weight scale.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import gemv_configs, interpreting, m_bucket, prune_gemv_configs


@triton.autotune(
    configs=gemv_configs(),
    key=["M_BUCKET", "N", "K", "GROUP_SIZE", "SPLIT_K"],
    prune_configs_by={"early_config_prune": prune_gemv_configs},
    reset_to_zero=["y_ptr"],
)
@triton.jit
def _ternary_gemv_kernel(
    x_ptr,
    xs_ptr,
    w_ptr,
    s_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    K,
    KP,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_ym,
    M_BUCKET,
    GROUP_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_XSCALE: tl.constexpr,
    USE_DOT: tl.constexpr,
    INT8_DOT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    tl.static_assert(BLOCK_K % 128 == 0, "K tiles are whole 128-weight pack blocks")
    tl.static_assert(GROUP_SIZE % BLOCK_K == 0, "a K tile must lie inside one scale group")
    BYTES: tl.constexpr = BLOCK_K // 4
    r = tl.arange(0, BYTES)
    k_of_r = (r // 32) * 128 + (r % 32)
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    kp_bytes = KP // 4

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(pid_k, tl.cdiv(KP, BLOCK_K), SPLIT_K):
        k0 = t * BLOCK_K
        byte = k0 // 4 + r
        p = tl.load(w_rows + byte[None, :], mask=mask_n[:, None] & (byte[None, :] < kp_bytes), other=85)
        if INT8_DOT:
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        else:
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for s in tl.static_range(4):
            kk = k0 + 32 * s + k_of_r
            a = tl.load(x_rows + kk[None, :], mask=mask_m[:, None] & (kk[None, :] < K), other=0)
            w = (((p >> (2 * s)) & 3).to(tl.int8) - 1).to(tl.int8)  # [BLOCK_N, BYTES]
            if USE_DOT:
                if INT8_DOT:
                    part = tl.dot(a, tl.trans(w), part, out_dtype=tl.int32)
                elif DOT_FP32:
                    part = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), part, input_precision="ieee")
                else:
                    part = tl.dot(a, tl.trans(w.to(a.dtype)), part)
            else:
                prod = a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
                part += tl.sum(prod, axis=2)
        if GROUP_SIZE > 0:
            gs = tl.load(s_ptr + offs_n * stride_sn + k0 // GROUP_SIZE, mask=mask_n, other=0.0)
            acc += part.to(tl.float32) * gs[None, :]
        else:
            acc += part.to(tl.float32)

    if GROUP_SIZE == 0:
        acc = acc * tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0)[None, :]
    if HAS_XSCALE:
        acc = acc * tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if SPLIT_K > 1:
            b = tl.where(pid_k == 0, b, 0.0)
        acc = acc + b[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y_mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(y_ptrs, acc, mask=y_mask)
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def default_split_k(n: int, k: int) -> int:
    """Split K only when there are too few output-channel blocks to fill a GPU (never for FLUX,
    whose smallest N is 3072)."""
    if n >= 1024:
        return 1
    return max(1, min(8, k // 1024))


def ternary_gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    x_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    split_k: int | None = None,
    dot_fp32: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Small-M ternary matmul of 2-D ``x`` ``[M <= 16, k]`` (float, or int8 with ``x_scale``).

    ``out`` (``[M, N]``, contiguous, ``out_dtype``) receives the result when given.
    """
    m = x.shape[0]
    if m > 16:
        raise ValueError(f"the small-M kernel takes at most 16 rows, got {m}")
    n = packed.shape[0]
    kp = packed.shape[1] * 4
    int8 = x.dtype == torch.int8
    if int8 and x_scale is None:
        raise ValueError("int8 activations need their row scales (x_scale)")
    out_dtype = out_dtype or (torch.float32 if int8 else x.dtype)
    split_k = default_split_k(n, k) if split_k is None else max(1, int(split_k))
    if m == 0 or n == 0:
        return torch.empty((m, n), dtype=out_dtype, device=x.device)
    use_dot = m > 4
    block_m = 16 if use_dot else m_bucket(m)
    # fp32 accumulation target for split-K, and for bf16 stores under the interpreter
    # (its fp32 -> bf16 conversion truncates instead of rounding)
    direct = split_k == 1 and not (interpreting() and out_dtype == torch.bfloat16)
    if direct:
        y = out if out is not None else torch.empty((m, n), dtype=out_dtype, device=x.device)
    else:
        y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    groups = scale.shape[1]

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n, meta["BLOCK_N"]), split_k)

    _ternary_gemv_kernel[grid](
        x,
        x_scale if x_scale is not None else scale,
        packed,
        scale,
        bias if bias is not None else scale,
        y,
        m,
        n,
        k,
        kp,
        x.stride(0),
        packed.stride(0),
        scale.stride(0),
        y.stride(0),
        m_bucket(m),
        GROUP_SIZE=0 if groups == 1 else k // groups,
        HAS_BIAS=bias is not None,
        HAS_XSCALE=x_scale is not None,
        USE_DOT=use_dot,
        INT8_DOT=int8 and use_dot,
        DOT_FP32=(bool(dot_fp32) or x.dtype == torch.float32) and not int8,
        SPLIT_K=split_k,
        BLOCK_M=block_m,
    )
    if out is not None and y is not out:
        return out.copy_(y)
    return y if y.dtype == out_dtype else y.to(out_dtype)
