"""Small on-disk fixtures for the tool's tests and benchmarks (tiny FLUX files in every layout)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..core.calibration_data import CalibrationSample, write_calibration
from ..core.fixtures import make_flux_state_dict, tiny_flux_config
from ..core.flux_layout import Flux2Config, FluxConfig
from ..core.flux_model import flux_from_state_dict
from .sampling import euler_trajectory, flux2_sigmas, flux_sigmas, synthetic_conditioning
from .sources import COMFY_PREFIX, bfl_to_diffusers


def structured_config(
    hidden: int = 256, depth: int = 2, depth_single: int = 4, guidance: bool = True
) -> FluxConfig:
    return tiny_flux_config(hidden=hidden, depth=depth, depth_single=depth_single, guidance=guidance)


def write_layouts(folder: Path, sd: dict[str, torch.Tensor]) -> dict[str, Path]:
    """The same FLUX as BFL, ComfyUI-prefixed, diffusers (single and sharded), fp8 and fp16 files."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["bfl"] = folder / "bfl.safetensors"
    save_file(sd, out["bfl"])
    out["comfy"] = folder / "comfy.safetensors"
    save_file(
        {COMFY_PREFIX + k: v for k, v in sd.items()}
        | {"first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4)},
        out["comfy"],
    )
    dsd = bfl_to_diffusers(sd)
    out["diffusers"] = folder / "diffusers.safetensors"
    save_file(dsd, out["diffusers"])
    shard_dir = folder / "transformer"
    shard_dir.mkdir(exist_ok=True)
    keys = sorted(dsd)
    half = len(keys) // 2
    names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    save_file({k: dsd[k] for k in keys[:half]}, shard_dir / names[0])
    save_file({k: dsd[k] for k in keys[half:]}, shard_dir / names[1])
    wm = {k: names[0] if i < half else names[1] for i, k in enumerate(keys)}
    (shard_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm})
    )
    out["sharded"] = shard_dir
    out["fp8"] = folder / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in sd.items()}, out["fp8"])
    out["fp16"] = folder / "fp16.safetensors"
    save_file({k: v.to(torch.float16) for k, v in sd.items()}, out["fp16"])
    return out


def trajectory_calibration(
    sd: dict[str, torch.Tensor],
    prompts: int,
    size: int = 128,
    steps: int = 8,
    record: tuple[int, ...] = (0, 3, 6),
    txt_len: int = 16,
    seed: int = 0,
) -> list[CalibrationSample]:
    """Calibration samples along the float model's Euler trajectories, synthetic conditioning
    (FLUX.1 or FLUX.2: its latent at ``size``/8 or ``size``/16 and its schedule)."""
    model = flux_from_state_dict(sd, dtype=torch.float32)
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    if cfg.architecture == "flux2":
        lat = size // 16
        sigmas = flux2_sigmas(steps, lat**2)
    else:
        lat = size // 8
        sigmas = flux_sigmas(steps, (lat // 2) ** 2, shift=cfg.guidance_embed)
    out: list[CalibrationSample] = []
    for i in range(prompts):
        ctx, y = synthetic_conditioning(f"prompt {seed}-{i}", txt_len, cfg.context_in_dim, cfg.vec_in_dim)
        noise = torch.randn(1, cfg.latent_channels, lat, lat, generator=g)
        guid = torch.full((1,), 3.5) if cfg.guidance_embed else None
        recs, _ = euler_trajectory(model, noise, ctx, y, guid, sigmas, record)
        out.extend(recs)
    return out


def write_structured_fixture(
    folder: Path, cal_prompts: int = 12, held_prompts: int = 6, seed: int = 0
) -> dict[str, Path]:
    """Structured tiny FLUX (hidden 256, 2+4 blocks, bf16) + calibration and held-out files."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = make_flux_state_dict(structured_config(), seed=seed, structured=True)
    paths = {
        "model": folder / "flux.safetensors",
        "cal": folder / "cal.safetensors",
        "held": folder / "held.safetensors",
    }
    save_file(sd, paths["model"])
    write_calibration(
        paths["cal"], trajectory_calibration(sd, cal_prompts, seed=seed + 1), {"source": "synthetic"}
    )
    write_calibration(
        paths["held"], trajectory_calibration(sd, held_prompts, seed=seed + 2), {"source": "synthetic"}
    )
    return paths


def write_synthetic_flux(
    path: Path, config: FluxConfig | Flux2Config, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> int:
    """Write a FLUX-shaped BFL checkpoint of random weights tensor by tensor (bounded memory,
    for streaming tests and benchmarks). Returns the file size."""
    from ..core.flux_model import model_class
    from .writer import StreamingSafetensorsWriter

    with torch.device("meta"):  # FLUX.1 or FLUX.2 (by the config)
        shapes = [(k, tuple(v.shape)) for k, v in model_class(config)(config).state_dict().items()]
    g = torch.Generator().manual_seed(seed)
    with StreamingSafetensorsWriter(path, [(k, dtype, s) for k, s in shapes]) as w:
        for k, s in shapes:
            t = torch.randn(s, generator=g)
            if len(s) == 2:
                t /= s[1] ** 0.5
            w.write(k, t.to(dtype))
            del t
    return Path(path).stat().st_size
