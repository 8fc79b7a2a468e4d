"""Triton kernel: the small-M path (M <= 16 rows), memory bound, reading 2 bits per weight.

FLUX's adaLN modulation linears (3072 -> 18432 / 9216, over a third of the parameters) run
with M = batch size, so they are pure weight streaming: the win over a bf16 GEMV is the 8x
smaller weight read. Each program owns ``BLOCK_N`` output channels and, with ``SPLIT_K > 1``,
one of ``SPLIT_K`` interleaved subsets of the K tiles (partial sums are ``atomic_add``-ed into a
zeroed fp32 output). The weight tile is loaded row-major ``[BLOCK_N, BLOCK_K/4]`` bytes
(coalesced along K, unmasked when ``EVEN_K``) and unpacked with the same four shifts as
:mod:`.triton_gemm`.

* ``USE_DOT=False`` (M <= 4): fp32 multiply-adds on CUDA cores into a register accumulator
  (the weight is built from the code bits in a float's mantissa: no int -> float conversion)
  ``[BLOCK_M, BLOCK_N, BLOCK_K/4]``; the reduction over K runs **once, after the K loop** (a
  reduction inside the loop costs shuffles and barriers per tile: ~3.4x more instructions at
  M = 1). No tensor-core padding of M to 16.
* ``USE_DOT=True`` (4 < M <= 16): the transposed ``tl.dot`` of :mod:`.triton_gemm`
  (``acc[BLOCK_N, 16] = W_tile @ x_tile^T``; int8 x int8 -> int32 for A8, fp32-upcast under
  ``DOT_FP32``).

Per-group scales (any multiple of 128, group 128 included) are folded into the unpacked weight
(A16, and A8 on the CUDA-core path); A8 with ``tl.dot`` keeps an int32 partial per K tile
inside one group. A8 (``HAS_XSCALE``) reads the int8 activations of :mod:`.triton_quant`; the
integer sums are exact in fp32 (< 2**24) and the epilogue multiplies act scale x weight scale.
"""

from __future__ import annotations

