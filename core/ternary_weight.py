"""``TernaryWeight``: one ternary matrix as packed codes + scales + its logical shape."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import pack_2bit, packed_2bit_cols, unpack_2bit


def num_groups(k: int, group_size: int) -> int:
    """Scale columns for a row of ``k`` weights: 1 per output channel, or one per group."""
    return 1 if group_size == 0 else k // group_size


def check_group_size(k: int, group_size: int) -> None:
    """Raise ``ValueError`` unless ``group_size`` is 0 (per channel) or a multiple of 128 dividing ``k``."""
    if group_size < 0 or (group_size and (group_size % 128 or k % group_size)):
        raise ValueError(
            f"group_size={group_size} is invalid for K={k}: use 0 (one scale per output channel) "
            "or a multiple of 128 that divides K (256 divides every FLUX K)"
        )


_FP16_MIN_NORMAL = 6.104e-05
_FP16_MAX = 65504.0


def round_scale_to_fp16(scale: torch.Tensor) -> torch.Tensor:
    """float32 copy of ``scale`` rounded to float16 precision, if every non-zero value is in
    float16's normal range; otherwise the exact float32 values."""
    s = scale.detach().to(torch.float32)
    a = s.abs()
    nz = a[a > 0]
    if nz.numel() and (nz.min() < _FP16_MIN_NORMAL or nz.max() > _FP16_MAX):
        return s
    return s.to(torch.float16).to(torch.float32)


@dataclass
class TernaryWeight:
    """A ternary weight ``W[n, k] = (code[n, k] - 1) * scale[n, k // group_size]``.

    Attributes:
        packed: uint8 ``[N, Kp/4]`` codes in the runtime 2-bit layout (see :mod:`.packing`).
        scale: float32 ``[N, G]`` with ``G = 1`` (per output channel) or ``K / group_size``.
        shape: logical ``(N, K)`` = (out_features, in_features).
        group_size: 0 for one scale per output channel, else input channels per scale.
    """

    packed: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, int]
    group_size: int = 0

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.validate()

    def validate(self) -> None:
        n, k = self.shape
        check_group_size(k, self.group_size)
        if self.packed.dtype != torch.uint8:
            raise ValueError(f"packed codes must be uint8, got {self.packed.dtype}")
        if tuple(self.packed.shape) != (n, packed_2bit_cols(k)):
            raise ValueError(
                f"packed shape {tuple(self.packed.shape)} disagrees with logical shape {self.shape} "
                f"(expected {(n, packed_2bit_cols(k))})"
            )
        want = (n, num_groups(k, self.group_size))
        if tuple(self.scale.shape) != want:
            raise ValueError(
                f"scale shape {tuple(self.scale.shape)} disagrees with {want} for shape {self.shape}"
            )
        if not self.scale.is_floating_point():
            raise ValueError(f"scale must be floating point, got {self.scale.dtype}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, group_size: int = 0) -> TernaryWeight:
        """Build from uint8 codes ``[N, K]`` in {0, 1, 2} and scales ``[N, G]``.

        Scales are rounded to the nearest float16 value (kept in float32) when they fit float16's
        normal range, so checkpoints can store them in 2 bytes losslessly (a relative change
        below 5e-4, far under the ternary rounding error).
        """
        n, k = codes.shape
        return cls(
            pack_2bit(codes), round_scale_to_fp16(scale).reshape(n, -1).contiguous(), (n, k), group_size
        )

    # ------------------------------------------------------------------ views
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def codes(self) -> torch.Tensor:
        """uint8 codes ``[N, K]`` in {0, 1, 2}."""
        return unpack_2bit(self.packed, self.shape[1])

    def signs(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ternary matrix T in {-1, 0, 1}, ``[N, K]`` in ``dtype``."""
        return self.codes().to(dtype) - 1

    def expanded_scale(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Scale broadcast to ``[N, K]`` (or ``[N, 1]`` for per-channel scales)."""
        s = self.scale.to(dtype)
        if self.group_size == 0:
            return s
        return s.repeat_interleave(self.group_size, dim=1)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``[N, K]`` weight. Reference and debugging only: kernels never build this."""
        return self.signs(dtype) * self.expanded_scale(dtype)

    def to(self, device: torch.device | str | None = None) -> TernaryWeight:
        return TernaryWeight(self.packed.to(device), self.scale.to(device), self.shape, self.group_size)
