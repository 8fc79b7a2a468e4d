"""The trained proxy FLUX: config, deterministic rectified-flow training, cache, sampling.

The proxy is the project's plain-torch :class:`~ternaryflux.core.flux_model.Flux` (FLUX.1
architecture, BFL keys, schnell-style: no guidance embedding), small enough to train on two CPU
cores in about ten minutes: hidden 128 (one 128-dim head, as ComfyUI derives heads), 1 double +
2 single blocks, 16 latent channels from :func:`~.encoding.to_latent`. It is trained on
:mod:`.scenes` images with captions encoded by the frozen :class:`~.encoding.ToyTextEncoder`;
10% of captions are dropped (empty caption) so classifier-free guidance works at sampling time.

:func:`ensure_proxy` trains once and caches ``flux.safetensors`` (bf16, like a real FLUX file)
under ``$TERNARYFLUX_CACHE/proxy/<key>/`` (default ``~/.cache/ternaryflux``), where ``key``
hashes the settings and :data:`PROXY_VERSION`; later calls reuse it.

``ProxySettings(architecture="flux2")`` (:data:`FLUX2_PROXY`) is the same proxy on the FLUX.2
architecture (:class:`~ternaryflux.core.flux2_model.Flux2`): same scenes, encoder, training loop
and sampler; hidden 128 (one head, 4 RoPE axes of 32), 1 double + 2 single blocks, SwiGLU, no
biases, global modulation, no pooled vector (the encoder's ``y`` is not used), patch 1 on the
proxy latent folded 2x2 into 64 channels (:func:`~.encoding.pack_latent`, as FLUX.2's 128-channel
latent folds its VAE's 32), so it sees the same 64 image tokens as the FLUX.1 proxy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.calibration_data import CalibrationSample
from ..core.flux_layout import Flux2Config, FluxConfig
from ..core.flux_model import Flux, model_class
from .encoding import (
    FLUX2_LATENT_CHANNELS,
    LATENT_CHANNELS,
    ToyTextEncoder,
    model_image,
    model_latent,
    pack_latent,
)
from .scenes import heldout_captions, random_scene, render_scene

log = logging.getLogger(__name__)

PROXY_VERSION = 1  # bump when training code changes what it produces


@dataclass(frozen=True)
class ProxySettings:
    image_size: int = 32
    hidden: int = 128
    depth: int = 1
    depth_single: int = 2
    context_dim: int = 64
    vec_dim: int = 64
    txt_len: int = 10
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    ema: float = 0.995
    cond_dropout: float = 0.1
    seed: int = 0
    encoder_seed: int = 0
    architecture: str = "flux"  # "flux" (FLUX.1) | "flux2" (FLUX.2)

    def __post_init__(self) -> None:
        if self.architecture not in ("flux", "flux2"):
            raise ValueError(f"unknown proxy architecture {self.architecture!r} (expected 'flux' or 'flux2')")

    @property
    def latent_channels(self) -> int:
        """Channels of the latent the model takes (before its own patchify)."""
        return FLUX2_LATENT_CHANNELS if self.architecture == "flux2" else LATENT_CHANNELS

    @property
    def latent_size(self) -> int:
        return self.image_size // (4 if self.architecture == "flux2" else 2)

    def flux_config(self) -> FluxConfig | Flux2Config:
        if self.architecture == "flux2":
            return Flux2Config(
                in_channels=FLUX2_LATENT_CHANNELS,
                out_channels=FLUX2_LATENT_CHANNELS,
                context_in_dim=self.context_dim,
                hidden_size=self.hidden,
                mlp_ratio=3.0,
                num_heads=self.hidden // 128,
                depth=self.depth,
                depth_single_blocks=self.depth_single,
                guidance_embed=False,
            )
        return FluxConfig(
            in_channels=LATENT_CHANNELS * 4,
            out_channels=LATENT_CHANNELS * 4,
            vec_in_dim=self.vec_dim,
            context_in_dim=self.context_dim,
            hidden_size=self.hidden,
            mlp_ratio=4.0,
            num_heads=self.hidden // 128,
            depth=self.depth,
            depth_single_blocks=self.depth_single,
            guidance_embed=False,
        )

    def encoder(self) -> ToyTextEncoder:
        return ToyTextEncoder(self.context_dim, self.vec_dim, self.txt_len, self.encoder_seed)

    def key(self) -> str:
        d = dataclasses.asdict(self)
        if d["architecture"] == "flux":  # FLUX.1 keys predate the field: the committed key holds
            del d["architecture"]
        blob = json.dumps({**d, "version": PROXY_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("TERNARYFLUX_CACHE") or Path.home() / ".cache" / "ternaryflux")


_ZERO_INIT = (
    "mod.lin",
    "modulation.lin",
    "modulation_img.lin",  # FLUX.2's global double-stream modulation
    "modulation_txt.lin",
    "adaLN_modulation.1",
    "final_layer.linear",
)


def init_model(settings: ProxySettings) -> Flux:
    """Seeded init; adaLN-Zero (modulation and final projection start at zero, as DiT; FLUX.2's
    global modulation Linears likewise, and it has no biases)."""
    torch.manual_seed(settings.seed)
    config = settings.flux_config()
    model = model_class(config)(config)
    with torch.no_grad():
        for n, m in model.named_modules():
            if n.endswith(_ZERO_INIT):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
    return model


class SceneStream:
    """Deterministic batches (images, captions) for training step ``i``: a pure function of
    (seed, i). Captions in ``exclude`` (the held-out set) are never produced."""

    def __init__(self, settings: ProxySettings, exclude: set[str]):
        self.s = settings
        self.exclude = exclude

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        rng = random.Random(self.s.seed * 1_000_003 + step)
        imgs, caps = [], []
        while len(caps) < self.s.batch:
            sc = random_scene(rng)
            cap = sc.caption()
            if cap in self.exclude:
                continue
            imgs.append(render_scene(sc, rng, self.s.image_size))
            caps.append("" if rng.random() < self.s.cond_dropout else cap)
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
        return x, caps


def train_proxy(
    settings: ProxySettings, progress: Callable[[int, float], None] | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train from scratch; returns the EMA state dict (float32) and a small log."""
    enc = settings.encoder()
    model = init_model(settings)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    stream = SceneStream(settings, heldout_captions())
    gen = torch.Generator().manual_seed(settings.seed + 1)
    t0 = time.time()
    losses = []
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / settings.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * step / settings.steps)) * 0.9 + 0.1
        for g in opt.param_groups:
            g["lr"] = lr
        img, caps = stream.batch(step)
        x0 = model_latent(img, settings.architecture)
        ctx, y = enc.encode(caps)
        if settings.architecture == "flux2":
            y = None  # no pooled vector
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))  # logit-normal (SD3)
        xt = (1 - sigma)[:, None, None, None] * x0 + sigma[:, None, None, None] * noise
        v = model.forward_latent(xt, sigma, ctx, y)
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(settings.ema, (step + 1) / (step + 10))
        with torch.no_grad():
            for k, v_ in model.state_dict().items():
                ema[k].mul_(d).add_(v_.detach(), alpha=1 - d)
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1])
    info = {
        "seconds": time.time() - t0,
        "final_loss_mean_last100": float(np.mean(losses[-100:])),
        "threads": torch.get_num_threads(),
    }
    return ema, info


