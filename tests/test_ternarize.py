import pytest
import torch
from ternaryflux.core.ternarize import absmean, ternarize, twn
from ternaryflux.core.ternary_weight import TernaryWeight


def test_absmean_hand_computed_per_tensor():
    w = torch.tensor([[0.4, -0.1, 0.0, -0.9], [0.2, 0.6, -0.3, 0.1]])
    # gamma = mean|W| = (0.4+0.1+0+0.9+0.2+0.6+0.3+0.1)/8 = 0.325
    # W/gamma = [1.23, -0.31, 0, -2.77 | 0.62, 1.85, -0.92, 0.31] -> round, clip
    codes, scale = absmean(w, "tensor")
    assert (codes.to(torch.int8) - 1).tolist() == [[1, 0, 0, -1], [1, 1, -1, 0]]
    assert torch.allclose(scale, torch.full((2, 1), 0.325))


def test_absmean_per_channel_and_group():
    w = torch.tensor([[1.0, -1.0, 3.0, 0.1], [0.0, 0.0, 0.0, 0.0]]).repeat(1, 64)  # K = 256
    codes, scale = absmean(w, "channel")
    assert torch.allclose(scale[:, 0], torch.tensor([1.275, 0.0]))
    # row 0: 1/1.275=0.78->1, -1->-1, 3/1.275->clip 1, 0.1/1.275->0
    assert (codes[0, :4].to(torch.int8) - 1).tolist() == [1, -1, 1, 0]
    assert (codes[1] == 1).all()  # an all-zero row is all zero codes
    w2 = torch.cat([torch.ones(1, 128), 4 * torch.ones(1, 128)], 1)
    codes, scale = absmean(w2, "group", group_size=128)
    assert scale.tolist() == [[1.0, 4.0]] and (codes == 2).all()


def test_twn_threshold_and_optimal_scale():
    w = torch.tensor([[1.0, -2.0, 0.1, 0.2] * 32])  # mean|w| = 0.825, delta = 0.5775
    codes, alpha = twn(w)
    assert (codes[0, :4].to(torch.int8) - 1).tolist() == [1, -1, 0, 0]
    assert torch.allclose(alpha, torch.tensor([[1.5]]))


def test_ternarize_returns_consistent_weight():
    w = torch.randn(64, 256)
    for method in ("absmean", "twn"):
        for gs in (0, 128):
            tw = ternarize(w, method, gs)
            assert isinstance(tw, TernaryWeight) and tw.shape == (64, 256)
            deq = tw.dequantize()
            # dequantized weights keep sign agreement with w wherever non-zero
            nz = deq != 0
            assert (torch.sign(deq[nz]) == torch.sign(w[nz])).all()
            assert ((deq - w).norm() / w.norm()) < 0.8


def test_bad_group_size():
    with pytest.raises(ValueError, match="group_size"):
        ternarize(torch.randn(4, 384), "absmean", 256)
    with pytest.raises(ValueError, match="unknown"):
        ternarize(torch.randn(4, 128), "gptq")
