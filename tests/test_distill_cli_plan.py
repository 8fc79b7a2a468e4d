"""`ternaryflux distill --plan` (no weights read) and the budget check before a real run."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config
from ternaryflux.quant.distill_plan import PlanSettings, plan_distill
from ternaryflux.quantize_tool.cli import main


def test_plan_for_a_preset_against_a_budget(capsys):
    assert main(["distill", "--plan", "--model", "flux2-klein-4b", "--max-gpu-memory", "12GB"]) == 0
    out = capsys.readouterr().out
    want = plan_distill("flux2-klein-4b", settings=PlanSettings()).peak_device_bytes("streamed")
    line = next(ln for ln in out.splitlines() if ln.startswith("device peak, streamed"))
    assert f"{want / 2**30:.2f} GiB" in line and "fits 12.00 GB" in line, line
    assert "DOES NOT FIT 12.00 GB" in next(
        ln for ln in out.splitlines() if ln.startswith("device peak, resident")
    )


def test_plan_reads_only_the_teacher_header(tmp_path, capsys):
    f = tmp_path / "tiny.safetensors"
    save_file(make_flux_state_dict(tiny_flux_config(), 0), str(f))
    assert main(["distill", "--plan", "--teacher", str(f), "--resolution", "256", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"hidden {tiny_flux_config().hidden_size}" in out and "256px (256 image" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--plan"], "--plan needs --model NAME or --teacher FILE"),
        (
            ["--plan", "--model", "flux1-dev", "--max-gpu-memory", "22XB"],
            "--max-gpu-memory: unknown unit 'XB'",
        ),
        (["--plan", "--model", "flux1-dev", "--resolution", "1000"], "memory plan: resolution 1000"),
        (["--steps", "3"], "distill needs --teacher, --student, --calibration, -o/--out"),
    ],
)
def test_bad_plan_arguments(argv, message, capsys):
    assert main(["distill", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_run_over_budget_is_refused_before_loading(tmp_path, capsys):
    from ternaryflux.core.calibration_data import write_calibration
    from ternaryflux.quant.testing import trajectory_calibration

    sd = make_flux_state_dict(tiny_flux_config(), 0)
    save_file(sd, str(tmp_path / "flux.safetensors"))
    write_calibration(
        tmp_path / "cal.safetensors", trajectory_calibration(sd, 1, size=64, steps=4, record=(0,), seed=1)
    )
    q = [
        "quantize",
        str(tmp_path / "flux.safetensors"),
        "--method",
        "twn",
        "-o",
        str(tmp_path / "s.safetensors"),
    ]
    assert main([*q, "--no-progress"]) == 0
    out = tmp_path / "d.safetensors"
    argv = [
        "distill",
        "--teacher",
        str(tmp_path / "flux.safetensors"),
        "--student",
        str(tmp_path / "s.safetensors"),
    ]
    argv += ["--calibration", str(tmp_path / "cal.safetensors"), "-o", str(out), "--max-gpu-memory", "100kB"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--no-progress", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs" in err and "more than the 100.00 kB budget" in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()
