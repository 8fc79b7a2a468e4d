"""Bit packing of ternary codes: the 2-bit runtime layout and the 5-trits-per-byte at-rest layout.

A *code* is ``w + 1`` for a ternary weight ``w`` in {-1, 0, +1}, so codes are in {0, 1, 2}
(uint8). The value 3 never occurs in a valid file.

Runtime layout (``"2bit"``), the one every kernel reads directly
------------------------------------------------------------------
A weight matrix of logical shape ``[N, K]`` (``nn.Linear`` order: out, in) is stored as uint8
``[N, Kp // 4]`` with ``Kp = ceil(K / 128) * 128``; the padding codes are 1 (weight 0).
Along K the row is cut into *pack blocks* of 128 weights = 32 bytes. Inside a block, byte ``j``
(0..31) holds the four weights ``k = j + 32 * s`` for ``s = 0..3`` in bits ``2s..2s+1``:

    byte[n, 32*b + j] = sum_s code[n, 128*b + 32*s + j] << (2*s)

so one byte load followed by four shifts yields four *contiguous* 32-wide K slices. A GPU
kernel multiplies them with four contiguous 32-wide slices of the activations (no shuffles,
no redundant loads); the CPU reference unpacks the same way with four shifts.

At-rest layout (``"base3"``), for smaller downloads
------------------------------------------------------
Five codes per byte, ``byte = c0 + 3*c1 + 9*c2 + 27*c3 + 81*c4`` (< 243), over each row's
codes in logical K order, the row padded with code 1 to a multiple of 5: uint8
``[N, ceil(K / 5)]``, 1.6 bits per weight. It is decoded to the runtime layout at load time.
"""

from __future__ import annotations

import torch

PACK_BLOCK = 128
"""Weights per pack block along K (32 bytes)."""
CODES_PER_BYTE = 4
TRITS_PER_BYTE = 5
_SLICE = PACK_BLOCK // CODES_PER_BYTE  # 32


def padded_k(k: int) -> int:
    """K rounded up to a whole number of pack blocks."""
    return -(-k // PACK_BLOCK) * PACK_BLOCK


def packed_2bit_cols(k: int) -> int:
    """Bytes per row in the runtime layout for a logical row of ``k`` weights."""
    return padded_k(k) // CODES_PER_BYTE


def packed_base3_cols(k: int) -> int:
    """Bytes per row in the at-rest layout for a logical row of ``k`` weights."""
    return -(-k // TRITS_PER_BYTE)


def _check_codes(codes: torch.Tensor) -> None:
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"codes must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes ``[N, K]`` (values 0..2) into the runtime layout ``[N, Kp/4]``."""
    _check_codes(codes)
    n, k = codes.shape
    kp = padded_k(k)
    if kp != k:
        codes = torch.nn.functional.pad(codes, (0, kp - k), value=1)
    blocks = codes.reshape(n, kp // PACK_BLOCK, CODES_PER_BYTE, _SLICE)
    packed = blocks[:, :, 0] | (blocks[:, :, 1] << 2) | (blocks[:, :, 2] << 4) | (blocks[:, :, 3] << 6)
    return packed.reshape(n, kp // CODES_PER_BYTE).contiguous()


def unpack_2bit(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_2bit`: uint8 ``[N, Kp/4]`` -> codes uint8 ``[N, k]``."""
    _check_codes(packed)
    n, cols = packed.shape
    if cols != packed_2bit_cols(k):
        raise ValueError(f"packed rows have {cols} bytes, expected {packed_2bit_cols(k)} for K={k}")
    blocks = packed.reshape(n, cols // _SLICE, 1, _SLICE)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device).view(1, 1, CODES_PER_BYTE, 1)
    codes = (blocks >> shifts) & 3
    return codes.reshape(n, cols * CODES_PER_BYTE)[:, :k]


_POW3 = (1, 3, 9, 27, 81)


def pack_base3(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes ``[N, K]`` (values 0..2) into the at-rest layout ``[N, ceil(K/5)]``."""
    _check_codes(codes)
    n, k = codes.shape
    kb = packed_base3_cols(k) * TRITS_PER_BYTE
    if kb != k:
        codes = torch.nn.functional.pad(codes, (0, kb - k), value=1)
    c = codes.reshape(n, kb // TRITS_PER_BYTE, TRITS_PER_BYTE).to(torch.int16)
    weights = torch.tensor(_POW3, dtype=torch.int16, device=codes.device)
    return (c * weights).sum(-1).to(torch.uint8)


def unpack_base3(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_base3`: uint8 ``[N, ceil(k/5)]`` -> codes uint8 ``[N, k]``.

    Raises ``ValueError`` if any byte is >= 243 (not a valid base-3 group of five).
    """
    _check_codes(packed)
    n, cols = packed.shape
    if cols != packed_base3_cols(k):
        raise ValueError(f"base3 rows have {cols} bytes, expected {packed_base3_cols(k)} for K={k}")
    if packed.numel() and int(packed.max()) >= 243:
        raise ValueError("base3 bytes must be < 243")
    v = packed.to(torch.int16).unsqueeze(-1)
    pows = torch.tensor(_POW3, dtype=torch.int16, device=packed.device)
    codes = (v // pows) % 3
    return codes.to(torch.uint8).reshape(n, cols * TRITS_PER_BYTE)[:, :k]


def base3_to_2bit(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Decode the at-rest layout straight to the runtime layout."""
    return pack_2bit(unpack_base3(packed, k))


def twobit_to_base3(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Re-encode the runtime layout in the at-rest layout."""
    return pack_base3(unpack_2bit(packed, k))
