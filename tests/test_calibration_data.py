import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.calibration_data import (
    CalibrationSample,
    read_calibration,
    read_calibration_files,
    read_calibration_info,
    write_calibration,
)
from ternaryflux.core.checkpoint import TernaryFormatError


def sample(b=1, h=8, w=12, L=5, guidance=True):
    return CalibrationSample(
        x=torch.randn(b, 16, h, w),
        timestep=torch.rand(b),
        context=torch.randn(b, L, 64),
        y=torch.randn(b, 32),
        guidance=torch.full((b,), 3.5) if guidance else None,
    )


def test_round_trip_with_varied_shapes(tmp_path):
    samples = [sample(), sample(b=2, h=4, w=4, L=9, guidance=False)]
    p = tmp_path / "c.safetensors"
    write_calibration(p, samples, {"source": "test", "prompts": ["a cat"]})
    info = read_calibration_info(p)
    assert info["num_samples"] == 2 and info["source"] == "test"
    back = read_calibration(p)
    for a, b in zip(samples, back):
        for f in ("x", "timestep", "context", "y"):
            assert torch.equal(getattr(a, f), getattr(b, f))
    assert back[1].guidance is None
    assert len(read_calibration_files([p, p])) == 4
    assert back[0].as_inputs(dtype=torch.float64)["x"].dtype == torch.float64


def test_bad_samples_and_files(tmp_path):
    bad = sample()
    bad.timestep = torch.rand(3)
    with pytest.raises(ValueError, match="timestep"):
        write_calibration(tmp_path / "b.safetensors", [bad])
    assert not (tmp_path / "b.safetensors").exists()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TernaryFormatError, match="not a TernaryFLUX calibration file"):
        read_calibration(tmp_path / "plain.safetensors")
    nan = sample()
    nan.x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_calibration(tmp_path / "n.safetensors", [nan])


def test_summary_counts_image_tokens_per_architecture(tmp_path):
    """FLUX.1 latents go in as 2x2 patches (odd sizes padded), FLUX.2's 128-channel latents with patch 1."""
    from ternaryflux.core.calibration_data import CalibrationSample, write_calibration
    from ternaryflux.quant.calibration import load_calibration

    flux1 = CalibrationSample(torch.zeros(1, 16, 9, 8), torch.zeros(1), torch.zeros(1, 3, 4))
    flux2 = CalibrationSample(torch.zeros(2, 128, 4, 4), torch.zeros(2), torch.zeros(2, 3, 4))
    for name, sample, tokens in (("f1", flux1, 5 * 4), ("f2", flux2, 2 * 4 * 4)):
        write_calibration(tmp_path / f"{name}.safetensors", [sample], {"source": "synthetic"})
        assert load_calibration([tmp_path / f"{name}.safetensors"])[1]["image_tokens"] == tokens
