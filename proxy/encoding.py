"""The proxy's stand-ins for FLUX's text encoders and VAE.

* :class:`ToyTextEncoder`: frozen, seeded. Each word of the grammar has a random embedding; a
  token's context vector adds fixed random projections of its left and right neighbours (so
  "red" binds to the "circle" after it, as a contextual encoder would) and a position code.
  ``context [B, txt_len, context_dim]`` stands in for T5, the mean over real tokens projected to
  ``vec_dim`` stands in for CLIP's pooled ``y``.
* :func:`to_latent` / :func:`from_latent`: the "VAE" is a fixed space-to-depth fold: RGB + one
  constant pad channel, 2x2 pixels into channels -> 16 latent channels at half resolution, so
  FLUX's 16-channel latent and its 2x2 patchify hold unchanged. Pixel values are mapped to
  [-1, 1].
* :func:`pack_latent` / :func:`unpack_latent`: the FLUX.2 proxy's latent. FLUX.2's 128-channel
  latent is its VAE's 32 channels with 2x2 pixels folded into channels (patch size 1 in the
  transformer); the FLUX.2 proxy does the same to the 16-channel proxy latent: 64 channels at a
  quarter of the image size, so both proxies see the same 64 image tokens.
"""

from __future__ import annotations

import torch

from .scenes import COLORS, NUMBERS, RELATIONS, SHAPES, SIZE_WORDS

PAD = "<pad>"
LATENT_CHANNELS = 16
FLUX2_LATENT_CHANNELS = LATENT_CHANNELS * 4  # the proxy latent folded 2x2, as FLUX.2's


def vocabulary() -> list[str]:
    words = [PAD, "and", "of"]
    words += list(NUMBERS.values()) + list(SIZE_WORDS) + list(COLORS)
    words += list(SHAPES) + [s + "s" for s in SHAPES]
    for r in RELATIONS:
        words += [w for w in r.split() if w not in words]
    out: list[str] = []
    for w in words:
        if w not in out:
            out.append(w)
    return out


class ToyTextEncoder:
    """Frozen seeded caption encoder (see module docstring). Not an ``nn.Module`` on purpose:
    nothing in it trains."""

    def __init__(self, context_dim: int = 64, vec_dim: int = 64, txt_len: int = 12, seed: int = 0):
        self.vocab = vocabulary()
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_dim, self.vec_dim, self.txt_len = context_dim, vec_dim, txt_len
        g = torch.Generator().manual_seed(seed)
        d = context_dim
        self.emb = torch.randn(len(self.vocab), d, generator=g)
        self.emb[0] = 0.0  # padding
        self.left = torch.randn(d, d, generator=g) / d**0.5 * 0.5
        self.right = torch.randn(d, d, generator=g) / d**0.5 * 0.5
        self.pos = 0.5 * torch.randn(txt_len, d, generator=g)
        self.pool = torch.randn(d, vec_dim, generator=g) / d**0.5

    def tokens(self, caption: str) -> list[int]:
        words = caption.split() if caption else []
        if len(words) > self.txt_len:
            raise ValueError(f"caption longer than {self.txt_len} words: {caption!r}")
        try:
            ids = [self.index[w] for w in words]
        except KeyError as e:
            raise ValueError(f"word {e.args[0]!r} of {caption!r} is not in the proxy vocabulary") from None
        return ids + [0] * (self.txt_len - len(ids))

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``context [B, txt_len, context_dim]``, ``y [B, vec_dim]`` (float32). The empty caption
        is the unconditional input (all padding: zeros)."""
        ids = torch.tensor([self.tokens(c) for c in captions], dtype=torch.long)
        real = (ids != 0).float().unsqueeze(-1)
        e = self.emb[ids]
        left = torch.nn.functional.pad(e, (0, 0, 1, 0))[:, :-1]
        right = torch.nn.functional.pad(e, (0, 0, 0, 1))[:, 1:]
        ctx = (e + left @ self.left + right @ self.right + self.pos) * real
        pooled = ctx.sum(1) / real.sum(1).clamp_min(1.0)
        return ctx, pooled @ self.pool


def to_latent(img: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, 16, H/2, W/2]`` in [-1, 1] (RGB + pad channel at -1)."""
    x = img * 2 - 1
    pad = torch.full_like(x[:, :1], -1.0)
    return torch.nn.functional.pixel_unshuffle(torch.cat([x, pad], 1), 2)


def from_latent(lat: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_latent`: ``[B, 3, H, W]`` clamped to [0, 1] (the pad channel is dropped)."""
    x = torch.nn.functional.pixel_shuffle(lat.float(), 2)[:, :3]
    return ((x + 1) / 2).clamp(0, 1)


def pack_latent(lat: torch.Tensor) -> torch.Tensor:
    """Proxy latent ``[B, 16, h, w]`` -> the FLUX.2 proxy's ``[B, 64, h/2, w/2]`` (2x2 fold)."""
    return torch.nn.functional.pixel_unshuffle(lat, 2)


def unpack_latent(lat: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_latent`."""
    return torch.nn.functional.pixel_shuffle(lat, 2)


def model_latent(img: torch.Tensor, architecture: str = "flux") -> torch.Tensor:
    """Images -> the latent the proxy of ``architecture`` takes (FLUX.1: 16 channels at H/2,
    FLUX.2: 64 channels at H/4)."""
    lat = to_latent(img)
    return pack_latent(lat) if architecture == "flux2" else lat


def model_image(lat: torch.Tensor, architecture: str = "flux") -> torch.Tensor:
    """Inverse of :func:`model_latent` (clamped to [0, 1])."""
    return from_latent(unpack_latent(lat.float()) if architecture == "flux2" else lat)
