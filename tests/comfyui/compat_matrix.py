"""The compatibility matrix: stock ComfyUI nodes around a ternary FLUX, on tiny models.

Fixtures (written here, pure torch, except the TAESD-shaped VAE the host writes itself with
``host_fixtures.make_taef1``) and the API-format jobs; the tests live in
``test_comfyui_integration.py`` so that every job runs in the one host process. Each graph runs
twice: batch 1 at 256x256 (``sq1``) and batch 2 at 320x192 (``ns2``, non-square).

Rows (the README's compatibility table is checked against ``ROWS``):
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config

# node (as the README names it) -> job prefix of the graph that exercises it
ROWS = {
    "ControlNetLoader + ControlNetApplyAdvanced (FLUX ControlNet, XLabs layout)": "cn",
    "VAEEncode → KSampler denoise 0.6 (img2img)": "img2img",
    "InpaintModelConditioning + FLUX Fill model (ternary checkpoint)": "fill",
    "InpaintModelConditioning + FLUX Fill model (Ternarize FLUX node)": "fillnode",
    "ReferenceLatent (Kontext-style edit conditioning)": "kontext",
    "TorchCompileModel": "compile",
    "ModelMergeSimple (ternary + float)": "merge",
    "LoraLoaderModelOnly ×3 (LoRA stack)": "lora3",
}
VARIANTS = {"sq1": (256, 256, 1), "ns2": (320, 192, 2)}  # width, height, batch
CONTROLNET = "tiny_flux_controlnet_xlabs.safetensors"
FILL_FLOAT = "tiny_flux_fill.safetensors"
FILL_TERNARY = "tiny_ternary_fill.safetensors"
LORA_STACK = [f"tiny_lora_stack{i}.safetensors" for i in range(3)]
LORA_STACK_SEEDS = (11, 12, 13)
LORA_STACK_STRENGTHS = (1.0, 0.5, -0.75)
MERGE_RATIO = 0.4  # ModelMergeSimple: ratio * model1 (ternary) + (1 - ratio) * model2 (float)


def fill_config():
    """FLUX.1 Fill's shape: img_in takes 384 = (16 latent + 16 masked image + 64 mask) * 4 inputs."""
    return dataclasses.replace(tiny_flux_config(), in_channels=384, out_channels=64)


def controlnet_xlabs_state_dict(seed: int = 5) -> dict[str, torch.Tensor]:
    """A random FLUX ControlNet in the XLabs layout that ComfyUI's ControlNetLoader detects
    (``controlnet_blocks.0.weight`` + ``double_blocks.0.img_attn.norm.key_norm.scale``): the FLUX
    input embedders and double blocks, one controlnet block per double block, ``pos_embed_input``
    and the image hint encoder (8 convs, 3 of stride 2: 8x down to the latent grid)."""
    cfg = tiny_flux_config()
    base = make_flux_state_dict(cfg, seed, dtype=torch.float32)
    keep = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "double_blocks.")
    sd = {k: v for k, v in base.items() if k.startswith(keep)}
    g = torch.Generator().manual_seed(seed)
    h = cfg.hidden_size
    for i in range(cfg.depth):
        sd[f"controlnet_blocks.{i}.weight"] = torch.randn(h, h, generator=g) / h**0.5
        sd[f"controlnet_blocks.{i}.bias"] = 0.02 * torch.randn(h, generator=g)
    sd["pos_embed_input.weight"] = torch.randn(h, cfg.in_channels, generator=g) / cfg.in_channels**0.5
    sd["pos_embed_input.bias"] = torch.zeros(h)
    for j in range(8):
        cin = 3 if j == 0 else 16
        sd[f"input_hint_block.{2 * j}.weight"] = torch.randn(16, cin, 3, 3, generator=g) / (cin * 9) ** 0.5
        sd[f"input_hint_block.{2 * j}.bias"] = torch.zeros(16)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}


def write_fixtures(base: Path, ternary_sd, make_lora, write_checkpoint, metadata_cls) -> dict:
    """Write the matrix's model files into the host's ``models/``; returns the float Fill state dict."""
    models = base / "models"
    (models / "controlnet").mkdir(parents=True, exist_ok=True)
    (models / "vae_approx").mkdir(parents=True, exist_ok=True)
    save_file(controlnet_xlabs_state_dict(), str(models / "controlnet" / CONTROLNET))
    fill = make_flux_state_dict(fill_config(), 21)
    save_file(fill, str(models / "diffusion_models" / FILL_FLOAT))
    write_checkpoint(
        models / "diffusion_models" / FILL_TERNARY, ternary_sd(fill), metadata_cls(variant="dev")
    )
    cfg = tiny_flux_config()
    for name, seed in zip(LORA_STACK, LORA_STACK_SEEDS):
        lora, _ = make_lora(cfg, seed)
        save_file(lora, str(models / "loras" / name))
    return {"fill": fill}


# ----------------------------------------------------------------------------- graphs


