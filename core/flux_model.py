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

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .flux_layers import (  # noqa: F401  (re-exported: the FLUX.1 model's pieces)
    EmbedND,
    LastLayer,
    LatentModel,
    MLPEmbedder,
    Modulation,
    ModulationOut,
    QKNorm,
    RMSNorm,
    SelfAttention,
    apply_rope,
    attention,
    double_stream,
    layer_norm,
    patchify,
    rope,
    run_blocks,
    split_qkv,
    timestep_embedding,
    unpatchify,
)
from .flux_layout import Flux2Config, FluxConfig, config_from_state_dict


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
        return double_stream(self, img, txt, (img_m1, img_m2), (txt_m1, txt_m2), pe)


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
        x_mod = (1 + mod.scale) * layer_norm(x) + mod.shift
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_qkv(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe)
        return x + mod.gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


# ----------------------------------------------------------------------------- model


class Flux(LatentModel):
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
        self.double_blocks = nn.ModuleList(self.new_double_block(c, **kw) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            self.new_single_block(c, **kw) for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(c.hidden_size, c.out_channels, **kw)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    # -- how the streaming tool builds and calls one block (same hooks on Flux2) ---------
    @staticmethod
    def new_double_block(c: FluxConfig, **kw) -> DoubleStreamBlock:
        return DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias, **kw)

    @staticmethod
    def new_single_block(c: FluxConfig, **kw) -> SingleStreamBlock:
        return SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, **kw)

    @staticmethod
    def double_args(s: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """A double block's positional inputs from an :meth:`embed` stream."""
        return s["img"], s["txt"], s["vec"], s["pe"]

    @staticmethod
    def single_args(s: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """A single block's positional inputs (``x`` = text and image tokens joined)."""
        return s["x"], s["vec"], s["pe"]

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
        return run_blocks(self, self.embed(img, img_ids, txt, txt_ids, timesteps, y, guidance))

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

    def tokens_of(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        y: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """:meth:`forward_latent`'s inputs as :meth:`forward`'s (same hook on ``Flux2``)."""
        return self.latent_to_tokens(x, timestep, context, y, guidance)

    @staticmethod
    def tokens_to_latent(out: Tensor, x: Tensor) -> Tensor:
        """:meth:`forward`'s output tokens back to the layout of the input latent ``x``."""
        h, w = (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2
        return unpatchify(out, h, w, x.shape[-2], x.shape[-1])


def model_class(config: FluxConfig | Flux2Config) -> type[nn.Module]:
    """The model of a config: :class:`Flux` (FLUX.1) or :class:`~.flux2_model.Flux2` (FLUX.2)."""
    if config.architecture == "flux2":
        from .flux2_model import Flux2

        return Flux2
    return Flux


def flux_from_state_dict(
    sd: Mapping[str, Tensor], dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """Build a :class:`Flux` (or, for FLUX.2 keys, a :class:`~.flux2_model.Flux2`) from a
    BFL-layout state dict, dense or ternary.

    The model is created on the meta device (no dense allocation), ternary layers (those with a
    ``weight_scale`` entry) become :class:`~.ternary_linear.TernaryLinear`, and every tensor is
    assigned from ``sd`` (cast to ``dtype`` when given; packed codes and scales keep theirs).
    """
    from .ternary_linear import replace_with_ternary_from_state_dict

    config = config_from_state_dict(sd)
    with torch.device("meta"):
        model = model_class(config)(config, dtype=dtype or torch.float32)
    replace_with_ternary_from_state_dict(model, sd)
    tensors = {}
    for k, v in sd.items():
        keep = not v.is_floating_point() or k.endswith(".weight_scale")
        tensors[k] = v.to(device) if keep or dtype is None else v.to(device=device, dtype=dtype)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise KeyError(
            f"state dict does not match {config.__class__.__name__} {config}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