import functools

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
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
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
    KPB,
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
    INPUT_PRECISION: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = offs_m % M  # clamped rows: loads need no M/N mask, the store is masked
    rn = offs_n % N
    tl.static_assert(BLOCK_K % 128 == 0, "K tiles are whole 128-weight pack blocks")
    tl.static_assert(
        GROUP_SIZE % 128 == 0 and (not INT8_DOT or GROUP_SIZE % BLOCK_K == 0),
        "groups are whole pack blocks; an A8 dot K tile must lie inside one scale group",
    )
    BYTES: tl.constexpr = BLOCK_K // 4
    r = tl.arange(0, BYTES)
    k_of_r = (r // 32) * 128 + (r % 32)
    x_rows = x_ptr + rm[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    s_rows = s_ptr + rn * stride_sn
    FOLD: tl.constexpr = GROUP_SIZE > 0 and not INT8_DOT

    if USE_DOT:
        if INT8_DOT and GROUP_SIZE == 0:
            acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
        else:
            acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N, BYTES], dtype=tl.float32)
    for t in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
        k0 = t * BLOCK_K
        byte = k0 // 4 + r
        if EVEN_K:
            p = tl.load(w_rows + byte[None, :])
        else:
            p = tl.load(w_rows + byte[None, :], mask=byte[None, :] < KPB, other=85)
        if FOLD:  # per-group scale folded into the weight
            if GROUP_SIZE % BLOCK_K == 0:
                gsc = tl.load(s_rows + k0 // GROUP_SIZE)[:, None]
            else:
                gsc = tl.load(s_rows[:, None] + ((k0 + 128 * (r // 32)) // GROUP_SIZE)[None, :])
            if not DOT_FP32 and not HAS_XSCALE:
                gsc = gsc.to(x_ptr.dtype.element_ty).to(tl.float32)  # as the reference rounds it
        if INT8_DOT and GROUP_SIZE > 0:
            part = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
        if not USE_DOT:
            p32 = p.to(tl.int32)
        for s in tl.static_range(4):
            kk = k0 + 32 * s + k_of_r
            if EVEN_K:
                a = tl.load(x_rows + kk[None, :])
            else:
                a = tl.load(x_rows + kk[None, :], mask=kk[None, :] < K, other=0)
            codes = (p >> (2 * s)) & 3
            if USE_DOT:
                if INT8_DOT:
                    w8 = codes.to(tl.int8) - 1
                    if GROUP_SIZE > 0:
                        part = tl.dot(w8, tl.trans(a), part, out_dtype=tl.int32)
                    else:
                        acc = tl.dot(w8, tl.trans(a), acc, out_dtype=tl.int32)
                elif DOT_FP32:
                    w = codes.to(tl.float32) - 1.0
                    if FOLD:
                        w = w * gsc
                    acc = tl.dot(w, tl.trans(a.to(tl.float32)), acc, input_precision=INPUT_PRECISION)
                else:
                    w = codes.to(x_ptr.dtype.element_ty) - 1.0
                    if FOLD:
                        w = w * gsc.to(x_ptr.dtype.element_ty)
                    acc = tl.dot(w, tl.trans(a), acc)
            else:
                # no int -> float conversion (I2F runs at a quarter rate): the code's two bits,
                # left where they are (bits 2s, 2s+1), become low mantissa bits of 1.0:
                # f = 1 + code * 2^(2s-23), and f * 2^(23-2s) - (2^(23-2s) + 1) = code - 1
                # exactly, in one FMA
                bits = (p32 & (3 << (2 * s))) | 0x3F800000
                w = bits.to(tl.float32, bitcast=True) * (1 << (23 - 2 * s)) - ((1 << (23 - 2 * s)) + 1)
                if FOLD:
                    w = w * gsc
                acc += a.to(tl.float32)[:, None, :] * w[None, :, :]
        if INT8_DOT and GROUP_SIZE > 0:
            acc += part.to(tl.float32) * tl.load(s_rows + k0 // GROUP_SIZE)[:, None]

    if USE_DOT:
        out = tl.trans(acc.to(tl.float32))  # [BLOCK_M, BLOCK_N]
    else:
        out = tl.sum(acc, axis=2)  # the one reduction over K
    if GROUP_SIZE == 0:
        out = out * tl.load(s_rows)[None, :]
    if HAS_XSCALE:
        out = out * tl.load(xs_ptr + rm)[:, None]
    if HAS_BIAS:
        b = tl.load(b_ptr + rn).to(tl.float32)
        if SPLIT_K > 1:
            b = tl.where(pid_k == 0, b, 0.0)
        out = out + b[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y_mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(y_ptrs, out, mask=y_mask)
    else:
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=y_mask)


def default_split_k(n: int, k: int, sms: int | None = None) -> int:
    """K splits of the small-M kernel: only when its column blocks (``ceil(n / 32)`` at the
    smallest common ``BLOCK_N``) would leave more than half of the ``sms`` streaming
    multiprocessors idle; each split keeps >= 1024 weights of K. Split-K costs a zeroed fp32
    buffer, atomics and a cast, so FLUX's shapes (N >= 3072: >= 96 blocks) never split on the
    modelled GPUs. Without ``sms`` (CPU / interpreter): split only below N = 1024."""
    if sms is None:
        if n >= 1024:
            return 1
        return max(1, min(8, k // 1024))
    blocks = -(-n // 32)
    if 2 * blocks >= sms:
        return 1
    return max(1, min(8, -(-sms // blocks), k // 1024))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


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
    input_precision: str = "tf32",
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Small-M ternary matmul of 2-D ``x`` ``[M <= 16, k]`` (float, or int8 with ``x_scale``).

    ``out`` (``[M, N]``, contiguous, ``out_dtype``) receives the result when given.
    ``input_precision`` applies to fp32 operands of the ``tl.dot`` path (M > 4); the CUDA-core
    path (M <= 4) is exact fp32, and the interpreter always computes in ieee fp32.
    ``config`` ``(BLOCK_N, BLOCK_K, warps, stages)`` bypasses the autotuner (tests).
    """
    m = x.shape[0]
    if m > 16:
        raise ValueError(f"the small-M kernel takes at most 16 rows, got {m}")
    n = packed.shape[0]
    int8 = x.dtype == torch.int8
    if int8 and x_scale is None:
        raise ValueError("int8 activations need their row scales (x_scale)")
    out_dtype = out_dtype or (torch.float32 if int8 else x.dtype)
    if split_k is None:
        sms = _sm_count(x.device.index or 0) if x.device.type == "cuda" else None
        split_k = default_split_k(n, k, sms)
    split_k = max(1, int(split_k))
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

    kernel = _ternary_gemv_kernel
    launch: dict = {}
    if config is not None:
        bn, bk, warps, stages = config
        kernel = _ternary_gemv_kernel.fn  # the heuristics-wrapped kernel, no autotuning
        launch = dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    kernel[grid](
        x,
        x_scale if x_scale is not None else scale,
        packed,
        scale,
        bias if bias is not None else scale,
        y,
        m,
        n,
        k,
        packed.shape[1],
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
        INPUT_PRECISION="ieee" if interpreting() else input_precision,
        SPLIT_K=split_k,
        BLOCK_M=block_m,
        **launch,
    )
    if out is not None and y is not out:
        return out.copy_(y)
    return y if y.dtype == out_dtype else y.to(out_dtype)
