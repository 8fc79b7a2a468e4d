import json
import subprocess
import sys

from ternaryflux.quantize_tool.cli import main


def test_demo_prints_table_and_figures(tmp_path, capsys):
    out = tmp_path / "demo.json"
    rc = main(
        [
            "demo",
            "--hidden",
            "128",
            "--depth",
            "1",
            "--depth-single",
            "2",
            "--size",
            "16",
            "--out",
            str(tmp_path / "ck"),
            "--json",
            str(out),
            "--calibration-prompts",
            "3",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "parameters ternary" in text and "x smaller" in text and "velocity rel. err" in text
    f = json.loads(out.read_text())
    assert 0.5 < f["ternary_fraction"] < 1
    # ternary weights cost 2 bits (base3: 1.6), the rest stays bf16; allow for scales and header
    floats = 2 * (f["params_total"] - f["params_ternary"])
    assert (
        floats + f["params_ternary"] / 4
        < f["file_2bit_bytes"]
        < 1.05 * (floats + f["params_ternary"] / 4) + 20_000
    )
    assert floats + f["params_ternary"] / 5 < f["file_base3_bytes"] < f["file_2bit_bytes"]
    assert f["reload_matches_in_memory"] is True
    assert 0 < f["velocity_rel_err"] < 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "tiny-flux-ternary-2bit.safetensors",
        "tiny-flux-ternary-base3.safetensors",
        "tiny-flux-ternary-calibrated.safetensors",
    ]
    # the calibrated recipe beats data-free absmean on held-out trajectories
    h = f["held_out"]
    assert h["calibration_samples"] == 9 and h["held_out_samples"] == 6  # 3 records per trajectory
    assert h["calibrated"] < 0.9 * h["absmean"]
    assert "calibrated" in text and "Held-out velocity error" in text


def test_console_script_help_and_errors(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ternaryflux.quantize_tool.cli", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "demo" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "ternaryflux.quantize_tool.cli", "demo", "--hidden", "100"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