def ensure_proxy(
    settings: ProxySettings | None = None,
    root: Path | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Path of the cached trained proxy (``flux.safetensors``); trains it first if missing."""
    from ..core.checkpoint import atomic_save_safetensors

    settings = settings or ProxySettings()
    folder = (root or cache_root()) / "proxy" / settings.key()
    path = folder / "flux.safetensors"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    log.info("training the proxy FLUX (%d steps) into %s", settings.steps, folder)
    sd, info = train_proxy(settings, progress)
    meta = {"proxy_settings": json.dumps(dataclasses.asdict(settings)), "proxy_version": str(PROXY_VERSION)}
    atomic_save_safetensors({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, path, meta)
    (folder / "train.json").write_text(
        json.dumps({**info, "settings": dataclasses.asdict(settings)}, indent=1)
    )
    return path


COMMITTED = Path(__file__).resolve().parent / "data" / "proxy-flux.safetensors"
COMMITTED_FLUX2 = COMMITTED.with_name("proxy-flux2.safetensors")
# The committed FLUX.2 proxy: 1500 steps like the FLUX.1 one (bench/results/quality-proxy-train-flux2.json)
FLUX2_PROXY = ProxySettings(architecture="flux2")


def committed_path(architecture: str = "flux") -> Path:
    return COMMITTED_FLUX2 if architecture == "flux2" else COMMITTED


def committed_key(path: Path = COMMITTED) -> str | None:
    """The settings key the committed checkpoint was trained with (None if absent)."""
    if not path.exists():
        return None
    from ..core.checkpoint import header_metadata, read_header

    meta = header_metadata(read_header(path))
    if "proxy_settings" not in meta:
        return None
    s = ProxySettings(**json.loads(meta["proxy_settings"]))
    return s.key() if meta.get("proxy_version") == str(PROXY_VERSION) else None


def proxy_path(settings: ProxySettings | None = None) -> Path:
    """The trained proxy for ``settings``: the checkpoint committed with the package when it was
    trained with exactly these settings and code version, else the cached one (trained on first
    use, ~10-25 min on 2 CPU cores)."""
    settings = settings or ProxySettings()
    committed = committed_path(settings.architecture)
    if committed_key(committed) == settings.key():
        return committed
    return ensure_proxy(settings)


# ----------------------------------------------------------------------------- sampling


def sigmas(steps: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, steps + 1)


@torch.no_grad()
def sample(
    model: Flux,
    encoder: ToyTextEncoder,
    captions: Sequence[str],
    seeds: Sequence[int],
    image_size: int = 32,
    steps: int = 20,
    cfg: float = 3.0,
    record: Sequence[int] = (),
    batch: int = 32,
) -> tuple[torch.Tensor, list[CalibrationSample]]:
    """Euler sampling with classifier-free guidance. Returns images ``[N, 3, H, W]`` in [0, 1]
    and, for the steps in ``record``, the model calls made there (conditional and, when
    ``cfg != 1``, unconditional) as calibration samples."""
    dt = model.dtype
    dev = next(model.parameters()).device
    arch = model.config.architecture
    imgs, recs = [], []
    sig = sigmas(steps)
    lat = image_size // 2
    for i in range(0, len(captions), batch):
        caps = list(captions[i : i + batch])
        b = len(caps)
        noise = torch.stack(
            [
                torch.randn(LATENT_CHANNELS, lat, lat, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds[i : i + batch]
            ]
        )
        if arch == "flux2":  # the same noise, folded 2x2; no pooled vector
            noise = pack_latent(noise)
        ctx, y = encoder.encode(caps)
        uctx, uy = encoder.encode([""] * b)
        if arch == "flux2":
            y = uy = None
        x = noise
        for j in range(steps):
            s, s_next = float(sig[j]), float(sig[j + 1])
            t = torch.full((b,), s)
            if j in record:
                recs.append(CalibrationSample(x.clone(), t.clone(), ctx.clone(), _clone(y)))
                if cfg != 1.0:
                    recs.append(CalibrationSample(x.clone(), t.clone(), uctx.clone(), _clone(uy)))
            if cfg != 1.0:
                v2 = (
                    model.forward_latent(
                        torch.cat([x, x]).to(dev, dt),
                        torch.cat([t, t]).to(dev, dt),
                        torch.cat([ctx, uctx]).to(dev, dt),
                        None if y is None else torch.cat([y, uy]).to(dev, dt),
                    )
                    .float()
                    .cpu()
                )
                vc, vu = v2[:b], v2[b:]
                v = vu + cfg * (vc - vu)
            else:
                v = (
                    model.forward_latent(
                        x.to(dev, dt), t.to(dev, dt), ctx.to(dev, dt), None if y is None else y.to(dev, dt)
                    )
                    .float()
                    .cpu()
                )
            x = x + (s_next - s) * v
        imgs.append(model_image(x, arch))
    return torch.cat(imgs), recs


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()
