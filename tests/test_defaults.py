"""One default method everywhere (core/defaults.py): the CLI, the node, the shipped workflow and
the `inspect` hint agree, and the baseline stays available and labelled."""

import json
from pathlib import Path

from ternaryflux.core.defaults import BASELINE_METHOD, DEFAULT_METHOD
from ternaryflux.quant.algorithms import METHODS
from ternaryflux.quantize_tool.cli import build_parser
from ternaryflux.quantize_tool.cmd_inspect import next_step_hint

ROOT = Path(__file__).resolve().parents[1]


def test_cli_default_and_choices_come_from_core_defaults():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command").choices["quantize"]
    method = next(a for a in sub._actions if a.dest == "method")
    assert method.default == DEFAULT_METHOD and list(method.choices) == list(METHODS)
    assert BASELINE_METHOD in method.choices and "baseline" in method.help


def test_inspect_hint_uses_the_default_method():
    hint = next_step_hint("f.safetensors")
    assert f"--method {DEFAULT_METHOD}" in hint
    assert ("--calibration" in hint) == (DEFAULT_METHOD == "calibrated")


def test_node_and_shipped_workflow_use_the_default_method():
    src = (ROOT / "nodes" / "ternarize.py").read_text()
    assert "default=DEFAULT_METHOD" in src and 'default="absmean"' not in src
    wf = json.loads((ROOT / "workflows" / "ternaryflux_ternarize_and_save.json").read_text())
    (node,) = [n for n in wf["nodes"] if n["type"] == "TernaryFluxTernarize"]
    assert node["widgets_values"][0] == DEFAULT_METHOD
