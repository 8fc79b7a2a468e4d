"""Seeded tiny FLUX state dicts (BFL key layout) for tests, the demo and benchmarks.

``structured=True`` mimics what makes trained DiTs hard to quantize, which i.i.d. Gaussian
weights hide: heavy-tailed (Student-t) weights, and a few *outlier input channels* whose
activations are much larger than the rest. The outliers are made the way they arise in FLUX:
the adaLN modulation bias gives a few channels a large ``scale`` term, so after
``(1 + scale) * LayerNorm(x) + shift`` those channels of every block input are 10-30x larger;
and a few rows of each MLP up-projection are larger, so the down-projection sees outliers too.
"""

from __future__ import annotations

import torch

from .flux_layout import Flux2Config, FluxConfig
from .flux_model import Flux, model_class


def tiny_flux_config(
    hidden: int = 128,
    depth: int = 1,
    depth_single: int = 1,
    guidance: bool = True,
    context_in_dim: int = 4096,
    vec_in_dim: int = 768,
    latent_channels: int = 16,
    mlp_ratio: float = 4.0,
) -> FluxConfig:
    """A FLUX config ComfyUI can load (hidden a multiple of 128 = one head per 128)."""
    return FluxConfig(
        in_channels=latent_channels * 4,
        out_channels=latent_channels * 4,
        vec_in_dim=vec_in_dim,
        context_in_dim=context_in_dim,
        hidden_size=hidden,
        mlp_ratio=mlp_ratio,
        num_heads=hidden // 128,
        depth=depth,
        depth_single_blocks=depth_single,
        guidance_embed=guidance,
    )


def tiny_flux2_config(
    hidden: int = 128,
    depth: int = 1,
    depth_single: int = 1,
    guidance: bool = False,
    context_in_dim: int = 256,
    mlp_ratio: float = 3.0,
) -> Flux2Config:
    """A FLUX.2 config ComfyUI can load (hidden a multiple of 128 = one head per 128); 128 latent
    channels and patch 1 as in every FLUX.2. ``guidance=True`` is a tiny FLUX.2 dev."""
    return Flux2Config(
        context_in_dim=context_in_dim,
        hidden_size=hidden,
        mlp_ratio=mlp_ratio,
        num_heads=hidden // 128,
        depth=depth,
        depth_single_blocks=depth_single,
        guidance_embed=guidance,
    )


def _heavy_tailed(shape, gen: torch.Generator, df: float = 3.0) -> torch.Tensor:
    # Student-t via normal / sqrt(chi2/df), normalised to unit variance
    z = torch.randn(shape, generator=gen)
    chi2 = torch.randn((*shape, int(df)), generator=gen).pow(2).sum(-1)
    t = z / torch.sqrt(chi2 / df)
    return t / t.std()


def make_flux_state_dict(
    config: FluxConfig | Flux2Config,
    seed: int = 0,
    structured: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    n_outliers: int = 4,
    outlier_gain: float = 20.0,
) -> dict[str, torch.Tensor]:
    """Seeded BFL-layout weights for ``config`` (FLUX.1 or FLUX.2; see module docstring for
    ``structured``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in model_class(config)(config).state_dict().items()}
    h = config.hidden_size
    outl = torch.randperm(h, generator=gen)[:n_outliers]
    sd: dict[str, torch.Tensor] = {}
    for k, shape in shapes.items():
        if k.endswith(".scale"):  # RMSNorm weights
            v = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif k.endswith(".bias"):
            v = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1]
            base = _heavy_tailed(shape, gen) if structured else torch.randn(shape, generator=gen)
            v = base / fan_in**0.5
        if structured and k.endswith(("_mod.lin.bias", "modulation.lin.bias")):
            # chunk 1 (and 4 for double blocks) is the adaLN `scale`: boost a few channels
            chunks = 6 if ".double_blocks." in f".{k}" else 3
            v = v.view(chunks, h)
            for c in (1, 4) if chunks == 6 else (1,):
                v[c, outl] = outlier_gain
            v = v.reshape(shape)
        if structured and k.endswith(("mlp.0.weight", "linear1.weight")):
            rows = torch.randperm(shape[0], generator=gen)[: max(2, shape[0] // 128)]
            v[rows] *= 8.0
        if "_mod.lin" in k or "modulation.lin" in k or "stream_modulation_" in k:
            v = v * (1.0 if k.endswith("bias") else 0.5)
        sd[k] = v.to(dtype).contiguous()
    return sd


def make_tiny_flux(
    config: FluxConfig | Flux2Config | None = None,
    seed: int = 0,
    structured: bool = False,
    dtype=torch.float32,
) -> Flux:
    """A :class:`Flux` (or ``Flux2``) module with :func:`make_flux_state_dict` weights (bf16
    values, like a real FLUX checkpoint, held in ``dtype``)."""
    config = config or tiny_flux_config()
    model = model_class(config)(config, dtype=dtype)
    model.load_state_dict(make_flux_state_dict(config, seed, structured, torch.bfloat16))
    return model.eval()


def make_flux_inputs(
    config: FluxConfig | Flux2Config,
    batch: int = 1,
    height: int = 16,
    width: int = 16,
    txt_len: int = 8,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random ComfyUI-convention inputs for :meth:`Flux.forward_latent` (latent ``[B, C, H, W]``)."""
    gen = torch.Generator().manual_seed(seed)
    flux2 = config.architecture == "flux2"  # patch 1, no pooled vector
    return {
        "x": torch.randn(batch, config.in_channels // (1 if flux2 else 4), height, width, generator=gen).to(
            dtype
        ),
        "timestep": torch.rand(batch, generator=gen).to(dtype),
        "context": torch.randn(batch, txt_len, config.context_in_dim, generator=gen).to(dtype),
        "y": None if flux2 else torch.randn(batch, config.vec_in_dim, generator=gen).to(dtype),
        "guidance": torch.full((batch,), 3.5, dtype=dtype) if config.guidance_embed else None,
    }


def write_flux_fixture(
    path,
    config: FluxConfig | Flux2Config | None = None,
    seed: int = 0,
    structured: bool = False,
    dtype: torch.dtype = torch.bfloat16,
):
    """Write a seeded tiny FLUX (BFL layout, like a real ``flux1-dev.safetensors``) to ``path``."""
    from .checkpoint import atomic_save_safetensors

    config = config or tiny_flux_config()
    atomic_save_safetensors(make_flux_state_dict(config, seed, structured, dtype), path, {})
    return path
