"""The building blocks FLUX.1 and FLUX.2 share, in plain PyTorch, matching the BFL code that
ComfyUI runs: timestep embedding, RoPE, joint attention, RMS/QK norms, attention and modulation
modules, the final layer, patchify. Parameter names are the BFL checkpoint keys. The models are
:mod:`.flux_model` (FLUX.1) and :mod:`.flux2_model` (FLUX.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- math


def timestep_embedding(
    t: Tensor, dim: int, max_period: float = 10_000, time_factor: float = 1000.0
) -> Tensor:
    """Sinusoidal embedding of ``t`` (in [0, 1] for FLUX; scaled by ``time_factor``): ``[B, dim]``."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices ``[B, L, dim/2, 2, 2]`` for positions ``pos`` ``[B, L]``."""
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    out = pos.to(torch.float64).unsqueeze(-1) * omega
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    x_ = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * x_[..., 0] + freqs[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """Joint attention with RoPE: q, k, v ``[B, H, L, D]`` -> ``[B, L, H*D]``."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = F.scaled_dot_product_attention(q, k, v)
    b, h, seq, d = x.shape
    return x.transpose(1, 2).reshape(b, seq, h * d)


class EmbedND(nn.Module):
    def __init__(self, theta: int, axes_dim: tuple[int, ...]):
        super().__init__()
        self.theta = theta
        self.axes_dim = tuple(axes_dim)

    def forward(self, ids: Tensor) -> Tensor:
        emb = torch.cat([rope(ids[..., i], d, self.theta) for i, d in enumerate(self.axes_dim)], dim=-3)
        return emb.unsqueeze(1)


# ----------------------------------------------------------------------------- layers


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, device=None, dtype=None, bias: bool = True):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=bias, device=device, dtype=dtype)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        xf = x.float()
        rrms = torch.rsqrt(torch.mean(xf**2, dim=-1, keepdim=True) + 1e-6)
        return (xf * rrms).to(dt) * self.scale.to(dt)


class QKNorm(nn.Module):
    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.query_norm = RMSNorm(dim, device, dtype)
        self.key_norm = RMSNorm(dim, device, dtype)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, device=None, dtype=None, proj_bias: bool = True
    ):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.norm = QKNorm(dim // num_heads, device, dtype)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, device=device, dtype=dtype)


def split_qkv(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, L, 3*H*D]`` -> three ``[B, H, L, D]`` tensors."""
    b, seq, _ = qkv.shape
    q, k, v = qkv.view(b, seq, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool, device=None, dtype=None, bias: bool = True):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=bias, device=device, dtype=dtype)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        return split_modulation(self.lin(F.silu(vec))[:, None, :], self.multiplier)


def split_modulation(out: Tensor, multiplier: int) -> tuple[ModulationOut, ModulationOut | None]:
    """A modulation Linear's output ``[B, 1, multiplier*H]`` -> (shift, scale, gate) sets."""
    parts = out.chunk(multiplier, dim=-1)
    return ModulationOut(*parts[:3]), ModulationOut(*parts[3:]) if multiplier == 6 else None


def layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def double_stream(
    block: nn.Module,
    img: Tensor,
    txt: Tensor,
    img_mods: tuple[ModulationOut, ModulationOut],
    txt_mods: tuple[ModulationOut, ModulationOut],
    pe: Tensor,
) -> tuple[Tensor, Tensor]:
    """The double-stream block body FLUX.1 and FLUX.2 share: modulated attention over the joined
    txt+img tokens, then the modulated MLP of each stream. ``block`` holds ``img_attn``,
    ``txt_attn``, ``img_mlp``, ``txt_mlp`` and ``num_heads``; the two architectures differ only in
    where the modulation comes from (per block vs global) and in the MLP."""
    (img_m1, img_m2), (txt_m1, txt_m2) = img_mods, txt_mods
    img_q, img_k, img_v = split_qkv(
        block.img_attn.qkv((1 + img_m1.scale) * layer_norm(img) + img_m1.shift), block.num_heads
    )
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_q, txt_k, txt_v = split_qkv(
        block.txt_attn.qkv((1 + txt_m1.scale) * layer_norm(txt) + txt_m1.shift), block.num_heads
    )
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)
    attn = attention(
        torch.cat((txt_q, img_q), dim=2),
        torch.cat((txt_k, img_k), dim=2),
        torch.cat((txt_v, img_v), dim=2),
        pe,
    )
    txt_a, img_a = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
    img = img + img_m1.gate * block.img_attn.proj(img_a)
    img = img + img_m2.gate * block.img_mlp((1 + img_m2.scale) * layer_norm(img) + img_m2.shift)
    txt = txt + txt_m1.gate * block.txt_attn.proj(txt_a)
    txt = txt + txt_m2.gate * block.txt_mlp((1 + txt_m2.scale) * layer_norm(txt) + txt_m2.shift)
    return img, txt


def run_blocks(model: nn.Module, stream: dict[str, Tensor]) -> Tensor:
    """Every block of a FLUX.1 or FLUX.2 ``model`` on the stream its ``embed`` made, then the
    final layer. The model says what each block takes (``double_args`` / ``single_args``), so
    the two architectures and the streaming quantizer share one stream protocol."""
    s = dict(stream)
    for block in model.double_blocks:
        s["img"], s["txt"] = block(*model.double_args(s))
    s["x"] = torch.cat((s["txt"], s["img"]), dim=1)
    for block in model.single_blocks:
        s["x"] = block(*model.single_args(s))
    return model.final_layer(s["x"][:, s["txt"].shape[1] :, ...], s["vec"])


class LatentModel(nn.Module):
    """What FLUX.1 and FLUX.2 share at the latent level: :meth:`forward_latent` (ComfyUI's calling
    convention) is ``tokens_of`` → ``forward`` → ``tokens_to_latent``, each model's own."""

    def forward_latent(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """Latent ``[B, C, H, W]`` in, velocity in the same layout out; timestep = sigma in [0, 1]."""
        return self.tokens_to_latent(self.forward(**self.tokens_of(x, timestep, context, y, guidance)), x)


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int, device=None, dtype=None, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(hidden, out_channels, bias=bias, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden, 2 * hidden, bias=bias, device=device, dtype=dtype)
        )

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * layer_norm(x) + shift[:, None, :])


def patchify(x: Tensor, patch: int = 2) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Latent ``[B, C, H, W]`` -> tokens ``[B, h*w, C*4]``, position ids ``[B, h*w, 3]``, (h, w)."""
    b, c, hh, ww = x.shape
    pad_h, pad_w = (-hh) % patch, (-ww) % patch
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
    h, w = x.shape[-2] // patch, x.shape[-1] // patch
    img = x.reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * patch * patch)
    ids = torch.zeros(h, w, 3, device=x.device, dtype=torch.float32)
    ids[..., 1] = torch.arange(h, device=x.device, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(w, device=x.device, dtype=torch.float32)[None, :]
    return img, ids.reshape(1, h * w, 3).expand(b, -1, -1), (h, w)


def unpatchify(tokens: Tensor, h: int, w: int, hh: int, ww: int, patch: int = 2) -> Tensor:
    b, _, cpp = tokens.shape
    c = cpp // (patch * patch)
    x = tokens.reshape(b, h, w, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * patch, w * patch)
    return x[:, :, :hh, :ww]
