"""Activation-aware ternarization used by *Ternarize FLUX* when a calibration file is given and
the offline tool's calibrated quantizer is not available.

Method ("importance-weighted TWN", documented in docs/NODES.md): with ``a_k = E[x_k^2]`` the mean
squared activation of input channel ``k`` over the calibration data, each output row (or group)
minimises the expected output error of its dot products, ``sum_k a_k (W_k - alpha T_k)^2``, over

* thresholds ``delta = f * mean|W|`` for ``f`` in :data:`DELTA_FACTORS` (``T = sign(W) [|W| > delta]``), and
* for each threshold, the optimal scale ``alpha = sum_k a_k |W_k| T_k^2 / sum_k a_k T_k^2``.

Channels that carry large activations are thus reproduced more faithfully. No ComfyUI import.
"""

from __future__ import annotations

import torch

from ..core.ternary_weight import TernaryWeight, check_group_size

DELTA_FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)


@torch.no_grad()
def importance_weighted_ternarize(
    w: torch.Tensor, act_sq_mean: torch.Tensor, group_size: int = 0
) -> TernaryWeight:
    """Ternarize ``w`` ``[N, K]`` given per-input-channel mean squared activations ``[K]``."""
    wf = w.detach().to(torch.float32)
    n, k = wf.shape
    check_group_size(k, group_size)
    if act_sq_mean.shape != (k,):
        raise ValueError(f"activation statistics have shape {tuple(act_sq_mean.shape)}, expected ({k},)")
    a = act_sq_mean.to(device=wf.device, dtype=torch.float32).clamp_min(0)
    a = a / a.mean().clamp_min(1e-12) + 1e-6  # relative importance, never exactly zero
    g = 1 if group_size == 0 else k // group_size
    wg = wf.reshape(n, g, -1)
    ag = a.reshape(1, g, -1)
    absw = wg.abs()
    mean_abs = absw.mean(-1, keepdim=True)
    best_err = torch.full((n, g, 1), float("inf"), device=wf.device)
    best_t = torch.zeros_like(wg)
    best_alpha = torch.zeros((n, g, 1), device=wf.device)
    for f in DELTA_FACTORS:
        mask = (absw > f * mean_abs).to(torch.float32)
        denom = (ag * mask).sum(-1, keepdim=True)
        alpha = (ag * absw * mask).sum(-1, keepdim=True) / denom.clamp_min(1e-12)
        t = torch.sign(wg) * mask
        err = (ag * (wg - alpha * t) ** 2).sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_alpha = torch.where(better, alpha, best_alpha)
        best_t = torch.where(better, t, best_t)
    codes = (best_t + 1).to(torch.uint8).reshape(n, k)
    return TernaryWeight.from_codes(codes.cpu(), best_alpha.reshape(n, g).cpu(), group_size)
