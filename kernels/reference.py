"""Pure-PyTorch ternary linear: the reference every kernel is tested against, and the
CPU/MPS backend.

    y = (x @ T^T) * scale + bias          (per-output-channel scale)
    y = sum_g (x_g @ T_g^T) * scale[:, g] + bias   (per-group scale)

T is unpacked from the 2-bit codes for the duration of the call only; no dense copy outlives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.packing import unpack_2bit


def _signs(packed: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    return unpack_2bit(packed, k).to(dtype) - 1


def ternary_linear_a16(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ternary weight x activations in their own dtype (W1.58A16 semantics); returns x.dtype."""
    n = packed.shape[0]
    groups = scale.shape[1]
    if groups == 1:
        # signs are exact in any float dtype; apply the fp32 scale after the matmul
        y = F.linear(x, _signs(packed, k, x.dtype))
        y = (y.float() * scale.reshape(n).float()).to(x.dtype)
    else:
        w = (_signs(packed, k, torch.float32).view(n, groups, -1) * scale.float().unsqueeze(-1)).view(n, k)
        y = F.linear(x, w.to(x.dtype))
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric absmax int8: ``x ~= q * s`` with ``s = max|x| / 127`` per row.

    Returns int8 ``q`` with x's shape and float32 ``s`` of shape ``[..., 1]``.
    """
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.clamp(torch.round(xf / s), -127, 127).to(torch.int8)
    return q, s


def ternary_linear_a8(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W1.58A8 semantics: int8 per-token activations x ternary weights, exact integer
    accumulation, then ``acc * s_x * scale``. Per-group scales are applied per group."""
    n = packed.shape[0]
    q, s = quantize_activations_int8(x)
    lead = x.shape[:-1]
    qf = q.reshape(-1, k).to(torch.float64)  # integers; float64 keeps the sums exact
    t = _signs(packed, k, torch.float64)
    groups = scale.shape[1]
    if groups == 1:
        acc = qf @ t.T
        y = acc * scale.reshape(1, n).double()
    else:
        gk = k // groups
        acc = torch.einsum("mgk,ngk->mng", qf.view(-1, groups, gk), t.view(n, groups, gk))
        y = (acc * scale.double().unsqueeze(0)).sum(-1)
    y = (y * s.reshape(-1, 1).double()).reshape(*lead, n)
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)
