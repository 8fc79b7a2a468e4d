"""Triton kernel: tiled ternary GEMM ``y = x @ W^T`` straight from the 2-bit packed codes.

Both activation precisions share one kernel body:

* **W1.58A16** (``INT8_DOT=False``): ``x`` bf16/fp16 (fp32 as tf32 on a GPU); the codes are
  unpacked in registers to ``x``'s dtype and multiplied with ``tl.dot`` into one fp32
  accumulator.
* **W1.58A8** (``INT8_DOT=True``): ``x`` is int8 (per-token quantized by
  :mod:`.triton_quant`, row scales in ``xs_ptr``); ``codes - 1`` are exact in int8 and
  ``tl.dot`` accumulates int8 x int8 -> int32; the epilogue applies act scale x weight scale.

**Transposed product.** The kernel computes ``y^T`` tile by tile: ``acc[BLOCK_N, BLOCK_M] =
W_tile @ x_tile^T``. The unpacked weight is the *left* ``tl.dot`` operand, so each warp unpacks
only the weight rows of its own part of the output tile; as the right operand every warp needed
(and unpacked) the whole weight tile. The epilogue stores ``acc`` transposed (``y[m, n]``).

Tiling over the runtime layout (see :mod:`ternaryflux.core.packing`): a K tile of ``BLOCK_K``
weights (a multiple of 128, i.e. whole pack blocks) is ``BLOCK_K / 4`` bytes per row. Byte
``r`` of the tile holds, at bits ``2s``, the weight ``k = 128 * (r // 32) + 32 * s + r % 32``;
so one ``[BLOCK_N, BLOCK_K/4]`` byte load and four shift/mask steps give four operands of K
width ``BLOCK_K/4``, each multiplied with the matching activation columns (contiguous runs of
32).

**One accumulator.** Per-channel scales (``GROUP_SIZE == 0``) are applied once after the K
loop (A8: the int32 accumulator is exact over all of K). Per-group scales, A16: the group
scale (rounded to ``x``'s dtype, as the reference does) is folded into the unpacked weight
before the dot, so any group size that is a multiple of 128 (group 128 included) accumulates
into the same single accumulator with no per-tile partial. A8 per-group: an int32 partial per
K tile (``GROUP_SIZE`` a multiple of ``BLOCK_K``, enforced by config pruning and a
``tl.static_assert``) is scaled into the fp32 accumulator.

**Loads.** Rows beyond ``M`` / ``N`` are clamped (``offs % M``) instead of masked, and
``EVEN_K`` (``K`` a multiple of ``BLOCK_K``: every FLUX shape) drops the K masks, so packed
weights and activations are read with unmasked wide vector loads; only the store is masked.
Without ``EVEN_K`` the activation side is masked at ``K`` (the layout's padding codes are never
trusted) and the byte loads at the row's packed length.

``DOT_FP32`` upcasts both operands to fp32 before ``tl.dot`` (always on for fp32 ``x``, with
``INPUT_PRECISION`` tf32 on a GPU, ieee in the interpreter); the Triton CPU interpreter also
uses it for bf16 (its bf16 arithmetic is broken).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import gemm_configs, interpreting, m_bucket, prune_gemm_configs


@triton.autotune(
    configs=gemm_configs(),
    key=["M_BUCKET", "N", "K", "GROUP_SIZE"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _ternary_gemm_kernel(
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
    INT8_DOT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # grouped ("swizzled") program order so that consecutive programs share x rows in L2
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_rows
    pid_n = (pid % num_pid_in_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = offs_m % M  # clamped rows: loads need no M/N mask, the store is masked
    rn = offs_n % N
    tl.static_assert(BLOCK_K % 128 == 0, "K tiles are whole 128-weight pack blocks")
    tl.static_assert(
        GROUP_SIZE % 128 == 0 and (not INT8_DOT or GROUP_SIZE % BLOCK_K == 0),
        "groups are whole pack blocks; an A8 K tile must lie inside one scale group",
    )
    BYTES: tl.constexpr = BLOCK_K // 4
    r = tl.arange(0, BYTES)
    k_of_r = (r // 32) * 128 + (r % 32)  # weight index (slice 0) held by byte r of a tile
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    s_rows = s_ptr + rn * stride_sn

    if INT8_DOT and GROUP_SIZE == 0:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        byte = k0 // 4 + r
        if EVEN_K:
            p = tl.load(w_rows + byte[None, :])
        else:
            p = tl.load(w_rows + byte[None, :], mask=byte[None, :] < KPB, other=85)
        if GROUP_SIZE > 0 and not INT8_DOT:  # A16 per-group: fold the scale into the weight
            if GROUP_SIZE % BLOCK_K == 0:
                gsc = tl.load(s_rows + k0 // GROUP_SIZE)[:, None]
            else:
                gsc = tl.load(s_rows[:, None] + ((k0 + 128 * (r // 32)) // GROUP_SIZE)[None, :])
            if not DOT_FP32:
                gsc = gsc.to(x_ptr.dtype.element_ty)  # the reference rounds scaled weights to x's dtype
        if INT8_DOT and GROUP_SIZE > 0:
            part = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
        for s in tl.static_range(4):
            kk = k0 + 32 * s + k_of_r
            if EVEN_K:
                a = tl.load(x_rows + kk[None, :])
            else:
                a = tl.load(x_rows + kk[None, :], mask=kk[None, :] < K, other=0)
            codes = (p >> (2 * s)) & 3
            if INT8_DOT:
                w = codes.to(tl.int8) - 1  # [BLOCK_N, BYTES] in {-1, 0, 1}
                if GROUP_SIZE > 0:
                    part = tl.dot(w, tl.trans(a), part, out_dtype=tl.int32)
                else:
                    acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)
            else:
                if DOT_FP32:
                    w = codes.to(tl.float32) - 1.0
                    a = a.to(tl.float32)
                else:
                    w = codes.to(x_ptr.dtype.element_ty) - 1.0
                if GROUP_SIZE > 0:
                    w = w * gsc
                acc = tl.dot(w, tl.trans(a), acc, input_precision=INPUT_PRECISION)
        if INT8_DOT and GROUP_SIZE > 0:
            acc += part.to(tl.float32) * tl.load(s_rows + k0 // GROUP_SIZE)[:, None]

    out = acc.to(tl.float32)
    if GROUP_SIZE == 0:
        out = out * tl.load(s_rows)[:, None]
    if HAS_XSCALE:
        out = out * tl.load(xs_ptr + rm)[None, :]
    if HAS_BIAS:
        out = out + tl.load(b_ptr + rn).to(tl.float32)[:, None]
    y_ptrs = y_ptr + offs_m.to(tl.int64)[None, :] * stride_ym + offs_n[:, None]
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(offs_m < M)[None, :] & (offs_n < N)[:, None])


def ternary_gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    x_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    dot_fp32: bool = False,
    input_precision: str = "tf32",
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """Launch the tiled GEMM on 2-D ``x`` ``[M, k]`` (float, or int8 with ``x_scale`` ``[M]``).

    ``out`` (``[M, N]``, last dim contiguous) receives the result in its own dtype; by default a
    new tensor of ``x``'s dtype (fp32 for int8 ``x``). ``input_precision`` applies to fp32
    operands (``dot_fp32`` or fp32 ``x``); the interpreter always computes them in ieee fp32.
    ``config`` ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)`` bypasses the autotuner (tests).
    """
    m = x.shape[0]
    n = packed.shape[0]
    int8 = x.dtype == torch.int8
    if int8 and x_scale is None:
        raise ValueError("int8 activations need their row scales (x_scale)")
    if out is None:
        out = torch.empty((m, n), dtype=torch.float32 if int8 else x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    groups = scale.shape[1]
    group_size = 0 if groups == 1 else k // groups

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    kernel = _ternary_gemm_kernel
    launch: dict = {}
    if config is not None:
        bm, bn, bk, warps, stages = config
        kernel = _ternary_gemm_kernel.fn  # the heuristics-wrapped kernel, no autotuning
        launch = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    kernel[grid](
        x,
        x_scale if x_scale is not None else scale,
        packed,
        scale,
        bias if bias is not None else scale,
        out,
        m,
        n,
        k,
        packed.shape[1],
        x.stride(0),
        packed.stride(0),
        scale.stride(0),
        out.stride(0),
        m_bucket(m),
        GROUP_SIZE=group_size,
        HAS_BIAS=bias is not None,
        HAS_XSCALE=x_scale is not None,
        INT8_DOT=int8,
        DOT_FP32=(bool(dot_fp32) or x.dtype == torch.float32) and not int8,
        INPUT_PRECISION="ieee" if interpreting() else input_precision,
        **launch,
    )
    return out
