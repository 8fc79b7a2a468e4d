"""FLUX.1 transformer in plain PyTorch, matching the BFL architecture that ComfyUI runs.

Double-stream blocks (separate image/text weights, joint attention), single-stream blocks
(fused linear1/linear2), RoPE over (16, 56, 56) axes, adaLN modulation from a vector made of the
timestep, the pooled text vector and (FLUX.1-dev) the guidance strength. Parameter names are the
BFL checkpoint keys, so ``model.load_state_dict(bfl_state_dict)`` works, and every Linear inside
the blocks can be swapped for a :class:`~.ternary_linear.TernaryLinear`.

No ComfyUI import: the offline tool calibrates and distills with this module; the ComfyUI
integration tests compare it numerically against the host's own FLUX.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flux_layout import FluxConfig, config_from_state_dict

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
    def __init__(self, in_dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, device=device, dtype=dtype)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, device=device, dtype=dtype)

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
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.norm = QKNorm(dim // num_heads, device, dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)


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
    def __init__(self, dim: int, double: bool, device=None, dtype=None):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True, device=device, dtype=dtype)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.multiplier == 6 else None


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class DoubleStreamBlock(nn.Module):
    def __init__(
        self, hidden: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, device=None, dtype=None
    ):
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        self.num_heads = num_heads
        kw = {"device": device, "dtype": dtype}
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", Modulation(hidden, True, **kw))
            setattr(self, f"{s}_attn", SelfAttention(hidden, num_heads, qkv_bias, **kw))
            setattr(
                self,
                f"{s}_mlp",
                nn.Sequential(
                    nn.Linear(hidden, mlp_hidden, bias=True, **kw),
                    nn.GELU(approximate="tanh"),
                    nn.Linear(mlp_hidden, hidden, bias=True, **kw),
                ),
            )

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
        img_m1, img_m2 = self.img_mod(vec)
        txt_m1, txt_m2 = self.txt_mod(vec)
        img_q, img_k, img_v = split_qkv(
            self.img_attn.qkv((1 + img_m1.scale) * _layer_norm(img) + img_m1.shift), self.num_heads
        )
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = split_qkv(
            self.txt_attn.qkv((1 + txt_m1.scale) * _layer_norm(txt) + txt_m1.shift), self.num_heads
        )
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        attn = attention(
            torch.cat((txt_q, img_q), dim=2),
            torch.cat((txt_k, img_k), dim=2),
            torch.cat((txt_v, img_v), dim=2),
            pe,
        )
        txt_a, img_a = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + img_m1.gate * self.img_attn.proj(img_a)
        img = img + img_m2.gate * self.img_mlp((1 + img_m2.scale) * _layer_norm(img) + img_m2.shift)
        txt = txt + txt_m1.gate * self.txt_attn.proj(txt_a)
        txt = txt + txt_m2.gate * self.txt_mlp((1 + txt_m2.scale) * _layer_norm(txt) + txt_m2.shift)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, device=None, dtype=None):
        super().__init__()
        self.hidden_size = hidden
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden * mlp_ratio)
        kw = {"device": device, "dtype": dtype}
        self.linear1 = nn.Linear(hidden, hidden * 3 + self.mlp_hidden_dim, **kw)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden_dim, hidden, **kw)
        self.norm = QKNorm(hidden // num_heads, **kw)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden, False, **kw)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor) -> Tensor:
        mod, _ = self.modulation(vec)
        x_mod = (1 + mod.scale) * _layer_norm(x) + mod.shift
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_qkv(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe)
        return x + mod.gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int, device=None, dtype=None):
        super().__init__()
        self.linear = nn.Linear(hidden, out_channels, bias=True, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden, 2 * hidden, device=device, dtype=dtype)
        )

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * _layer_norm(x) + shift[:, None, :])


# ----------------------------------------------------------------------------- model


class Flux(nn.Module):
    """The FLUX.1 transformer. ``forward`` takes patchified tokens; :meth:`forward_latent` takes
    a ``[B, C, H, W]`` latent the way ComfyUI's FLUX does (same patchify and position ids)."""

    def __init__(self, config: FluxConfig, device=None, dtype=None):
        super().__init__()
        self.config = c = config
        kw = {"device": device, "dtype": dtype}
        self.pe_embedder = EmbedND(c.theta, c.axes_dim)
        self.img_in = nn.Linear(c.in_channels, c.hidden_size, bias=True, **kw)
        self.time_in = MLPEmbedder(256, c.hidden_size, **kw)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size, **kw)
        self.guidance_in = MLPEmbedder(256, c.hidden_size, **kw) if c.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size, **kw)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias, **kw)
            for _ in range(c.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, **kw)
            for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(c.hidden_size, c.out_channels, **kw)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    # -- pieces, exposed so the tool can run block by block ---------------------------
    def embed_vector(self, timesteps: Tensor, y: Tensor | None, guidance: Tensor | None) -> Tensor:
        dt = self.img_in.weight.dtype
        if y is None:
            y = torch.zeros(timesteps.shape[0], self.config.vec_in_dim, device=timesteps.device, dtype=dt)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(dt))
        if self.config.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(dt))
        return vec + self.vector_in(y[:, : self.config.vec_in_dim].to(dt))

    def embed(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The inputs of the first block: ``{"img", "txt", "vec", "pe"}`` (BFL signature). Uses
        only the embedders, so it runs on a model whose blocks are not loaded (meta)."""
        return {
            "img": self.img_in(img),
            "txt": self.txt_in(txt),
            "vec": self.embed_vector(timesteps, y, guidance),
            "pe": self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)),
        }

    def forward(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """BFL signature: img ``[B, L_img, in_channels]``, txt ``[B, L_txt, context_in_dim]``."""
        e = self.embed(img, img_ids, txt, txt_ids, timesteps, y, guidance)
        img, txt, vec, pe = e["img"], e["txt"], e["vec"], e["pe"]
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, pe)
        return self.final_layer(x[:, txt.shape[1] :, ...], vec)

    @staticmethod
    def latent_to_tokens(
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """ComfyUI's calling convention (latent ``[B, C, H, W]``) → the keyword arguments of
        :meth:`forward` / :meth:`embed` (patchified tokens, position ids)."""
        img, img_ids, _ = patchify(x)
        txt_ids = torch.zeros(x.shape[0], context.shape[1], 3, device=x.device, dtype=img_ids.dtype)
        return {
            "img": img,
            "img_ids": img_ids,
            "txt": context.to(img.dtype),
            "txt_ids": txt_ids,
            "timesteps": timestep,
            "y": y,
            "guidance": guidance,
        }

    def forward_latent(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """ComfyUI's calling convention: latent ``[B, C, H, W]``, timestep = sigma in [0, 1]."""
        out = self.forward(**self.latent_to_tokens(x, timestep, context, y, guidance))
        h, w = (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2
        return unpatchify(out, h, w, x.shape[-2], x.shape[-1])


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


def flux_from_state_dict(
    sd: Mapping[str, Tensor], dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> Flux:
    """Build a :class:`Flux` from a BFL-layout state dict, dense or ternary.

    The model is created on the meta device (no dense allocation), ternary layers (those with a
    ``weight_scale`` entry) become :class:`~.ternary_linear.TernaryLinear`, and every tensor is
    assigned from ``sd`` (cast to ``dtype`` when given; packed codes and scales keep theirs).
    """
    from .ternary_linear import replace_with_ternary_from_state_dict

    config = config_from_state_dict(sd)
    with torch.device("meta"):
        model = Flux(config, dtype=dtype or torch.float32)
    replace_with_ternary_from_state_dict(model, sd)
    tensors = {}
    for k, v in sd.items():
        keep = not v.is_floating_point() or k.endswith(".weight_scale")
        tensors[k] = v.to(device) if keep or dtype is None else v.to(device=device, dtype=dtype)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise KeyError(
            f"state dict does not match FLUX {config}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
