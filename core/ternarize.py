"""Data-free ternarization of a dense weight: BitNet b1.58 absmean and TWN thresholds.

All functions take a float weight ``W`` of shape ``[N, K]`` and return
``(codes, scale)`` with uint8 codes ``[N, K]`` in {0, 1, 2} (code = t + 1, t in {-1, 0, 1})
and float32 scales ``[N, G]``; see :class:`~.ternary_weight.TernaryWeight`.
"""

from __future__ import annotations

import torch

from .ternary_weight import TernaryWeight, check_group_size

EPS = 1e-8


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
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
        g = _grouped(wf, group_size)
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
    g = _grouped(wf, group_size)
    delta = delta_factor * g.abs().mean(-1, keepdim=True)
    mask = g.abs() > delta
    t = torch.sign(g) * mask
    cnt = mask.sum(-1, keepdim=True).clamp_min(1)
    alpha = (g.abs() * mask).sum(-1, keepdim=True) / cnt
    codes = (t + 1).to(torch.uint8).reshape_as(wf)
    return codes, alpha.reshape(wf.shape[0], -1).contiguous()


def ternarize(w: torch.Tensor, method: str = "absmean", group_size: int = 0) -> TernaryWeight:
    """Ternarize a dense ``[N, K]`` weight into a :class:`TernaryWeight` with a data-free method."""
    if method == "absmean":
        codes, scale = absmean(w, "group" if group_size else "channel", group_size)
    elif method == "twn":
        codes, scale = twn(w, group_size)
    else:
        raise ValueError(f"unknown data-free method {method!r}: use 'absmean' or 'twn'")
    return TernaryWeight.from_codes(codes, scale, group_size)
