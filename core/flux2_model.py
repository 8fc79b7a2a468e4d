"""FLUX.2 transformer in plain PyTorch, matching what ComfyUI runs for ``image_model="flux2"``.

Differences from FLUX.1 (:mod:`.flux_model`), all from the architecture ComfyUI 0.33 implements:

* **global modulation**: three Linears outside the blocks (``double_stream_modulation_img.lin``
  and ``double_stream_modulation_txt.lin`` ``[6H, H]``, ``single_stream_modulation.lin``
  ``[3H, H]``) turn the timestep (and, for dev, guidance) vector into the shift/scale/gate sets
  every block uses; the blocks have no modulation of their own;
* **SwiGLU MLPs**: ``img_mlp.0`` ``[2*3H, H]`` → ``silu(a) * b`` → ``img_mlp.2`` ``[H, 3H]``;
  a single block's ``linear1`` is ``[3H + 6H, H]`` (q, k, v, gate, up), ``linear2`` ``[H, 4H]``;
* **no biases** anywhere, no pooled-text vector (no ``vector_in``);
* patch size 1 on 128 latent channels, RoPE over 4 axes of 32 with theta 2000; text tokens carry
  their index on axis 3 (``txt_ids_dims``), image tokens (0, row, column, 0).

Parameter names are the BFL checkpoint keys. No ComfyUI import; the integration test in
``tests/comfyui/`` compares this model with ComfyUI's own on the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flux_layers import (
    EmbedND,
    LastLayer,
    LatentModel,
    MLPEmbedder,
    Modulation,
    QKNorm,
    SelfAttention,
    attention,
    double_stream,
    layer_norm,
    patchify,
    run_blocks,
    split_modulation,
    split_qkv,
    timestep_embedding,
)
from .flux_layout import Flux2Config


class SwiGLU(nn.Module):
    """``silu(first half) * second half`` along the last dimension (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


class Flux2DoubleStreamBlock(nn.Module):
    """Double-stream block without its own modulation: takes the global modulation outputs."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, device=None, dtype=None):
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        self.num_heads = num_heads
        kw = {"device": device, "dtype": dtype}
        for s in ("img", "txt"):
            setattr(self, f"{s}_attn", SelfAttention(hidden, num_heads, False, proj_bias=False, **kw))
            setattr(
                self,
                f"{s}_mlp",
                nn.Sequential(
                    nn.Linear(hidden, 2 * mlp_hidden, bias=False, **kw),
                    SwiGLU(),
                    nn.Linear(mlp_hidden, hidden, bias=False, **kw),
                ),
            )

    def forward(
        self, img: Tensor, txt: Tensor, mod_img: Tensor, mod_txt: Tensor, pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``mod_img`` / ``mod_txt``: the global double-stream modulation outputs ``[B, 1, 6H]``."""
        img_m1, img_m2 = split_modulation(mod_img, 6)
        txt_m1, txt_m2 = split_modulation(mod_txt, 6)
        return double_stream(self, img, txt, (img_m1, img_m2), (txt_m1, txt_m2), pe)


class Flux2SingleStreamBlock(nn.Module):
    """Single-stream block: ``linear1`` gives q, k, v and the SwiGLU pair, ``linear2`` joins
    attention and MLP outputs; modulation comes from outside."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, device=None, dtype=None):
        super().__init__()
        self.hidden_size = hidden
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden * mlp_ratio)
        kw = {"device": device, "dtype": dtype}
        self.linear1 = nn.Linear(hidden, hidden * 3 + 2 * self.mlp_hidden_dim, bias=False, **kw)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden_dim, hidden, bias=False, **kw)
        self.norm = QKNorm(hidden // num_heads, **kw)
        self.mlp_act = SwiGLU()

    def forward(self, x: Tensor, mod_single: Tensor, pe: Tensor) -> Tensor:
        """``mod_single``: the global single-stream modulation output ``[B, 1, 3H]``."""
        mod, _ = split_modulation(mod_single, 3)
        x_mod = (1 + mod.scale) * layer_norm(x) + mod.shift
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, 2 * self.mlp_hidden_dim], dim=-1)
        q, k, v = split_qkv(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe)
        return x + mod.gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


class Flux2(LatentModel):
    """The FLUX.2 transformer. ``forward`` takes tokens (BFL signature); :meth:`forward_latent`
    takes a ``[B, 128, H, W]`` latent the way ComfyUI's Flux2 does (patch 1, 4-axis ids)."""

    def __init__(self, config: Flux2Config, device=None, dtype=None):
        super().__init__()
        self.config = c = config
        kw = {"device": device, "dtype": dtype}
        self.pe_embedder = EmbedND(c.theta, c.axes_dim)
        self.img_in = nn.Linear(c.in_channels, c.hidden_size, bias=False, **kw)
        self.time_in = MLPEmbedder(256, c.hidden_size, bias=False, **kw)
        self.guidance_in = (
            MLPEmbedder(256, c.hidden_size, bias=False, **kw) if c.guidance_embed else nn.Identity()
        )
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size, bias=False, **kw)
        self.double_blocks = nn.ModuleList(self.new_double_block(c, **kw) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            self.new_single_block(c, **kw) for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(c.hidden_size, c.out_channels, bias=False, **kw)
        self.double_stream_modulation_img = Modulation(c.hidden_size, True, bias=False, **kw)
        self.double_stream_modulation_txt = Modulation(c.hidden_size, True, bias=False, **kw)
        self.single_stream_modulation = Modulation(c.hidden_size, False, bias=False, **kw)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    # -- the streaming tool's hooks (see Flux) ------------------------------------------
    @staticmethod
    def new_double_block(c: Flux2Config, **kw) -> Flux2DoubleStreamBlock:
        return Flux2DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, **kw)

    @staticmethod
    def new_single_block(c: Flux2Config, **kw) -> Flux2SingleStreamBlock:
        return Flux2SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, **kw)

    @staticmethod
    def double_args(s: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        return s["img"], s["txt"], s["mod_img"], s["mod_txt"], s["pe"]

    @staticmethod
    def single_args(s: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        return s["x"], s["mod_single"], s["pe"]

    # -- pieces ---------------------------------------------------------------------------
    def embed_vector(self, timesteps: Tensor, guidance: Tensor | None) -> Tensor:
        dt = self.img_in.weight.dtype
        vec = self.time_in(timestep_embedding(timesteps, 256).to(dt))
        if self.config.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(dt))
        return vec

    def modulations(self, vec: Tensor) -> dict[str, Tensor]:
        """The three global modulation outputs (``[B, 1, 6H]``, ``[B, 1, 6H]``, ``[B, 1, 3H]``)."""
        v = F.silu(vec)[:, None, :]
        return {
            "mod_img": self.double_stream_modulation_img.lin(v),
            "mod_txt": self.double_stream_modulation_txt.lin(v),
            "mod_single": self.single_stream_modulation.lin(v),
        }

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
        """The inputs of the first block: ``img``, ``txt``, ``vec`` (for the final layer),
        ``pe`` and the global modulation outputs. ``y`` is accepted and ignored (FLUX.2 has no
        pooled-text vector). Uses only modules outside the blocks."""
        vec = self.embed_vector(timesteps, guidance)
        return {
            "img": self.img_in(img),
            "txt": self.txt_in(txt),
            "vec": vec,
            "pe": self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)),
            **self.modulations(vec),
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
        """img ``[B, L_img, 128]``, txt ``[B, L_txt, context_in_dim]``, ids ``[B, L, 4]``."""
        return run_blocks(self, self.embed(img, img_ids, txt, txt_ids, timesteps, y, guidance))

    @staticmethod
    def latent_to_tokens(
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
        txt_ids_dims: tuple[int, ...] = (3,),
        n_axes: int = 4,
    ) -> dict[str, Tensor | None]:
        """ComfyUI's calling convention (latent ``[B, C, H, W]``) → :meth:`forward`'s keyword
        arguments: patch-1 tokens, image ids (0, row, column, 0), text ids with the token index on
        the ``txt_ids_dims`` axes."""
        img, _, (h, w) = patchify(x, patch=1)
        b = x.shape[0]
        ids = torch.zeros(h, w, n_axes, device=x.device, dtype=torch.float32)
        ids[..., 1] = torch.arange(h, device=x.device, dtype=torch.float32)[:, None]
        ids[..., 2] = torch.arange(w, device=x.device, dtype=torch.float32)[None, :]
        txt_ids = torch.zeros(b, context.shape[1], n_axes, device=x.device, dtype=torch.float32)
        for i in txt_ids_dims:
            txt_ids[:, :, i] = torch.arange(context.shape[1], device=x.device, dtype=torch.float32)
        return {
            "img": img,
            "img_ids": ids.reshape(1, h * w, n_axes).expand(b, -1, -1),
            "txt": context.to(img.dtype),
            "txt_ids": txt_ids,
            "timesteps": timestep,
            "y": y,
            "guidance": guidance,
        }

    def tokens_of(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """:meth:`forward_latent`'s inputs as :meth:`forward`'s (this config's text-id axes)."""
        c = self.config
        return self.latent_to_tokens(x, timestep, context, y, guidance, c.txt_ids_dims, len(c.axes_dim))

    @staticmethod
    def tokens_to_latent(out: Tensor, x: Tensor) -> Tensor:
        """:meth:`forward`'s output tokens back to the layout of the input latent ``x``."""
        b, _, hh, ww = x.shape
        return out.transpose(1, 2).reshape(b, out.shape[-1], hh, ww)
