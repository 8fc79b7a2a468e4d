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


def make_taef2(out_dir: str, seed: int = 0) -> dict:
    """A random TAESD-for-FLUX.2 VAE (128 latent channels at 1/16 of the image size):
    ``vae_approx/taef2_{encoder,decoder}``, which the stock VAELoader offers as ``taef2``; built
    from ComfyUI's own ``EncoderFlux2`` / ``DecoderFlux2``."""
    import comfy.taesd.taesd as taesd

    g = torch.Generator().manual_seed(seed)
    names = {}
    for part, cls in (("encoder", taesd.EncoderFlux2), ("decoder", taesd.DecoderFlux2)):
        sd = {}
        for k, v in cls(latent_channels=128).state_dict().items():
            if v.ndim > 1:
                t = torch.randn(v.shape, generator=g) / (v[0].numel() ** 0.5)
            elif k.endswith("weight"):
                t = torch.ones(v.shape)
            else:
                t = torch.zeros(v.shape)
            sd[k] = t.contiguous()
        path = Path(out_dir) / f"taef2_{part}.safetensors"
        save_file(sd, str(path))
        names[part] = path.name
    return names


def flux2_text_encoder_facts(hidden_sizes: list[int] = (64, 256, 1024, 2048, 2560, 4096)) -> dict:
    """What the stock ``CLIPLoader`` (type ``flux2``) would do with a Qwen3 text encoder file, from
    ComfyUI's own detection and classes, without writing a file: the ``TEModel`` that
    ``comfy.sd.detect_te_model`` picks for a Qwen3 layout of each hidden size (shape-only ``meta``
    tensors), and the size of the FLUX.2 [klein] 4B encoder it then builds (``Qwen3_4BConfig`` is
    fixed: nothing in the file changes its depth or vocabulary)."""
    import inspect

    import comfy.ops
    import comfy.sd
    import comfy.text_encoders.flux as flux
    import comfy.text_encoders.llama as llama

    detected = {}
    for h in hidden_sizes:
        sd = {
            "model.layers.0.post_attention_layernorm.weight": torch.empty(h, device="meta"),
            "model.layers.0.self_attn.q_norm.weight": torch.empty(128, device="meta"),
            "model.layers.0.self_attn.k_proj.weight": torch.empty(1024, h, device="meta"),
        }
        te = comfy.sd.detect_te_model(sd)
        detected[str(h)] = te.name if te is not None else None
    cfg = llama.Qwen3_4BConfig()
    model = llama.Qwen3_4B({}, torch.bfloat16, "meta", comfy.ops.manual_cast)
    taps = inspect.signature(flux.Qwen3_4BModel.__init__).parameters["layer"].default
    return {
        "detected": detected,
        "qwen3_4b": {
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "vocab_size": cfg.vocab_size,
            "intermediate_size": cfg.intermediate_size,
            "params": int(sum(p.numel() for p in model.parameters())),
            "klein_layers": list(taps),
            "context_dim": len(taps) * cfg.hidden_size,
        },
    }
