"""The calibration prompt lists (``quant/prompts.py``) behind the Calibration Prompt node and the CLI: no ComfyUI needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ternaryflux.quant import prompts as prompt_list
from ternaryflux.quant.prompts import (
    BUILTIN_PROMPTS_PATH,
    PromptListError,
    builtin_prompt_count,
    builtin_prompts,
    load_prompt_file,
    parse_prompts,
    select_prompt,
    wrap_index,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
import workflow_tools  # noqa: E402


def test_parse_skips_blank_and_comment_lines_and_strips():
    text = "# header\n  first prompt  \n\n\t\n#  another comment\nsecond, with comma\r\nthird\n"
    assert parse_prompts(text) == ["first prompt", "second, with comma", "third"]
    assert parse_prompts("") == [] and parse_prompts("# only\n\n") == []


def test_builtin_list_is_the_shipped_file():
    assert BUILTIN_PROMPTS_PATH == ROOT / "quant" / "data" / "calibration_prompts.txt"
    prompts = builtin_prompts()
    assert len(prompts) >= 1000 and builtin_prompt_count() == len(prompts)
    assert all(p and not p.startswith("#") and p == p.strip() for p in prompts)
    lines = BUILTIN_PROMPTS_PATH.read_text(encoding="utf-8").splitlines()
    assert prompts == [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize(
    "index, expect",
    [(0, 0), (1, 1), (2, 2), (3, 0), (7, 1), (3 * 10**9, 0), (-1, 2)],
)
def test_wrap_index(index, expect):
    assert wrap_index(index, 3) == expect


def test_select_prompt_returns_prompt_wrapped_index_and_count():
    assert select_prompt(["a", "b"], 0) == ("a", 0, 2)
    assert select_prompt(["a", "b"], 5) == ("b", 1, 2)
    with pytest.raises(PromptListError, match="empty"):
        select_prompt([], 0)
    with pytest.raises(PromptListError):
        wrap_index(0, 0)


def test_load_prompt_file(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("\ufeff# bom and comment\nphoto of a cat\n\nphoto of a dog\n", encoding="utf-8")
    assert load_prompt_file(f) == ["photo of a cat", "photo of a dog"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(PromptListError, match="empty.txt holds no prompts"):
        load_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(PromptListError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PromptListError, match="UTF-8"):
        load_prompt_file(tmp_path / "binary.txt")


def test_missing_builtin_file_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(prompt_list, "BUILTIN_PROMPTS_PATH", tmp_path / "gone.txt")
    with pytest.raises(PromptListError, match="built-in calibration prompts are unavailable.*gone.txt"):
        builtin_prompts()
    assert builtin_prompt_count() is None


def test_builtin_list_found_under_any_pack_folder_name(tmp_path):
    """ComfyUI loads the pack from custom_nodes/<any name>: the list is found next to the module."""
    pack = tmp_path / "custom_nodes" / "Some-Other-Name"
    (pack / "quant" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "quant" / "prompts.py", pack / "quant" / "prompts.py")
    (pack / "quant" / "data" / "calibration_prompts.txt").write_text("# h\none\ntwo\n")
    code = (
        "import importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('m', {str(pack / 'quant' / 'prompts.py')!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print(m.builtin_prompts())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['one', 'two']"


def test_prompt_list_imports_without_comfyui():
    code = (
        "import sys, ternaryflux.quant.prompts as p; p.builtin_prompts();"
        "assert 'folder_paths' not in sys.modules and 'comfy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- the shipped workflow


def _record_defs() -> dict:
    """The host's INPUT_TYPES (ComfyUI 0.33) of the node types in the record-calibration workflow."""
    model = ("MODEL", {})
    return {
        "UNETLoader": {
            "required": {"unet_name": (["flux1-dev.safetensors"], {}), "weight_dtype": (["default"], {})}
        },
        "TernaryFluxRecordCalibration": {
            "required": {
                "model": model,
                "filename_prefix": ("STRING", {}),
                "every_n_calls": ("INT", {}),
                "max_samples": ("INT", {}),
                "max_mb": ("INT", {}),
                "store_dtype": ("COMBO", {"options": ["bf16"]}),
            }
        },
        "DualCLIPLoader": {
            "required": {k: (["x"], {}) for k in ("clip_name1", "clip_name2", "type")},
            "optional": {"device": (["default"], {})},
        },
        "VAELoader": {"required": {"vae_name": (["ae.safetensors"],)}},
        "TernaryFluxCalibrationPrompt": {
            "required": {
                "index": ("INT", {"control_after_generate": "increment"}),
                "source": ("COMBO", {"options": ["built-in"]}),
            },
            "optional": {"custom_prompts": ("STRING", {"multiline": True})},
        },
        "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}},
        "FluxGuidance": {"required": {"conditioning": ("CONDITIONING",), "guidance": ("FLOAT", {})}},
        "ConditioningZeroOut": {"required": {"conditioning": ("CONDITIONING",)}},
        "EmptySD3LatentImage": {"required": {k: ("INT", {}) for k in ("width", "height", "batch_size")}},
        "KSampler": {
            "required": {
                "model": model,
                "seed": ("INT", {"control_after_generate": True}),
                "steps": ("INT", {}),
                "cfg": ("FLOAT", {}),
                "sampler_name": (["euler"], {}),
                "scheduler": (["simple"], {}),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {}),
            }
        },
        "VAEDecode": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}},
        "SaveImage": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {})}},
    }


def test_record_workflow_converts_with_linked_text_and_drops_the_note():
    wf = json.loads((ROOT / "workflows" / "ternaryflux_record_calibration.json").read_text())
    api = workflow_tools.ui_to_api(wf, _record_defs())
    by_class = {n["class_type"]: (nid, n["inputs"]) for nid, n in api.items()}
    assert "Note" not in by_class and len(api) == len(wf["nodes"]) - 1
    pid, pin = by_class["TernaryFluxCalibrationPrompt"]
    assert pin == {"index": 0, "source": "built-in", "custom_prompts": ""}  # control value skipped
    _, enc = by_class["CLIPTextEncode"]
    assert enc["text"] == [pid, 0] and isinstance(enc["clip"], list)
    _, ks = by_class["KSampler"]
    assert ks["seed"] == 100 and ks["steps"] == 20 and ks["denoise"] == 1.0
    # tests swap the encoder for random conditioning that follows the linked prompt text
    test = workflow_tools.make_test_prompt(api, {"TernaryFluxCalibrationPrompt": {"index": 5}})
    cond = [n["inputs"] for n in test.values() if n["class_type"] == "TFTestConditioning"]
    assert cond and cond[0]["text"] == [pid, 0]
    assert test[pid]["inputs"]["index"] == 5


def test_text_seed_is_stable():
    assert workflow_tools.text_seed("a") == workflow_tools.text_seed("a") != workflow_tools.text_seed("b")
    assert 0 <= workflow_tools.text_seed("x" * 1000) < 2**31
