"""The shipped UI workflows: well-formed, up to date with their generator, only known node types.
(That they convert to valid API prompts and run is checked against a real host in tests/comfyui.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
import make_workflows  # noqa: E402
import workflow_tools  # noqa: E402

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
PACK_NODES = {
    "TernaryFluxLoader",
    "TernaryFluxTernarize",
    "TernaryFluxSave",
    "TernaryFluxRecordCalibration",
    "TernaryFluxCalibrationPrompt",
}
STOCK_NODES = {
    "UNETLoader",
    "DualCLIPLoader",
    "CLIPTextEncode",
    "FluxGuidance",
    "ConditioningZeroOut",
    "EmptySD3LatentImage",
    "KSampler",
    "KSamplerAdvanced",
    "VAELoader",
    "VAEDecode",
    "SaveImage",
    "LoraLoaderModelOnly",
    "ModelSamplingFlux",
    "BasicGuider",
    "RandomNoise",
    "KSamplerSelect",
    "BasicScheduler",
    "SamplerCustomAdvanced",
    "CLIPLoader",
    "EmptyFlux2LatentImage",
    "Flux2Scheduler",
    "CFGGuider",
}


def test_every_expected_workflow_is_shipped():
    assert {p.name for p in WORKFLOWS} == set(make_workflows.WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_structure(path):
    wf = json.loads(path.read_text())
    assert workflow_tools.check_structure(wf) == []
    types = {n["type"] for n in wf["nodes"]}
    known = PACK_NODES | STOCK_NODES | workflow_tools.FRONTEND_ONLY
    assert types <= known, types - known
    assert types & PACK_NODES, "each workflow uses this pack"
    for n in wf["nodes"]:
        sockets, widgets, outs = make_workflows.SPECS[n["type"]]
        assert len(n["widgets_values"]) == len(widgets), n["type"]
        assert [o["type"] for o in n["outputs"]] == [t for _, t in outs]
        assert all(i["link"] is not None for i in n["inputs"]), (
            f"{n['type']} {n['id']} has an unconnected input"
        )
        for i in n["inputs"]:  # a widget turned into an input, as the frontend writes it
            if "widget" in i:
                assert i["widget"] == {"name": i["name"]} and i["name"] in widgets, (n["type"], i)
        assert len(n["pos"]) == 2 and len(n["size"]) == 2


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_what_the_generator_writes(path):
    assert json.loads(path.read_text()) == make_workflows.WORKFLOWS[path.name](), (
        "run tests/comfyui/make_workflows.py"
    )


def test_expected_graph_shapes():
    by = {p.stem: {n["type"] for n in json.loads(p.read_text())["nodes"]} for p in WORKFLOWS}
    assert {
        "TernaryFluxLoader",
        "DualCLIPLoader",
        "VAELoader",
        "FluxGuidance",
        "KSampler",
        "VAEDecode",
        "SaveImage",
    } <= by["ternaryflux_txt2img"]
    assert {"LoraLoaderModelOnly", "SamplerCustomAdvanced", "ModelSamplingFlux"} <= by[
        "ternaryflux_txt2img_lora"
    ]
    assert {"UNETLoader", "TernaryFluxTernarize", "TernaryFluxSave", "KSamplerAdvanced"} <= by[
        "ternaryflux_ternarize_and_save"
    ]
    # FLUX.2 [klein]: CLIPLoader type flux2, FLUX.2 latent and scheduler, Bonsai's 4 steps at CFG 1.0,
    # no FluxGuidance (klein has no distilled-guidance input)
    f2 = json.loads((ROOT / "workflows" / "ternaryflux_flux2_klein_txt2img.json").read_text())
    f2n = {n["type"]: n for n in f2["nodes"]}
    assert {
        "TernaryFluxLoader",
        "CLIPLoader",
        "CLIPTextEncode",
        "EmptyFlux2LatentImage",
        "Flux2Scheduler",
    } <= set(f2n)
    assert {"CFGGuider", "SamplerCustomAdvanced", "VAEDecode", "SaveImage"} <= set(f2n)
    assert "FluxGuidance" not in f2n and "DualCLIPLoader" not in f2n
    assert f2n["CLIPLoader"]["widgets_values"][1] == "flux2"
    assert f2n["Flux2Scheduler"]["widgets_values"][0] == 4 and f2n["CFGGuider"]["widgets_values"] == [1.0]
    rec = json.loads((ROOT / "workflows" / "ternaryflux_record_calibration.json").read_text())
    nodes = {n["id"]: n for n in rec["nodes"]}
    (prompt,) = [n for n in rec["nodes"] if n["type"] == "TernaryFluxCalibrationPrompt"]
    (enc,) = [n for n in rec["nodes"] if n["type"] == "CLIPTextEncode"]
    assert prompt["widgets_values"][:3] == [0, "increment", "built-in"], "index increments per queued run"
    (text_in,) = [i for i in enc["inputs"] if i["name"] == "text"]
    link = next(lk for lk in rec["links"] if lk[0] == text_in["link"])
    assert nodes[link[1]] is prompt and link[2] == 0 and link[5] == "STRING"
    (note,) = [n for n in rec["nodes"] if n["type"] == "Note"]
    text = note["widgets_values"][0]
    assert (
        "batch count" in text and "--method calibrated --calibration output/ternaryflux_calibration " in text
    )


def _fake_defs():
    return {
        "Loader": {"required": {"name": (["a", "b"], {}), "mode": ("COMBO", {"options": ["x"]})}},
        "Sampler": {
            "required": {
                "model": ("MODEL",),
                "seed": ("INT", {"control_after_generate": True}),
                "steps": ("INT", {}),
                "cond": ("CONDITIONING",),
            },
            "optional": {"denoise": ("FLOAT", {})},
        },
        "Text": {"required": {"text": ("STRING", {"multiline": True})}},
        "Out": {"required": {"samples": ("LATENT",), "prefix": ("STRING", {})}},
    }


def test_ui_to_api_maps_widgets_links_and_control_values():
    wf = {
        "last_node_id": 4,
        "last_link_id": 3,
        "nodes": [
            {
                "id": 1,
                "type": "Loader",
                "inputs": [],
                "outputs": [{"name": "M", "type": "MODEL", "links": [1]}],
                "widgets_values": ["b", "x"],
            },
            {
                "id": 2,
                "type": "Text",
                "inputs": [],
                "outputs": [{"name": "C", "type": "CONDITIONING", "links": [2]}],
                "widgets_values": ["hi"],
            },
            {
                "id": 3,
                "type": "Sampler",
                "inputs": [{"name": "model", "link": 1}, {"name": "cond", "link": 2}],
                "outputs": [{"name": "L", "type": "LATENT", "links": [3]}],
                "widgets_values": [7, "fixed", 4, 0.5],
            },
            {
                "id": 4,
                "type": "Out",
                "inputs": [{"name": "samples", "link": 3}],
                "outputs": [],
                "widgets_values": ["p"],
            },
            {"id": 5, "type": "Note", "inputs": [], "outputs": [], "widgets_values": ["ignored"]},
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "CONDITIONING"], [3, 3, 0, 4, 0, "LATENT"]],
    }
    api = workflow_tools.ui_to_api(wf, _fake_defs())
    assert api["3"]["inputs"] == {"model": ["1", 0], "seed": 7, "steps": 4, "cond": ["2", 0], "denoise": 0.5}
    assert api["1"]["inputs"] == {"name": "b", "mode": "x"} and "5" not in api
    with pytest.raises(KeyError, match="unknown node type"):
        workflow_tools.ui_to_api(
            {**wf, "nodes": wf["nodes"] + [{"id": 6, "type": "Nope", "inputs": []}]}, _fake_defs()
        )


def test_make_test_prompt_swaps_encoders_and_decoder():
    wf = json.loads((ROOT / "workflows" / "ternaryflux_txt2img.json").read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    api = {str(i): {"class_type": n["type"], "inputs": {}} for i, n in nodes.items()}
    for _lid, src, sslot, dst, dslot, _ in wf["links"]:
        api[str(dst)]["inputs"][nodes[dst]["inputs"][dslot]["name"]] = [str(src), sslot]
    test = workflow_tools.make_test_prompt(api, {"KSampler": {"steps": 2}})
    classes = sorted(n["class_type"] for n in test.values())
    assert "TFTestConditioning" in classes and "SaveLatent" in classes
    assert not {"DualCLIPLoader", "VAELoader", "VAEDecode", "SaveImage", "CLIPTextEncode"} & set(classes)
    assert [n["inputs"]["steps"] for n in test.values() if n["class_type"] == "KSampler"] == [2]