def _n(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _base(variant: str, model: dict, seed: int = 0) -> dict[str, dict]:
    """model node "1" → (maybe "2".. model patches) → KSampler "10" ← conditioning "3"/"4", latent "5"."""
    w, h, b = VARIANTS[variant]
    return {
        "1": model,
        "3": _n("TFTestConditioning", seed=1, tokens=8, batch=1),
        "4": _n("TFTestConditioning", seed=2, tokens=8, batch=1),
        "5": _n("EmptySD3LatentImage", width=w, height=h, batch_size=b),
        "6": _n("EmptyImage", width=w, height=h, batch_size=b, color=0x8040C0),
        "7": _n("VAELoader", vae_name="taef1"),
        "10": _n(
            "KSampler",
            model=["1", 0],
            seed=seed,
            steps=2,
            cfg=1.0,
            sampler_name="euler",
            scheduler="simple",
            positive=["3", 0],
            negative=["4", 0],
            latent_image=["5", 0],
            denoise=1.0,
        ),
    }


def _save(p: dict, name: str) -> dict:
    p["11"] = _n("SaveLatent", samples=["10", 0], filename_prefix=f"compat/{name}")
    return {"name": name, "prompt": p}


def _ternary(name: str = "tiny_ternary_dev.safetensors") -> dict:
    return _n(
        "TernaryFluxLoader",
        unet_name=name,
        kernel_backend="auto",
        activations="bf16",
        compute_dtype="default",
    )


def jobs() -> list[dict]:
    out: list[dict] = []
    for v in VARIANTS:
        out.append(_save(_base(v, _ternary()), f"plain_{v}"))
        # ControlNet (XLabs): the hint image is an IMAGE at the latent's pixel size
        p = _base(v, _ternary())
        p["20"] = _n("ControlNetLoader", control_net_name=CONTROLNET)
        p["21"] = _n(
            "ControlNetApplyAdvanced",
            positive=["3", 0],
            negative=["4", 0],
            control_net=["20", 0],
            image=["6", 0],
            strength=1.0,
            start_percent=0.0,
            end_percent=1.0,
        )
        p["10"]["inputs"] |= {"positive": ["21", 0], "negative": ["21", 1]}
        out.append(_save(p, f"cn_{v}"))
        # img2img: VAEEncode an image, sample from it with denoise 0.6
        p = _base(v, _ternary())
        p["22"] = _n("VAEEncode", pixels=["6", 0], vae=["7", 0])
        p["10"]["inputs"] |= {"latent_image": ["22", 0], "denoise": 0.6}
        out.append(_save(p, f"img2img_{v}"))
        # inpainting with a FLUX Fill-shaped ternary model
        for kind, model in (
            ("fill", _ternary(FILL_TERNARY)),
            ("fillnode", _n("UNETLoader", unet_name=FILL_FLOAT, weight_dtype="default")),
        ):
            p = _base(v, model)
            if kind == "fillnode":
                p["2"] = _n(
                    "TernaryFluxTernarize",
                    model=["1", 0],
                    method="absmean",
                    group_size="per-channel",
                    calibration="none",
                    max_calibration_samples=32,
                )
                p["10"]["inputs"]["model"] = ["2", 0]
            p["23"] = _n("SolidMask", value=1.0, width=VARIANTS[v][0], height=VARIANTS[v][1])
            p["24"] = _n(
                "InpaintModelConditioning",
                positive=["3", 0],
                negative=["4", 0],
                vae=["7", 0],
                pixels=["6", 0],
                mask=["23", 0],
                noise_mask=True,
            )
            p["10"]["inputs"] |= {"positive": ["24", 0], "negative": ["24", 1], "latent_image": ["24", 2]}
            out.append(_save(p, f"{kind}_{v}"))
        # Kontext-style edit conditioning: a reference latent appended to the image tokens
        p = _base(v, _ternary())
        p["22"] = _n("VAEEncode", pixels=["6", 0], vae=["7", 0])
        p["25"] = _n("ReferenceLatent", conditioning=["3", 0], latent=["22", 0])
        p["10"]["inputs"]["positive"] = ["25", 0]
        out.append(_save(p, f"kontext_{v}"))
        # ModelMergeSimple: ternary (model1) and float (model2)
        p = _base(v, _ternary())
        p["2"] = _n("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default")
        p["26"] = _n("ModelMergeSimple", model1=["1", 0], model2=["2", 0], ratio=MERGE_RATIO)
        p["10"]["inputs"]["model"] = ["26", 0]
        out.append(_save(p, f"merge_{v}"))
        # a stack of 3 LoRAs
        p = _base(v, _ternary())
        prev = "1"
        for i, (name, s) in enumerate(zip(LORA_STACK, LORA_STACK_STRENGTHS)):
            p[f"3{i}"] = _n("LoraLoaderModelOnly", model=[prev, 0], lora_name=name, strength_model=s)
            prev = f"3{i}"
        p["10"]["inputs"]["model"] = [prev, 0]
        out.append(_save(p, f"lora3_{v}"))
    # TorchCompileModel: once (batch 2, non-square), compile time dominates
    p = _base("ns2", _ternary())
    p["27"] = _n("TorchCompileModel", model=["1", 0], backend="inductor")
    p["10"]["inputs"]["model"] = ["27", 0]
    out.append(_save(p, "compile_ns2"))
    return out


def forward_jobs(fwd_job, base: Path, dev_in: Path) -> list[dict]:
    """In-host forwards compared with a dense library reference (merge and LoRA stack)."""
    merge = {
        "1": _ternary(),
        "2": _n("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default"),
        "3": _n("ModelMergeSimple", model1=["1", 0], model2=["2", 0], ratio=MERGE_RATIO),
    }
    lora3: dict[str, dict] = {"1": _ternary()}
    prev = "1"
    for i, (name, s) in enumerate(zip(LORA_STACK, LORA_STACK_STRENGTHS)):
        lora3[str(2 + i)] = _n("LoraLoaderModelOnly", model=[prev, 0], lora_name=name, strength_model=s)
        prev = str(2 + i)
    return [
        fwd_job("fwd_merge", merge, "merge", dev_in, base, model_node="3"),
        fwd_job("fwd_lora3", lora3, "lora3", dev_in, base),
    ]
