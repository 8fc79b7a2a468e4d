"""Which FLUX layers are ternary, and the FLUX hyper-parameters implied by a state dict's keys.

Keys follow the BFL layout (the one ComfyUI runs): ``double_blocks.{i}.img_attn.qkv.weight`` etc.
Every Linear inside ``double_blocks`` and ``single_blocks`` is ternary, the adaLN modulation
linears included; embedders, ``final_layer``, norms and biases stay in source precision. This
keeps the keys ComfyUI's FLUX detection reads (``img_in``, ``txt_in``, ``vector_in``) intact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

DOUBLE_BLOCK_LINEARS = (
    "img_mod.lin",
    "img_attn.qkv",
    "img_attn.proj",
    "img_mlp.0",
    "img_mlp.2",
    "txt_mod.lin",
    "txt_attn.qkv",
    "txt_attn.proj",
    "txt_mlp.0",
    "txt_mlp.2",
)
SINGLE_BLOCK_LINEARS = ("linear1", "linear2", "modulation.lin")

_TERNARY_LAYER_RE = re.compile(
    r"^(double_blocks\.\d+\.(" + "|".join(re.escape(n) for n in DOUBLE_BLOCK_LINEARS) + r")"
    r"|single_blocks\.\d+\.(" + "|".join(re.escape(n) for n in SINGLE_BLOCK_LINEARS) + r"))$"
)

ROPE_AXES = (16, 56, 56)
HEAD_DIM = sum(ROPE_AXES)  # 128: ComfyUI derives num_heads = hidden_size // 128


def is_ternary_layer(prefix: str) -> bool:
    """True for the module path of a FLUX Linear that this format stores ternary."""
    return _TERNARY_LAYER_RE.match(prefix) is not None


def ternary_layer_names(depth: int, depth_single: int) -> list[str]:
    """Every ternary layer's module path, in block order."""
    names = [f"double_blocks.{i}.{n}" for i in range(depth) for n in DOUBLE_BLOCK_LINEARS]
    names += [f"single_blocks.{i}.{n}" for i in range(depth_single) for n in SINGLE_BLOCK_LINEARS]
    return names


@dataclass(frozen=True)
class FluxConfig:
    """FLUX.1 hyper-parameters (BFL names). Defaults are FLUX.1-dev."""

    in_channels: int = 64  # after 2x2 patchify: latent channels * 4
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, int, int] = ROPE_AXES
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads != sum(self.axes_dim):
            raise ValueError(
                f"hidden_size {self.hidden_size} with {self.num_heads} heads gives head dim "
                f"{self.hidden_size / self.num_heads}, but the RoPE axes {self.axes_dim} need {sum(self.axes_dim)}"
            )

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def variant(self) -> str:
        return "dev" if self.guidance_embed else "schnell"

    def to_dict(self) -> dict:
        return asdict(self)


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise KeyError(f"not a FLUX state dict: missing {key!r} ({what})")
    return tuple(shapes[key])


def _count_blocks(keys, prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return (max(idx) + 1) if idx else 0


def logical_shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> logical shape; a ternary layer's packed ``weight`` reports its ``weight_shape``."""
    out = {k: tuple(v.shape) for k, v in sd.items()}
    for k, v in sd.items():
        if k.endswith(".weight_shape"):
            out[k[: -len("_shape")]] = tuple(int(x) for x in v.tolist())
    return out


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> FluxConfig:
    """Infer a :class:`FluxConfig` from BFL keys and logical shapes, as ComfyUI's detection does."""
    hidden, in_ch = _shape(shapes, "img_in.weight", "image embedder")
    _, ctx = _shape(shapes, "txt_in.weight", "text embedder")
    _, vec = _shape(shapes, "vector_in.in_layer.weight", "pooled-vector embedder")
    depth = _count_blocks(shapes, "double_blocks.")
    depth_single = _count_blocks(shapes, "single_blocks.")
    if depth:
        mlp_hidden = _shape(shapes, "double_blocks.0.img_mlp.0.weight", "double-block MLP")[0]
    elif depth_single:
        mlp_hidden = _shape(shapes, "single_blocks.0.linear1.weight", "single-block linear1")[0] - 3 * hidden
    else:
        mlp_hidden = 4 * hidden
    out_ch = _shape(shapes, "final_layer.linear.weight", "final layer")[0]
    return FluxConfig(
        in_channels=in_ch,
        out_channels=out_ch,
        vec_in_dim=vec,
        context_in_dim=ctx,
        hidden_size=hidden,
        mlp_ratio=mlp_hidden / hidden,
        num_heads=hidden // HEAD_DIM,
        depth=depth,
        depth_single_blocks=depth_single,
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes or depth == 0,
        guidance_embed="guidance_in.in_layer.weight" in shapes,
    )


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> FluxConfig:
    return config_from_shapes(logical_shapes(sd))
