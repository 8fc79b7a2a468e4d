import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ternaryflux.core.packing import (
    base3_to_2bit,
    pack_2bit,
    pack_base3,
    packed_2bit_cols,
    packed_base3_cols,
    twobit_to_base3,
    unpack_2bit,
    unpack_base3,
)


def random_codes(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, k), generator=g, dtype=torch.uint8)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 700), seed=st.integers(0, 2**31 - 1))
def test_2bit_round_trip(n, k, seed):
    codes = random_codes(n, k, seed)
    packed = pack_2bit(codes)
    assert packed.shape == (n, packed_2bit_cols(k)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_2bit(packed, k), codes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 700), seed=st.integers(0, 2**31 - 1))
def test_base3_round_trip_and_conversion(n, k, seed):
    codes = random_codes(n, k, seed)
    b3 = pack_base3(codes)
    assert b3.shape == (n, packed_base3_cols(k)) and int(b3.max()) < 243
    assert torch.equal(unpack_base3(b3, k), codes)
    assert torch.equal(base3_to_2bit(b3, k), pack_2bit(codes))
    assert torch.equal(twobit_to_base3(pack_2bit(codes), k), b3)


def test_2bit_layout_matches_documented_bit_positions():
    # byte j of pack block b holds k = 128 b + j + 32 s at bits 2s (independent re-derivation)
    n, k = 3, 300
    codes = random_codes(n, k, 7)
    packed = pack_2bit(codes)
    padded = torch.ones(n, 384, dtype=torch.uint8)
    padded[:, :k] = codes
    for row in range(n):
        for byte in range(packed.shape[1]):
            b, j = divmod(byte, 32)
            want = sum(int(padded[row, 128 * b + j + 32 * s]) << (2 * s) for s in range(4))
            assert int(packed[row, byte]) == want


def test_padding_codes_are_zero_weights():
    packed = pack_2bit(torch.zeros(1, 5, dtype=torch.uint8))  # five -1 weights
    full = unpack_2bit(packed, 128)
    assert torch.equal(full[0, :5], torch.zeros(5, dtype=torch.uint8))
    assert torch.equal(full[0, 5:], torch.ones(123, dtype=torch.uint8))


def test_base3_hand_case():
    codes = torch.tensor([[2, 0, 1, 2, 1, 2]], dtype=torch.uint8)
    # 2 + 0*3 + 1*9 + 2*27 + 1*81 = 146; second group: 2 then padding 1s: 2 + 3 + 9 + 27 + 81 = 122
    assert pack_base3(codes).tolist() == [[146, 122]]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        pack_2bit(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="expected 32"):
        unpack_2bit(torch.zeros(2, 31, dtype=torch.uint8), 128)
    with pytest.raises(ValueError, match="< 243"):
        unpack_base3(torch.full((1, 1), 250, dtype=torch.uint8), 5)
