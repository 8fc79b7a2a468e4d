"""Data-free ternarization of a dense weight: BitNet b1.58 absmean and TWN thresholds.

All functions take a float weight ``W`` of shape ``[N, K]`` and return
``(codes, scale)`` with uint8 codes ``[N, K]`` in {0, 1, 2} (code = t + 1, t in {-1, 0, 1})
and float32 scales ``[N, G]``; see :class:`~.ternary_weight.TernaryWeight`.
"""

from __future__ import annotations

import torch

from .packing import pack_2bit
from .ternary_weight import TernaryWeight, check_group_size, round_scale_to_fp16

EPS = 1e-8
DATA_FREE_METHODS = ("absmean", "twn")


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """View ``[N, K]`` as ``[N, G, K/G]`` (G = 1 for per-channel)."""
    n, k = w.shape
    check_group_size(k, group_size)
    return w.reshape(n, 1 if group_size == 0 else k // group_size, -1)


def absmean(
    w: torch.Tensor, granularity: str = "channel", group_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58 absmean ternarization.

    With ``gamma = mean(|W|)`` over the scaling unit (the whole tensor, one output row, or one
    group of ``group_size`` inputs of a row):

        T = RoundClip(W / (gamma + eps), -1, 1),   RoundClip(x, a, b) = max(a, min(b, round(x)))
        W ~= gamma * T

    Args:
        w: float weight ``[N, K]``.
        granularity: ``"tensor"`` (one gamma), ``"channel"`` (one per output row) or ``"group"``.
        group_size: inputs per scale when ``granularity == "group"``.
    """
    wf = w.detach().to(torch.float32)
    n, _ = wf.shape
    if granularity == "tensor":
        gamma = wf.abs().mean().expand(n, 1, 1)
        g = wf.reshape(n, 1, -1)
    elif granularity == "channel":
        g = wf.reshape(n, 1, -1)
        gamma = g.abs().mean(-1, keepdim=True)
    elif granularity == "group":
        if group_size <= 0:
            raise ValueError("granularity='group' needs group_size > 0")
        g = grouped(wf, group_size)
        gamma = g.abs().mean(-1, keepdim=True)
    else:
        raise ValueError(f"unknown granularity {granularity!r}: use 'tensor', 'channel' or 'group'")
    t = torch.clamp(torch.round(g / (gamma + EPS)), -1, 1)
    codes = (t + 1).to(torch.uint8).reshape_as(wf)
    return codes, gamma.reshape(n, -1).contiguous()


def twn(w: torch.Tensor, group_size: int = 0, delta_factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary Weight Networks (Li et al. 2016) thresholds, per output row or group.

    delta = delta_factor * mean(|W|);  T = sign(W) * [|W| > delta]
    alpha = mean(|W_i|) over the i with |W_i| > delta      (the L2-optimal scale for that T)
    """
    wf = w.detach().to(torch.float32)
    g = grouped(wf, group_size)
    delta = delta_factor * g.abs().mean(-1, keepdim=True)
    mask = g.abs() > delta
    t = torch.sign(g) * mask
    cnt = mask.sum(-1, keepdim=True).clamp_min(1)
    alpha = (g.abs() * mask).sum(-1, keepdim=True) / cnt
    codes = (t + 1).to(torch.uint8).reshape_as(wf)
    return codes, alpha.reshape(wf.shape[0], -1).contiguous()


def ternarize_with_error(
    w: torch.Tensor, method: str, group_size: int, chunk_elems: int = 1 << 17
) -> tuple[TernaryWeight, float]:
    """Data-free ternarization of ``w`` (any float dtype) a slab of rows at a time: every method
    is per row (or per group inside a row), so the result equals the whole-matrix one while the
    float32 temporaries stay cache-sized. Returns the weight and its relative L2 error.

    The default slab (128 Ki elements, 512 KB in float32) keeps every temporary under the 1 MB
    mmap threshold set by ``quant.flux.limit_heap_growth``, so they are reused from the heap instead of
    being page-faulted in fresh each time: measured 3x faster (485 vs 151 MB/s of bf16 input on
    a 12288x3072 weight, 2 cores) than 4 Mi-element slabs."""
    if method not in DATA_FREE_METHODS:
        raise ValueError(f"unknown data-free method {method!r}: use one of {DATA_FREE_METHODS}")
    check_group_size(w.shape[1], group_size)
    n, k = w.shape
    rows = max(1, chunk_elems // k)
    packed, raw, rounded = [], [], []
    err = ref = 0.0
    for r0 in range(0, n, rows):
        wc = w[r0 : r0 + rows].float()
        if method == "absmean":
            codes, scale = absmean(wc, "group" if group_size else "channel", group_size)
        else:
            codes, scale = twn(wc, group_size)
        packed.append(pack_2bit(codes))
        raw.append(scale)
        scale = round_scale_to_fp16(scale)  # as TernaryWeight.from_codes does
        rounded.append(scale)
        t = codes.to(torch.float32).sub_(1)
        s = scale if group_size == 0 else scale.repeat_interleave(group_size, dim=1)
        err += float(torch.linalg.vector_norm(torch.addcmul(wc, t, s, value=-1))) ** 2
        ref += float(torch.linalg.vector_norm(wc)) ** 2
    scale = torch.cat(rounded)
    whole = round_scale_to_fp16(torch.cat(raw))
    tw = TernaryWeight(torch.cat(packed), whole, (n, k), group_size)
    if not torch.equal(whole, scale):  # fp16 rounding refused for the matrix as a whole: exact error
        wf = w.float()
        err = float(torch.linalg.vector_norm(wf - tw.dequantize())) ** 2
    return tw, (err / ref) ** 0.5 if ref > 0 else 0.0


def ternarize(w: torch.Tensor, method: str = "absmean", group_size: int = 0) -> TernaryWeight:
    """Ternarize a dense ``[N, K]`` weight into a :class:`TernaryWeight` with a data-free method
    (``absmean`` or ``twn``); see :func:`ternarize_with_error`."""
    return ternarize_with_error(w, method, group_size)[0]
