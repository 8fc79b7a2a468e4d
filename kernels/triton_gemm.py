"""Triton kernel: tiled ternary GEMM ``y = x @ W^T`` straight from the 2-bit packed codes.

Both activation precisions share one kernel body:

* **W1.58A16** (``INT8_DOT=False``): ``x`` bf16/fp16/fp32, the codes are unpacked in registers
  to ``x``'s dtype and multiplied with ``tl.dot`` into an fp32 accumulator.
* **W1.58A8** (``INT8_DOT=True``): ``x`` is int8 (per-token quantized by
  :mod:`.triton_quant`, row scales in ``xs_ptr``); ``codes - 1`` are exact in int8 and
  ``tl.dot`` accumulates int8 x int8 -> int32; the epilogue applies act scale x weight scale.

Tiling over the runtime layout (see :mod:`ternaryflux.core.packing`): a K tile of ``BLOCK_K``
weights (a multiple of 128, i.e. whole pack blocks) is ``BLOCK_K / 4`` bytes per row. Byte
``r`` of the tile holds, at bits ``2s``, the weight ``k = 128 * (r // 32) + 32 * s + r % 32``;
so one ``[BLOCK_N, BLOCK_K/4]`` byte load and four shift/mask steps give four operands of K
width ``BLOCK_K/4``, each multiplied with the matching activation columns (contiguous runs of
32). Per-channel scales are applied once after the K loop; per-group scales (``GROUP_SIZE`` a
multiple of ``BLOCK_K``, enforced by config pruning) scale each K tile's partial product
inside the loop. Bias, output dtype and the M/N/K tails (masks; the padding codes of the layout
are never trusted: the activation side is masked) are in the epilogue / loads.

``DOT_FP32`` upcasts both operands to fp32 before ``tl.dot`` (always on for fp32 ``x``, with
``INPUT_PRECISION`` ieee or tf32 following ``torch.backends.cuda.matmul.allow_tf32``): needed by the Triton CPU
interpreter for bf16 (its bf16 arithmetic is broken) and by pre-Ampere GPUs for bf16.
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
    KP,
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
    mask_m = offs_m < M
    mask_n = offs_n < N
    tl.static_assert(BLOCK_K % 128 == 0, "K tiles are whole 128-weight pack blocks")
    tl.static_assert(GROUP_SIZE % BLOCK_K == 0, "a K tile must lie inside one scale group")
    BYTES: tl.constexpr = BLOCK_K // 4
    r = tl.arange(0, BYTES)
    k_of_r = (r // 32) * 128 + (r % 32)  # weight index (slice 0) held by byte r of a tile
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    kp_bytes = KP // 4

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, KP, BLOCK_K):
        byte = k0 // 4 + r
        p = tl.load(w_rows + byte[None, :], mask=mask_n[:, None] & (byte[None, :] < kp_bytes), other=85)
        if INT8_DOT:
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        else:
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for s in tl.static_range(4):
            kk = k0 + 32 * s + k_of_r
            a = tl.load(x_rows + kk[None, :], mask=mask_m[:, None] & (kk[None, :] < K), other=0)
            w = (((p >> (2 * s)) & 3).to(tl.int8) - 1).to(tl.int8)  # [BLOCK_N, BYTES] in {-1, 0, 1}
            if INT8_DOT:
                part = tl.dot(a, tl.trans(w), part, out_dtype=tl.int32)
            elif DOT_FP32:
                part = tl.dot(
                    a.to(tl.float32), tl.trans(w.to(tl.float32)), part, input_precision=INPUT_PRECISION
                )
            else:
                part = tl.dot(a, tl.trans(w.to(a.dtype)), part)
        if GROUP_SIZE > 0:
            g = k0 // GROUP_SIZE
            gs = tl.load(s_ptr + offs_n * stride_sn + g, mask=mask_n, other=0.0)
            acc += part.to(tl.float32) * gs[None, :]
        else:
            acc += part.to(tl.float32)

    if GROUP_SIZE == 0:
        acc = acc * tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0)[None, :]
    if HAS_XSCALE:
        acc = acc * tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def ternary_gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    x_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    dot_fp32: bool = False,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """Launch the tiled GEMM on 2-D ``x`` ``[M, k]`` (float, or int8 with ``x_scale`` ``[M]``).

    ``out`` (``[M, N]``, last dim contiguous) receives the result in its own dtype; by default a
    new tensor of ``x``'s dtype (fp32 for int8 ``x``).
    """
    m = x.shape[0]
    n = packed.shape[0]
    kp = packed.shape[1] * 4
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

    _ternary_gemm_kernel[grid](
        x,
        x_scale if x_scale is not None else scale,
        packed,
        scale,
        bias if bias is not None else scale,
        out,
        m,
        n,
        k,
        kp,
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
    )
    return out
