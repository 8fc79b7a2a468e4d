"""Flow-matching Euler sampling with the FLUX shift schedule, and calibration along trajectories.

FLUX predicts the velocity ``v = noise - x0`` of the rectified flow ``x_sigma = (1 - sigma) x0 +
sigma noise``. Sampling integrates ``dx/dsigma = v`` from sigma = 1 (noise) to 0 with Euler steps.
FLUX.1-dev shifts the sigmas towards 1 by an amount that grows with the image size
(``mu = 0.5 + 0.65 (L - 256) / 3840`` for ``L`` image tokens, ``sigma' = e^mu / (e^mu + 1/sigma - 1)``),
as BFL's ``get_schedule`` and ComfyUI's ModelSamplingFlux do; schnell is unshifted. FLUX.2
shifts by BFL's empirical ``mu`` (:func:`flux2_sigmas`: a function of the image tokens and the
step count, from BFL's ``flux2`` sampling code).

Calibration latents are recorded *along the float model's own trajectories*: the inputs the
transformer really sees at each step, not noise at random sigmas.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from ..core.calibration_data import CalibrationSample
from ..core.flux_model import Flux


def flux_sigmas(
    steps: int, image_tokens: int, shift: bool = True, base_shift: float = 0.5, max_shift: float = 1.15
) -> torch.Tensor:
    """``steps + 1`` sigmas from 1 to 0."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if shift:
        mu = base_shift + (max_shift - base_shift) * (image_tokens - 256) / (4096 - 256)
        inner = torch.where(t > 0, 1.0 / t.clamp_min(1e-12) - 1.0, torch.full_like(t, math.inf))
        t = math.exp(mu) / (math.exp(mu) + inner)
    return t.float()


def flux2_empirical_mu(image_tokens: int, steps: int) -> float:
    """BFL's ``compute_empirical_mu`` (FLUX.2): linear in the step count between fits at 10 and
    200 steps, linear in the tokens alone above 4300 tokens."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_tokens > 4300:
        return a2 * image_tokens + b2
    m_200 = a2 * image_tokens + b2
    m_10 = a1 * image_tokens + b1
    a = (m_200 - m_10) / 190.0
    return a * steps + (m_200 - 200.0 * a)


def flux2_sigmas(steps: int, image_tokens: int) -> torch.Tensor:
    """``steps + 1`` FLUX.2 sigmas from 1 to 0: the linear schedule shifted by
    :func:`flux2_empirical_mu` (``sigma' = e^mu / (e^mu + 1/sigma - 1)``)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    mu = flux2_empirical_mu(image_tokens, steps)
    inner = torch.where(t > 0, 1.0 / t.clamp_min(1e-12) - 1.0, torch.full_like(t, math.inf))
    return (math.exp(mu) / (math.exp(mu) + inner)).float()


@torch.no_grad()
def euler_trajectory(
    model: Flux,
    noise: torch.Tensor,
    context: torch.Tensor,
    y: torch.Tensor | None,
    guidance: torch.Tensor | None,
    sigmas: torch.Tensor,
    record: Sequence[int],
) -> tuple[list[CalibrationSample], torch.Tensor]:
    """Sample with Euler steps; returns the inputs of the model calls with step index in
    ``record`` (as calibration samples) and the final latent."""
    x = noise
    out = []
    b = x.shape[0]
    dt = model.dtype
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        t = torch.full((b,), s, device=x.device)
        if i in record:
            out.append(
                CalibrationSample(  # own copies: safetensors refuses shared storage
                    x.detach().float().cpu().clone(),
                    t.float().cpu().clone(),
                    context.float().cpu().clone(),
                    None if y is None else y.float().cpu().clone(),
                    None if guidance is None else guidance.float().cpu().clone(),
                )
            )
        v = model.forward_latent(
            x.to(dt),
            t.to(dt),
            context.to(dt),
            None if y is None else y.to(dt),
            None if guidance is None else guidance.to(dt),
        )
        x = x + (s_next - s) * v.float()
    return out, x


def synthetic_conditioning(
    prompt: str, txt_len: int, context_dim: int, vec_dim: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Deterministic stand-in text conditioning for a prompt (seeded by its hash) when no text
    encoder is available: ``context [1, L, D]`` and pooled ``y [1, vec_dim]`` (``None`` when
    ``vec_dim`` is None: FLUX.2 has no pooled vector). For tests and pipeline checks only; real
    calibration needs real text-encoder outputs."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little") & ((1 << 63) - 1)
    g = torch.Generator().manual_seed(seed)
    n_words = max(1, min(txt_len, len(prompt.split())))
    ctx = torch.zeros(1, txt_len, context_dim)
    ctx[:, :n_words] = torch.randn(1, n_words, context_dim, generator=g)
    ctx[:, n_words:] = 0.05 * torch.randn(1, txt_len - n_words, context_dim, generator=g)  # padding tokens
    y = None if vec_dim is None else torch.randn(1, vec_dim, generator=g)
    return ctx, y
