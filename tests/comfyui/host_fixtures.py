"""Fixtures the host writes itself (run by ``host_driver.py`` jobs ``{"call": "host_fixtures:NAME"}``),
for model files whose layout only ComfyUI's own classes define: built from those classes with
seeded random weights, never copied code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def make_taef1(out_dir: str, seed: int = 0) -> dict:
    """A random TAESD-for-FLUX VAE (16 latent channels): ``vae_approx/taef1_{encoder,decoder}``,
    which the stock VAELoader offers as ``taef1``."""
    import comfy.taesd.taesd as taesd

    g = torch.Generator().manual_seed(seed)
    names = {}
    for part, cls in (("encoder", taesd.Encoder), ("decoder", taesd.Decoder)):
        sd = {}
        for k, v in cls(latent_channels=16).state_dict().items():
            if v.ndim > 1:  # conv weights: fan-in scaled
                t = torch.randn(v.shape, generator=g) / (v[0].numel() ** 0.5)
            elif k.endswith("weight"):  # GroupNorm
                t = torch.ones(v.shape)
            else:
                t = torch.zeros(v.shape)
            sd[k] = t.contiguous()
        path = Path(out_dir) / f"taef1_{part}.safetensors"
        save_file(sd, str(path))
        names[part] = path.name
    return names
