"""The FLUX family's architecture facts: which layers exist and which are ternary (per
architecture and ternary policy), and the hyper-parameters implied by a state dict's keys.

Two architectures, both in the BFL key layout ComfyUI runs:

* ``flux`` — FLUX.1 (dev, schnell): each block has its own adaLN modulation Linear
  (``img_mod.lin`` / ``txt_mod.lin`` / ``modulation.lin``), GELU MLPs, biases.
* ``flux2`` — FLUX.2 (klein 4B / 9B, dev): three *global* modulation Linears shared by all
  blocks (``double_stream_modulation_img.lin``, ``double_stream_modulation_txt.lin``,
  ``single_stream_modulation.lin``), SwiGLU MLPs, no biases, patch 1, 128 channels, 4 RoPE axes.
  Detected, as ComfyUI does, by the key ``double_stream_modulation_img.lin.weight``.

Which Linears are ternary is a **policy** recorded in the checkpoint metadata:

* ``blocks`` — the attention and MLP Linears inside ``double_blocks`` / ``single_blocks`` only
  (Bonsai Image's choice);
* ``blocks+modulation`` — those plus the adaLN modulation Linears (the 1.58-bit FLUX paper's
  choice; for FLUX.1 they sit inside the blocks, for FLUX.2 they are the three global ones).

FLUX.1's default is ``blocks+modulation`` (what every FLUX.1 checkpoint so far holds), FLUX.2's
``blocks`` (measured on the trained FLUX.2 proxy, see :data:`FLUX2`). Embedders, ``final_layer``, norms and biases always stay in source precision, which
keeps the keys ComfyUI's detection reads (``img_in``, ``txt_in``, ``vector_in``) intact.
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

ROPE_AXES = (16, 56, 56)
HEAD_DIM = sum(ROPE_AXES)  # 128: ComfyUI derives num_heads = hidden_size // 128

POLICY_BLOCKS = "blocks"
POLICY_BLOCKS_MODULATION = "blocks+modulation"
POLICIES = (POLICY_BLOCKS, POLICY_BLOCKS_MODULATION)
FLUX2_DETECT_KEY = "double_stream_modulation_img.lin.weight"


@dataclass(frozen=True)
class Architecture:
    """Where the Linears of one FLUX architecture sit (module paths, BFL keys)."""

    name: str  # "flux" | "flux2" (the checkpoint metadata's ``architecture``)
    title: str  # for messages: "FLUX.1" | "FLUX.2"
    double_linears: tuple[str, ...]  # attention + MLP Linears of a double block
    single_linears: tuple[str, ...]
    double_modulation: tuple[str, ...]  # modulation Linears inside a double block (FLUX.1)
    single_modulation: tuple[str, ...]
    global_modulation: tuple[str, ...]  # modulation Linears outside the blocks (FLUX.2)
    default_policy: str

    def ternary_layer_names(self, depth: int, depth_single: int, policy: str | None = None) -> list[str]:
        """Every ternary layer's module path under ``policy``, in the model's key order."""
        mod = _check_policy(policy or self.default_policy) == POLICY_BLOCKS_MODULATION
        dbl = [n for n in _DOUBLE_ORDER[self.name] if mod or n not in self.double_modulation]
        sgl = [n for n in _SINGLE_ORDER[self.name] if mod or n not in self.single_modulation]
        names = [f"double_blocks.{i}.{n}" for i in range(depth) for n in dbl]
        names += [f"single_blocks.{i}.{n}" for i in range(depth_single) for n in sgl]
        return names + (list(self.global_modulation) if mod else [])

    def is_ternary_layer(self, prefix: str, policy: str | None = None) -> bool:
        mod = _check_policy(policy or self.default_policy) == POLICY_BLOCKS_MODULATION
        if mod and prefix in self.global_modulation:
            return True
        m = _BLOCK_RE.match(prefix)
        if m is None:
            return False
        kind, name = m.group(1), m.group(2)
        linears, modl = (
            (self.double_linears, self.double_modulation)
            if kind == "double"
            else (self.single_linears, self.single_modulation)
        )
        return name in linears or (mod and name in modl)


_BLOCK_RE = re.compile(r"^(double|single)_blocks\.\d+\.(.+)$")

FLUX1 = Architecture(
    name="flux",
    title="FLUX.1",
    double_linears=tuple(n for n in DOUBLE_BLOCK_LINEARS if not n.endswith("_mod.lin")),
    single_linears=("linear1", "linear2"),
    double_modulation=("img_mod.lin", "txt_mod.lin"),
    single_modulation=("modulation.lin",),
    global_modulation=(),
    default_policy=POLICY_BLOCKS_MODULATION,
)
FLUX2 = Architecture(
    name="flux2",
    title="FLUX.2",
    double_linears=tuple(n for n in DOUBLE_BLOCK_LINEARS if not n.endswith("_mod.lin")),
    single_linears=("linear1", "linear2"),
    double_modulation=(),
    single_modulation=(),
    global_modulation=(
        "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.lin",
        "single_stream_modulation.lin",
    ),
    # Measured on the trained FLUX.2 proxy (docs/QUANTIZATION.md, bench/results/quality-flux2-policy.json,
    # 384 images): with the default method twn, `blocks` ties on the GenEval-proxy score (0.219 vs
    # 0.222) and has the lower held-out velocity error (0.386 vs 0.462); with calibrated (sequential)
    # `blocks+modulation` scores higher (0.366 vs 0.300) but its velocity error is higher too (0.236 vs
    # 0.136: the global modulation is rounded without data). No policy wins on both, so the default
    # stays `blocks`; it is also the format's reading default for FLUX.2 files without the field.
    # `blocks+modulation` is 18% smaller (klein 4B 1.122 vs 1.368 GB, 2-bit g128).
    default_policy=POLICY_BLOCKS,
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (FLUX1, FLUX2)}
# Linear order inside a block (the model's state-dict order)
_DOUBLE_ORDER = {"flux": DOUBLE_BLOCK_LINEARS, "flux2": FLUX2.double_linears}
_SINGLE_ORDER = {"flux": ("linear1", "linear2", "modulation.lin"), "flux2": ("linear1", "linear2")}


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown ternary policy {policy!r} (expected one of {POLICIES})")
    return policy


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (expected one of {tuple(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def is_ternary_layer(prefix: str, arch: str = "flux", policy: str | None = None) -> bool:
    """True for the module path of a Linear that architecture ``arch`` stores ternary under
    ``policy`` (``None``: the architecture's default)."""
    return architecture(arch).is_ternary_layer(prefix, policy)


def ternary_layer_names(
    depth: int, depth_single: int, arch: str = "flux", policy: str | None = None
) -> list[str]:
    """Every ternary layer's module path, in block order."""
    return architecture(arch).ternary_layer_names(depth, depth_single, policy)


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

    architecture = "flux"
    patch_size = 2

    @property
    def latent_channels(self) -> int:
        """Channels of the ``[B, C, H, W]`` latent the model takes (before patchify)."""
        return self.in_channels // (self.patch_size * self.patch_size)

    def to_dict(self) -> dict:
        return asdict(self)


FLUX2_ROPE_AXES = (32, 32, 32, 32)


@dataclass(frozen=True)
class Flux2Config:
    """FLUX.2 hyper-parameters (BFL names), as ComfyUI's detection sets them for
    ``image_model="flux2"``. Defaults are FLUX.2 [klein] 4B; see :data:`FLUX2_VARIANTS`."""

    in_channels: int = 128  # patch size 1
    out_channels: int = 128
    context_in_dim: int = 7680
    hidden_size: int = 3072
    mlp_ratio: float = 3.0  # SwiGLU: the up-projection has 2 * mlp_ratio * hidden rows
    num_heads: int = 24
    depth: int = 5
    depth_single_blocks: int = 20
    axes_dim: tuple[int, ...] = FLUX2_ROPE_AXES
    theta: int = 2000
    guidance_embed: bool = False
    txt_ids_dims: tuple[int, ...] = (3,)  # RoPE axes that carry the text token index

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads != sum(self.axes_dim):
            raise ValueError(
                f"hidden_size {self.hidden_size} with {self.num_heads} heads gives head dim "
                f"{self.hidden_size / self.num_heads}, but the RoPE axes {self.axes_dim} need {sum(self.axes_dim)}"
            )

    architecture = "flux2"
    patch_size = 1
    vec_in_dim = None  # no pooled-text vector

    @property
    def latent_channels(self) -> int:
        return self.in_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def variant(self) -> str:
        return "dev" if self.guidance_embed else "klein"

    def to_dict(self) -> dict:
        return asdict(self)


# From the diffusers conversion configs (docs: /work/shared/notes/flux2-bonsai.md); not from files.
FLUX2_VARIANTS: dict[str, Flux2Config] = {
    "klein-4b": Flux2Config(
        context_in_dim=7680, hidden_size=3072, num_heads=24, depth=5, depth_single_blocks=20
    ),
    "klein-9b": Flux2Config(
        context_in_dim=12288, hidden_size=4096, num_heads=32, depth=8, depth_single_blocks=24
    ),
    "dev": Flux2Config(
        context_in_dim=15360,
        hidden_size=6144,
        num_heads=48,
        depth=8,
        depth_single_blocks=48,
        guidance_embed=True,
    ),
}

AnyFluxConfig = FluxConfig | Flux2Config


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


def architecture_of_keys(keys) -> str:
    """``"flux2"`` when the BFL keys hold FLUX.2's global modulation, else ``"flux"``."""
    return "flux2" if FLUX2_DETECT_KEY in keys else "flux"


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> FluxConfig | Flux2Config:
    """Infer the config (:class:`FluxConfig` or :class:`Flux2Config`) from BFL keys and logical
    shapes, as ComfyUI's detection does."""
    if architecture_of_keys(shapes) == "flux2":
        return _flux2_config_from_shapes(shapes)
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


def _flux2_config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> Flux2Config:
    hidden, in_ch = _shape(shapes, "img_in.weight", "image embedder")
    _, ctx = _shape(shapes, "txt_in.weight", "text embedder")
    depth = _count_blocks(shapes, "double_blocks.")
    depth_single = _count_blocks(shapes, "single_blocks.")
    if depth:
        mlp_hidden = _shape(shapes, "double_blocks.0.img_mlp.2.weight", "double-block MLP")[1]
    elif depth_single:
        mlp_hidden = _shape(shapes, "single_blocks.0.linear2.weight", "single-block linear2")[1] - hidden
    else:
        mlp_hidden = 3 * hidden
    out_ch = _shape(shapes, "final_layer.linear.weight", "final layer")[0]
    return Flux2Config(
        in_channels=in_ch,
        out_channels=out_ch,
        context_in_dim=ctx,
        hidden_size=hidden,
        mlp_ratio=mlp_hidden / hidden,
        num_heads=hidden // sum(FLUX2_ROPE_AXES),
        depth=depth,
        depth_single_blocks=depth_single,
        guidance_embed="guidance_in.in_layer.weight" in shapes,
    )


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> FluxConfig | Flux2Config:
    return config_from_shapes(logical_shapes(sd))
