"""Integration tests against a REAL ComfyUI host, headless on CPU.

Needs ``COMFYUI_PATH`` (a ComfyUI checkout) and ``COMFYUI_PYTHON`` (its interpreter; defaults to
the current one). Build a CPU host with ``../shared/comfyhost/setup.sh`` (see README). The host
runs in a subprocess (``host_driver.py``) with a temporary base directory whose
``custom_nodes/`` links this pack and the test pack, and whose ``models/`` holds tiny FLUX
fixtures (hidden 128, 1 double + 1 single block). All jobs run in one host process, one after
another, like a server's queue; each test checks its job's results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
if not COMFYUI_PATH and os.environ.get("TERNARYFLUX_REQUIRE_COMFYUI"):
    # CI (.ci/run) sets this: the real-host suite must run there, never skip
    pytest.fail("TERNARYFLUX_REQUIRE_COMFYUI is set but COMFYUI_PATH is not", pytrace=False)
if not COMFYUI_PATH:
    pytest.skip(
        "ComfyUI integration tests need COMFYUI_PATH (and COMFYUI_PYTHON); build a CPU host with "
        "../shared/comfyhost/setup.sh",
        allow_module_level=True,
    )
if not Path(COMFYUI_PATH, "main.py").is_file():
    if os.environ.get("TERNARYFLUX_REQUIRE_COMFYUI"):
        pytest.fail(f"COMFYUI_PATH={COMFYUI_PATH} has no main.py", pytrace=False)
    pytest.skip(f"COMFYUI_PATH={COMFYUI_PATH} has no main.py", allow_module_level=True)

from ternaryflux.core.calibration_data import read_calibration  # noqa: E402
from ternaryflux.core.checkpoint import (  # noqa: E402
    TernaryMetadata,
    header_metadata,
    load_checkpoint,
    read_header,
    write_checkpoint,
)
from ternaryflux.core.defaults import DEFAULT_METHOD  # noqa: E402
from ternaryflux.core.fixtures import (  # noqa: E402
    make_flux_inputs,
    make_flux_state_dict,
    tiny_flux2_config,
    tiny_flux_config,
)
from ternaryflux.core.flux_layout import is_ternary_layer  # noqa: E402
from ternaryflux.core.flux_model import flux_from_state_dict  # noqa: E402
from ternaryflux.core.ternarize import ternarize  # noqa: E402
from ternaryflux.core.ternary_weight import TernaryWeight  # noqa: E402
from ternaryflux.quant.algorithms import TernaryConfig  # noqa: E402
from ternaryflux.quant.flux import quantize_flux_tensors  # noqa: E402
from ternaryflux.quant.prompts import builtin_prompts  # noqa: E402
from ternaryflux.quantize_tool.cli import main as quantize_cli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compat_matrix as cm  # noqa: E402
from workflow_tools import FRONTEND_ONLY, text_seed  # noqa: E402

pytestmark = pytest.mark.comfyui

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
LOADER = {"kernel_backend": "auto", "activations": "bf16", "compute_dtype": "default"}
RANK, ALPHA = 4, 4.0
LORA_LAYERS = [
    "double_blocks.0.img_attn.qkv",
    "single_blocks.0.linear1",
    "double_blocks.0.txt_mlp.2",
    "img_in",
]
DIFF_LAYER = "double_blocks.0.img_mlp.0"
RECORD_WF = "ternaryflux_record_calibration"
MY_PROMPTS = "# my prompts\nfirst custom prompt\n\n  second custom prompt  \n"
OFFSET_LAYER = ("double_blocks.0.img_attn.qkv", "transformer_blocks.0.attn.to_k")  # rows [H, 2H)
CALIB_SAMPLES = 3  # of the 4 in flux_calibration_00001: the node must take the tool's seeded subset
FLUX2_CFG = tiny_flux2_config()  # the FLUX.2 workflow's model (hidden 128, 1 + 1 blocks)
FLUX2_WF = "ternaryflux_flux2_klein_txt2img"
# latent each shipped workflow samples on the tiny models (batch 2, 320x192)
WORKFLOW_LATENT = {FLUX2_WF: (2, 128, 12, 20)}  # FLUX.2: 128 channels at 1/16; FLUX.1 16 at 1/8


# ----------------------------------------------------------------------------- fixtures


def ternary_sd(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        p = k[: -len(".weight")] if k.endswith(".weight") else None
        if p and is_ternary_layer(p):
            tw = ternarize(v.float(), "absmean", 0)
            out[f"{p}.weight"], out[f"{p}.weight_scale"] = tw.packed, tw.scale
            out[f"{p}.weight_shape"] = torch.tensor(tw.shape, dtype=torch.int64)
        else:
            out[k] = v
    return out


def make_lora(cfg, seed: int = 7) -> tuple[dict[str, torch.Tensor], dict[str, tuple]]:
    """A LoRA file (lora_unet_* keys, one diffusers to_k slice, one full diff) and the dense
    deltas it stands for: ``{layer: (delta [N, K] float32, row_offset or None)}``."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        k[:-7]: v.shape
        for k, v in make_flux_state_dict(cfg, 0, dtype=torch.float32).items()
        if k.endswith(".weight")
    }
    lora, deltas = {}, {}
    for layer in LORA_LAYERS:
        n, k = shapes[layer]
        up = 0.15 * torch.randn(n, RANK, generator=g)
        down = 0.15 * torch.randn(RANK, k, generator=g)
        key = "lora_unet_" + layer.replace(".", "_")
        lora[f"{key}.lora_up.weight"], lora[f"{key}.lora_down.weight"] = up, down
        lora[f"{key}.alpha"] = torch.tensor(ALPHA)
        deltas[layer] = [((ALPHA / RANK) * up @ down, None)]
    h = cfg.hidden_size
    up = 0.15 * torch.randn(h, RANK, generator=g)
    down = 0.15 * torch.randn(RANK, h, generator=g)
    lora[f"transformer.{OFFSET_LAYER[1]}.lora_B.weight"] = up
    lora[f"transformer.{OFFSET_LAYER[1]}.lora_A.weight"] = down
    deltas[OFFSET_LAYER[0]].append((up @ down, h))  # no alpha: scale 1
    n, k = shapes[DIFF_LAYER]
    diff = 0.05 * torch.randn(n, k, generator=g)
    lora[f"lora_unet_{DIFF_LAYER.replace('.', '_')}.diff"] = diff
    deltas[DIFF_LAYER] = [(diff, None)]
    return lora, deltas


def reference_forward(
    tsd: dict[str, torch.Tensor], inputs: dict, deltas=None, strength: float = 1.0
) -> torch.Tensor:
    """Library FLUX on the ternary checkpoint; with ``deltas``, the patched layers are dense
    (dequantized ternary or float weight + strength * delta)."""
    sd = dict(tsd)
    for layer, items in (deltas or {}).items():
        if f"{layer}.weight_scale" in sd:
            n, k = (int(v) for v in sd.pop(f"{layer}.weight_shape").tolist())
            s = sd.pop(f"{layer}.weight_scale")
            w = TernaryWeight(
                sd[f"{layer}.weight"], s, (n, k), 0 if s.shape[1] == 1 else k // s.shape[1]
            ).dequantize()
        else:
            w = sd[f"{layer}.weight"].float()
        w = w.clone()
        for delta, row in items:
            if row is None:
                w += strength * delta
            else:
                w[row : row + delta.shape[0]] += strength * delta
        sd[f"{layer}.weight"] = w
    model = flux_from_state_dict(sd, dtype=torch.float32)
    with torch.no_grad():
        return model.forward_latent(**inputs)


class Host:
    def __init__(self, base: Path, results: dict, elapsed: float):
        self.base, self.results, self.elapsed = base, results, elapsed

    def job(self, name: str) -> dict:
        r = self.results[name]
        assert "driver_error" not in r, r["driver_error"]
        return r

    def ok(self, name: str) -> dict:
        r = self.job(name)
        assert r.get("valid", True), r.get("node_errors") or r.get("validation_error")
        assert r["success"], r.get("errors")
        return r

    def latents(self, name: str) -> list[torch.Tensor]:
        out = []
        for node_out in self.ok(name)["outputs"].values():
            for item in node_out.get("latents", []):
                p = self.base / "output" / item.get("subfolder", "") / item["filename"]
                out.append(load_file(str(p))["latent_tensor"])
        return out

    def forward_out(self, tag: str) -> torch.Tensor:
        return load_file(str(self.base / f"fwd_{tag}.safetensors"))["out"]


def _fwd_job(
    name,
    model_nodes: dict,
    tag: str,
    inputs_file: Path,
    base: Path,
    mode: str = "normal",
    model_node: str | None = None,
) -> dict:
    prompt = dict(model_nodes)
    last = model_node or max(model_nodes, key=int)
    prompt["900"] = {
        "class_type": "TFTestForward",
        "inputs": {
            "model": [last, 0],
            "inputs_path": str(inputs_file),
            "output_path": str(base / f"fwd_{tag}.safetensors"),
            "mode": mode,
        },
    }
    prompt["901"] = {
        "class_type": "TFTestModelInfo",
        "inputs": {"model": [last, 0], "output_path": str(base / f"info_{tag}.json")},
    }
    return {"name": name, "prompt": prompt}


def _loader(name: str) -> dict:
    return {"class_type": "TernaryFluxLoader", "inputs": {"unet_name": name, **LOADER}}


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Host:
    base = tmp_path_factory.mktemp("comfybase")
    dm, loras = base / "models" / "diffusion_models", base / "models" / "loras"
    calib_dir = base / "models" / "ternaryflux_calibration"
    for d in (
        dm,
        loras,
        base / "models" / "text_encoders",
        base / "models" / "vae",
        base / "custom_nodes",
        calib_dir,
    ):
        d.mkdir(parents=True, exist_ok=True)
    (calib_dir / "my_prompts.txt").write_text(MY_PROMPTS)
    (calib_dir / "empty.txt").write_text("# no prompts here\n\n")
    (base / "custom_nodes" / "ComfyUI-TernaryFLUX").symlink_to(ROOT, target_is_directory=True)
    (base / "custom_nodes" / "tf_test_nodes").symlink_to(HERE / "test_nodes_pack", target_is_directory=True)

    dev_cfg, schnell_cfg = tiny_flux_config(), tiny_flux_config(guidance=False)
    dev, schnell = make_flux_state_dict(dev_cfg, 0), make_flux_state_dict(schnell_cfg, 1)
    save_file(dev, str(dm / "tiny_flux_dev.safetensors"))
    save_file(schnell, str(dm / "tiny_flux_schnell.safetensors"))
    write_checkpoint(dm / "tiny_ternary_dev.safetensors", ternary_sd(dev), TernaryMetadata(variant="dev"))
    write_checkpoint(
        dm / "tiny_ternary_schnell.safetensors", ternary_sd(schnell), TernaryMetadata(variant="schnell")
    )
    data = (dm / "tiny_ternary_dev.safetensors").read_bytes()
    (dm / "broken_truncated.safetensors").write_bytes(data[: len(data) // 2])
    (dm / "broken_not_safetensors.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    lora, _ = make_lora(dev_cfg)
    save_file(lora, str(loras / "tiny_lora.safetensors"))
    compat_fixtures = cm.write_fixtures(base, ternary_sd, make_lora, write_checkpoint, TernaryMetadata)
    # the shipped workflows' model names, so the *unchanged* workflows validate against this host
    (dm / "flux1-dev-ternary.safetensors").write_bytes(data)
    (dm / "flux1-dev.safetensors").write_bytes((dm / "tiny_flux_dev.safetensors").read_bytes())
    (loras / "my_flux_lora.safetensors").write_bytes((loras / "tiny_lora.safetensors").read_bytes())
    quantize_flux_tensors(  # the FLUX.2 workflow's checkpoint, under its shipped name
        make_flux_state_dict(FLUX2_CFG, 2),
        dm / "bonsai-4b-ternary.safetensors",
        TernaryConfig(method="absmean", group_size=128),
        device="cpu",
    )
    for p in (
        "text_encoders/t5xxl_fp16.safetensors",
        "text_encoders/clip_l.safetensors",
        "text_encoders/qwen_3_4b.safetensors",
        "vae/ae.safetensors",
        "vae/flux2-vae.safetensors",
    ):
        (base / "models" / p).write_bytes(b"")

    inp_dev = make_flux_inputs(dev_cfg, batch=2, height=24, width=40, txt_len=8, seed=3)
    inp_sch = make_flux_inputs(schnell_cfg, batch=1, height=32, width=32, txt_len=8, seed=4)
    save_file({k: v for k, v in inp_dev.items() if v is not None}, str(base / "inputs_dev.safetensors"))
    save_file({k: v for k, v in inp_sch.items() if v is not None}, str(base / "inputs_schnell.safetensors"))

    jobs = [
        {"name": "node_list", "node_list": True},
        {
            "name": "fixture_taef1",
            "call": "host_fixtures:make_taef1",
            "kwargs": {"out_dir": str(base / "models" / "vae_approx")},
        },
    ]
    dev_in, sch_in = base / "inputs_dev.safetensors", base / "inputs_schnell.safetensors"
    jobs.append(_fwd_job("fwd_dev", {"1": _loader("tiny_ternary_dev.safetensors")}, "dev", dev_in, base))
    jobs.append(
        _fwd_job("fwd_schnell", {"1": _loader("tiny_ternary_schnell.safetensors")}, "schnell", sch_in, base)
    )
    jobs.append(
        _fwd_job(
            "fwd_float",
            {
                "1": {
                    "class_type": "UNETLoader",
                    "inputs": {"unet_name": "tiny_flux_dev.safetensors", "weight_dtype": "default"},
                }
            },
            "float",
            dev_in,
            base,
        )
    )
    lora_node = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["1", 0], "lora_name": "tiny_lora.safetensors", "strength_model": 1.0},
    }
    bypass_node = {**lora_node, "class_type": "LoraLoaderBypassModelOnly"}
    half_node = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {**lora_node["inputs"], "strength_model": 0.5},
    }
    tl = _loader("tiny_ternary_dev.safetensors")
    jobs.append(_fwd_job("fwd_lora", {"1": tl, "2": lora_node}, "lora", dev_in, base))
    jobs.append(_fwd_job("fwd_bypass", {"1": tl, "2": bypass_node}, "bypass", dev_in, base))
    jobs.append(_fwd_job("fwd_lora_half", {"1": tl, "2": half_node}, "lora_half", dev_in, base))
    jobs.append(
        _fwd_job("fwd_lora_lowvram", {"1": tl, "2": lora_node}, "lora_lowvram", dev_in, base, mode="lowvram")
    )
    jobs.append(_fwd_job("fwd_after_lora", {"1": tl}, "after_lora", dev_in, base))  # LoRA must not stick
    jobs.append(
        _fwd_job(
            "fwd_int8", {"1": {**tl, "inputs": {**tl["inputs"], "activations": "int8"}}}, "int8", dev_in, base
        )
    )

    # broken files: each must fail with a clear error, and the next prompt must still run
    for fname in (
        "broken_truncated.safetensors",
        "broken_not_safetensors.safetensors",
        "tiny_flux_dev.safetensors",
    ):
        jobs.append(_fwd_job(f"broken_{fname}", {"1": _loader(fname)}, f"broken_{fname}", dev_in, base))
    jobs.append(_fwd_job("after_broken", {"1": tl}, "after_broken", dev_in, base))

    txt2img_set = {
        "TernaryFluxLoader": {"unet_name": "tiny_ternary_dev.safetensors"},
        "EmptySD3LatentImage": {"width": 320, "height": 192, "batch_size": 2},
        "KSampler": {"steps": 2},
        "KSamplerAdvanced": {"steps": 2},
        "BasicScheduler": {"steps": 2},
        "LoraLoaderModelOnly": {"lora_name": "tiny_lora.safetensors"},
        "UNETLoader": {"unet_name": "tiny_flux_dev.safetensors"},
        "TernaryFluxSave": {"filename": "tiny_saved"},
    }
    # record calibration: 8 steps, every 2nd call -> 4 samples per queued run (one file each)
    record_set = {
        **txt2img_set,
        "KSampler": {"steps": 8},
        "TernaryFluxRecordCalibration": {"every_n_calls": 2},
        "TernaryFluxCalibrationPrompt": {"index": 0},
    }
    flux2_set = {  # the shipped file name is kept: it is the tiny FLUX.2 checkpoint here
        "TFTestConditioning": {"dim": FLUX2_CFG.context_in_dim},
        "EmptyFlux2LatentImage": {"width": 320, "height": 192, "batch_size": 2},
        "Flux2Scheduler": {"steps": 2, "width": 320, "height": 192},
    }
    for wf in WORKFLOWS:
        jobs.append({"name": f"validate_{wf.stem}", "workflow": str(wf), "validate_only": True})
        wf_set = {RECORD_WF: record_set, FLUX2_WF: flux2_set}.get(wf.stem, txt2img_set)
        jobs.append({"name": f"run_{wf.stem}", "workflow": str(wf), "set": wf_set})
    record_wf = str(ROOT / "workflows" / f"{RECORD_WF}.json")
    # like a queue with batch count 2: the frontend has incremented index -> 1 (file _00002)
    for name, prompt_set in (
        ("record_index1", {"index": 1}),
        ("record_file", {"index": 3, "source": "my_prompts.txt"}),  # 2 prompts: 3 wraps to 1 (_00003)
        (
            "record_custom",
            {"index": 2, "custom_prompts": "alpha prompt\n# skipped\n\nbeta prompt\n"},
        ),  # (_00004)
        ("record_empty_file", {"index": 0, "source": "empty.txt"}),  # fails: no file written
    ):
        jobs.append(
            {
                "name": name,
                "workflow": record_wf,
                "set": {**record_set, "TernaryFluxCalibrationPrompt": prompt_set},
            }
        )
    schnell_set = {
        **txt2img_set,
        "TernaryFluxLoader": {"unet_name": "tiny_ternary_schnell.safetensors"},
        "EmptySD3LatentImage": {"width": 256, "height": 256, "batch_size": 1},
    }
    jobs.append(
        {
            "name": "run_txt2img_schnell",
            "workflow": str(ROOT / "workflows" / "ternaryflux_txt2img.json"),
            "set": schnell_set,
        }
    )

    save_set = {**txt2img_set, "TernaryFluxSave": {"filename": "tiny_saved", "packing": "base3"}}
    jobs.append(
        {
            "name": "save_again_no_overwrite",
            "workflow": str(ROOT / "workflows" / "ternaryflux_ternarize_and_save.json"),
            "set": save_set,
        }
    )
    over = {
        **txt2img_set,
        "TernaryFluxSave": {"filename": "tiny_saved", "packing": "base3", "overwrite": True},
    }
    jobs.append(
        {
            "name": "save_overwrite_base3",
            "workflow": str(ROOT / "workflows" / "ternaryflux_ternarize_and_save.json"),
            "set": over,
        }
    )
    esc = {**txt2img_set, "TernaryFluxSave": {"filename": "../../escape"}}
    jobs.append(
        {
            "name": "save_escape",
            "workflow": str(ROOT / "workflows" / "ternaryflux_ternarize_and_save.json"),
            "set": esc,
        }
    )
    jobs.append(
        _fwd_job("fwd_saved_base3", {"1": _loader("tiny_saved.safetensors")}, "saved_base3", dev_in, base)
    )
    calib = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "tiny_flux_dev.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "TernaryFluxTernarize",
            "inputs": {
                "model": ["1", 0],
                "method": "calibrated",
                "group_size": "128",
                "calibration": "flux_calibration_00001.safetensors",
                "max_calibration_samples": CALIB_SAMPLES,
            },
        },
        "3": {
            "class_type": "TernaryFluxSave",
            "inputs": {
                "model": ["2", 0],
                "filename": "tiny_calibrated",
                "packing": "2bit",
                "float_dtype": "keep",  # the corrected biases as the MODEL holds them
                "overwrite": False,
            },
        },
    }
    jobs.append(_fwd_job("ternarize_calibrated", calib, "calibrated", dev_in, base, model_node="2"))
    jobs += cm.jobs() + cm.forward_jobs(_fwd_job, base, dev_in)

    jobs_file = base / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    out = base / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.time()
    proc = subprocess.run(
        [
            COMFYUI_PYTHON,
            str(HERE / "host_driver.py"),
            "--comfy",
            COMFYUI_PATH,
            "--base",
            str(base),
            "--jobs",
            str(jobs_file),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )
    (base / "host.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and out.exists(), (
        f"host driver failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    )
    h = Host(base, json.loads(out.read_text()), time.time() - t0)
    h.dev_inputs, h.schnell_inputs, h.dev_cfg = inp_dev, inp_sch, dev_cfg
    h.tsd_dev = load_checkpoint(dm / "tiny_ternary_dev.safetensors").state_dict
    h.tsd_schnell = load_checkpoint(dm / "tiny_ternary_schnell.safetensors").state_dict
    h.float_dev = dev
    h.compat_fixtures = compat_fixtures
    return h


def _err(h: Host, name: str) -> str:
    r = h.job(name)
    assert r.get("valid") and not r["success"], f"{name} should fail at execution: {r}"
    msgs = " ".join(e.get("exception_message") or "" for e in r["errors"])
    assert msgs, r
    return msgs


def _forward_meta(host: Host, tag: str) -> dict:
    with safe_open(str(host.base / f"fwd_{tag}.safetensors"), "pt") as f:
        return f.metadata()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------- tests


def test_host_version_and_pack_nodes(host: Host):
    assert host.results["_host"]["version"]
    r = host.ok("node_list")
    mine = {
        "TernaryFluxLoader",
        "TernaryFluxTernarize",
        "TernaryFluxSave",
        "TernaryFluxRecordCalibration",
        "TernaryFluxCalibrationPrompt",
    }
    assert mine <= set(r["nodes"])
    assert {r["display"][k] for k in mine} == {
        "Load Ternary FLUX",
        "Ternarize FLUX",
        "Save Ternary FLUX",
        "Record Calibration",
        "TernaryFLUX Calibration Prompt",
    }
    assert not FRONTEND_ONLY & set(r["nodes"]), "Note/MarkdownNote/Reroute/PrimitiveNode are frontend-only"
    assert set(r["categories"].values()) == {"TernaryFLUX"}
    for node, schema in r["pack_schemas"].items():
        for section in ("required", "optional"):
            for name, spec in (schema.get(section) or {}).items():
                assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
    # the loader lists ternary checkpoints only (filter by header), truncated ones included
    options = r["pack_schemas"]["TernaryFluxLoader"]["required"]["unet_name"][1]["options"]
    assert "tiny_ternary_dev.safetensors" in options and "broken_truncated.safetensors" in options
    assert "tiny_flux_dev.safetensors" not in options and "broken_not_safetensors.safetensors" not in options
    # the prompt node: built-in list or the .txt files of the calibration folder; index increments
    cp = r["pack_schemas"]["TernaryFluxCalibrationPrompt"]
    assert cp["required"]["source"][1]["options"] == ["built-in", "empty.txt", "my_prompts.txt"]
    assert cp["required"]["index"][0] == "INT" and cp["required"]["index"][1]["control_after_generate"]
    assert cp["optional"]["custom_prompts"][1]["multiline"]
    n = len(builtin_prompts())
    assert n >= 1000 and f"the {n} prompts" in cp["required"]["source"][1]["tooltip"]


def test_loader_matches_library_reference_dev_batch2_nonsquare(host: Host):
    host.ok("fwd_dev")
    out = host.forward_out("dev")
    ref = reference_forward(host.tsd_dev, host.dev_inputs)
    assert out.shape == ref.shape == (2, 16, 24, 40)
    assert _rel(out, ref) < 1e-4
    info = json.loads((host.base / "info_dev.json").read_text())
    assert info["patcher_class"] == "TernaryModelPatcher" and not info["is_dynamic"]
    assert info["ternary_layers"] == 13 and info["cached_patcher_init"]
    assert _forward_meta(host, "dev")["kernel_layers"] == "13"


def test_loader_matches_library_reference_schnell(host: Host):
    host.ok("fwd_schnell")
    out = host.forward_out("schnell")
    ref = reference_forward(host.tsd_schnell, host.schnell_inputs)
    assert _rel(out, ref) < 1e-4


def test_memory_accounting_sees_packed_sizes(host: Host):
    host.ok("fwd_float")
    t = json.loads((host.base / "info_dev.json").read_text())
    f = json.loads((host.base / "info_float.json").read_text())
    packed = t["param_bytes_uint8"]
    assert packed > 0
    # model_size = state_dict bytes: the float model minus the dense block weights plus the packed ones
    block_floats = sum(
        v.numel() for k, v in host.float_dev.items() if k.endswith(".weight") and is_ternary_layer(k[:-7])
    )
    expect = f["model_size"] - block_floats * 4 + packed
    scales_and_shapes = sum(
        v.numel() * v.element_size() for k, v in host.tsd_dev.items() if k.endswith(("_scale", "_shape"))
    )
    assert t["model_size"] == pytest.approx(expect + scales_and_shapes, rel=0.01)


def test_int8_activations_run_close(host: Host):
    host.ok("fwd_int8")
    out, ref = host.forward_out("int8"), reference_forward(host.tsd_dev, host.dev_inputs)
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.1


@pytest.mark.parametrize("tag", ["lora", "bypass", "lora_lowvram"])
def test_lora_matches_dense_merged_reference(host: Host, tag: str):
    if tag == "bypass" and "LoraLoaderBypassModelOnly" not in host.job("node_list")["nodes"]:
        pytest.skip("host lacks LoraLoaderBypassModelOnly (bypass LoRA is newer than this ComfyUI)")
    host.ok(f"fwd_{tag}")
    out = host.forward_out(tag)
    _, deltas = make_lora(host.dev_cfg)
    if tag == "bypass":
        # stock bypass mode skips sliced (diffusers q/k/v) adapters on any model, float included:
        # "[BypassLoRA] Adapter key not in model state_dict: (..qkv.weight, (0, 128, 128))"
        deltas[OFFSET_LAYER[0]] = [d for d in deltas[OFFSET_LAYER[0]] if d[1] is None]
    ref = reference_forward(host.tsd_dev, host.dev_inputs, deltas)
    base = reference_forward(host.tsd_dev, host.dev_inputs)
    assert _rel(out, ref) < 1e-4, f"{tag}: LoRA output differs from the dense-merged reference"
    assert _rel(base, ref) > 0.05, "the test LoRA must change the output clearly"
    info = json.loads((host.base / f"info_{tag}.json").read_text())
    assert info["patcher_class"] == "TernaryModelPatcher" and not info["is_dynamic"]
    # which path each of the 13 ternary layers took: LoRA layers never dequantize, the full
    # 'diff' patch takes the exact path (bypass injects LoRAs around the plain kernel instead)
    meta = _forward_meta(host, tag)
    counts = tuple(int(meta[f"{k}_layers"]) for k in ("kernel", "lowrank", "exact"))
    assert counts == ((12, 0, 1) if tag == "bypass" else (9, 3, 1)), meta
    if tag == "lora_lowvram":
        assert meta["model_lowvram"] == "True" and int(meta["lowvram_patches"]) >= 5


def test_lora_strength_half(host: Host):
    host.ok("fwd_lora_half")
    _, deltas = make_lora(host.dev_cfg)
    ref = reference_forward(host.tsd_dev, host.dev_inputs, deltas, strength=0.5)
    assert _rel(host.forward_out("lora_half"), ref) < 1e-4


def test_lora_does_not_stick_to_the_shared_model(host: Host):
    host.ok("fwd_after_lora")
    assert _rel(host.forward_out("after_lora"), host.forward_out("dev")) < 1e-6


@pytest.mark.parametrize(
    "fname, expect",
    [
        ("broken_truncated.safetensors", "truncated"),
        ("broken_not_safetensors.safetensors", "not a safetensors file"),
        ("tiny_flux_dev.safetensors", "plain FLUX transformer"),
    ],
)
def test_broken_files_give_clear_errors_and_host_keeps_serving(host: Host, fname: str, expect: str):
    msg = _err(host, f"broken_{fname}")
    assert expect in msg and fname in msg and "Ternarize FLUX" in msg
    host.ok("after_broken")
    assert _rel(host.forward_out("after_broken"), host.forward_out("dev")) < 1e-6


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_validates_unchanged(host: Host, wf: Path):
    r = host.job(f"validate_{wf.stem}")
    assert r["valid"], r.get("node_errors") or r.get("validation_error")
    classes = {n["class_type"] for n in r["api_original"].values()}
    assert classes <= set(host.job("node_list")["nodes"])
    assert not classes & FRONTEND_ONLY  # notes are dropped by the UI -> API conversion


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_on_tiny_models(host: Host, wf: Path):
    lat = host.latents(f"run_{wf.stem}")
    assert lat, "no latent output"
    for t in lat:
        assert t.shape == WORKFLOW_LATENT.get(wf.stem, (2, 16, 24, 40)) and torch.isfinite(t).all()
        assert t.abs().mean() > 0.05  # sampled from an all-zero latent: must have moved


def test_txt2img_schnell(host: Host):
    (t,) = host.latents("run_txt2img_schnell")
    assert t.shape == (1, 16, 32, 32) and torch.isfinite(t).all() and t.abs().mean() > 0.05


def test_ternarize_node_equals_library_and_saves(host: Host):
    host.ok("run_ternaryflux_ternarize_and_save")
    saved = load_checkpoint(host.base / "models" / "diffusion_models" / "tiny_saved.safetensors")
    # the workflow uses the node's default method; the library reference is the same method on
    # the same float weights (independent of the node: core.ternarize on the state dict)
    assert saved.metadata.method == DEFAULT_METHOD and saved.metadata.variant == "dev"
    assert saved.metadata.source_name == "tiny_flux_dev.safetensors"
    for p in saved.ternary_layers:
        ref = ternarize(host.float_dev[f"{p}.weight"], DEFAULT_METHOD)
        assert torch.equal(saved.state_dict[f"{p}.weight"], ref.packed), p
        torch.testing.assert_close(saved.state_dict[f"{p}.weight_scale"], ref.scale)
    assert set(saved.state_dict) == set(host.tsd_dev)


def test_save_refuses_overwrite_and_escapes(host: Host):
    assert "already exists" in _err(host, "save_again_no_overwrite")
    host.ok("save_overwrite_base3")
    assert "filename" in _err(host, "save_escape")
    assert not (host.base / "models" / "escape.safetensors").exists()
    header = read_header(host.base / "models" / "diffusion_models" / "tiny_saved.safetensors")
    assert json.loads(header_metadata(header)["ternaryflux"])["packing"] == "base3"
    host.ok("fwd_saved_base3")  # the base3 file loads and runs like the library on the same file
    saved = load_checkpoint(host.base / "models" / "diffusion_models" / "tiny_saved.safetensors")
    assert _rel(host.forward_out("saved_base3"), reference_forward(saved.state_dict, host.dev_inputs)) < 1e-3


def _expected_context(text: str) -> torch.Tensor:
    """The conditioning TFTestConditioning gives for ``text`` (batch 1, 8 tokens)."""
    return torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(text_seed(text)))


def _recorded_prompt(samples, candidates: list[str]) -> str:
    """Which of ``candidates`` the recorded context belongs to (exactly one must match)."""
    ctx = samples[0].context.float()
    hits = [
        t
        for t in candidates
        if torch.allclose(ctx, _expected_context(t).expand_as(ctx), atol=0.02, rtol=0.02)
    ]
    assert len(hits) == 1, f"recorded context matches {len(hits)} of the candidate prompts"
    return hits[0]


def test_record_calibration_workflow_writes_a_valid_file(host: Host):
    host.ok(f"run_{RECORD_WF}")
    for name in ("record_index1", "record_file", "record_custom"):
        host.ok(name)
    files = sorted((host.base / "output" / "ternaryflux_calibration").glob("*.safetensors"))
    assert [f.name for f in files] == [f"flux_calibration_{i:05d}.safetensors" for i in (1, 2, 3, 4)]
    runs = [read_calibration(f) for f in files]
    # one queued run = one prompt = 8 steps, every 2nd transformer call kept
    assert [len(r) for r in runs] == [4, 4, 4, 4]
    s = runs[0][0]
    assert s.x.shape == (2, 16, 24, 40) and s.context.shape == (2, 8, 4096) and s.y.shape == (2, 768)
    assert s.guidance is not None and torch.allclose(s.guidance.float(), torch.full((2,), 3.5))
    assert all(torch.isfinite(x.x.float()).all() for r in runs for x in r)
    assert len({round(float(x.timestep[0]), 4) for x in runs[0]}) == 4  # spread over the trajectory
    # the calibration prompt node fed CLIPTextEncode: index 0 and 1 of the built-in list ...
    builtin = builtin_prompts()
    assert _recorded_prompt(runs[0], builtin[:3]) == builtin[0]
    assert _recorded_prompt(runs[1], builtin[:3]) == builtin[1]
    assert not torch.allclose(runs[0][0].context.float(), runs[1][0].context.float(), atol=0.1)
    # ... a .txt file in models/ternaryflux_calibration (index 3 wraps to 1) and custom_prompts (2 -> 0)
    mine = ["first custom prompt", "second custom prompt"]
    assert _recorded_prompt(runs[2], mine + builtin[:2]) == "second custom prompt"
    assert _recorded_prompt(runs[3], ["alpha prompt", "beta prompt", *mine]) == "alpha prompt"


def test_calibration_prompt_empty_list_gives_one_clear_error(host: Host):
    msg = _err(host, "record_empty_file")
    assert "Calibration Prompt" in msg and "empty.txt" in msg and "holds no prompts" in msg


def _tool_calibrated(host: Host, calib: Path, out: Path) -> None:
    """``ternaryflux quantize --method calibrated`` in this process, on the file the host loaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the host runs with OMP_NUM_THREADS=1: the same float summation order
    try:
        rc = quantize_cli(
            [
                "quantize",
                str(host.base / "models" / "diffusion_models" / "tiny_flux_dev.safetensors"),
                "--method",
                "calibrated",
                "--calibration",
                str(calib),
                "--calib-samples",
                str(CALIB_SAMPLES),
                "--group-size",
                "128",
                "-o",
                str(out),
                "--no-progress",
                "--no-hash",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0


def test_calibrated_ternarize_is_the_tools_recipe(host: Host, tmp_path: Path):
    host.ok("ternarize_calibrated")
    out = host.forward_out("calibrated")
    assert torch.isfinite(out).all()
    saved = load_checkpoint(host.base / "models" / "diffusion_models" / "tiny_calibrated.safetensors")
    md = saved.metadata
    assert md.method == "calibrated" and md.group_size == 128 and md.method_params["candidates"]
    assert md.calibration["num_samples"] == CALIB_SAMPLES and md.calibration["num_samples_available"] == 4
    ref = reference_forward(saved.state_dict, host.dev_inputs)
    assert _rel(out, ref) < 1e-4
    # the same ternary tensors as the offline tool on the same weights and calibration file
    calib = host.base / "output" / "ternaryflux_calibration" / "flux_calibration_00001.safetensors"
    _tool_calibrated(host, calib, tmp_path / "tool.safetensors")
    tool = load_checkpoint(tmp_path / "tool.safetensors")
    assert tool.ternary_layers == saved.ternary_layers and md.calibration == tool.metadata.calibration
    assert set(saved.state_dict) == set(tool.state_dict)
    for p in tool.ternary_layers:
        assert torch.equal(saved.state_dict[f"{p}.weight"], tool.state_dict[f"{p}.weight"]), p
        ds = saved.state_dict[f"{p}.weight_scale"].float() - tool.state_dict[f"{p}.weight_scale"].float()
        assert ds.abs().max() <= 1e-6, p
    ternary = {f"{p}.{s}" for p in tool.ternary_layers for s in ("weight", "weight_scale", "weight_shape")}
    for k, v in tool.state_dict.items():
        if k not in ternary:  # float tensors and corrected biases: the tool's file holds them in the
            # file's dtype (bf16), the MODEL in its own (fp32 on a CPU host): equal after the same cast
            assert torch.equal(saved.state_dict[k].to(v.dtype), v), k


def test_suite_time_budget(host: Host):
    assert host.elapsed < 300, f"host run took {host.elapsed:.0f} s (the suite must stay within 5 min)"


# ----------------------------------------------------------------------------- compatibility matrix

COMPAT_SAMPLING = [(row, v) for row in cm.ROWS.values() if row not in ("compile",) for v in cm.VARIANTS]
# graphs whose extra node must change the sample of the same seed on the plain ternary model
CHANGES_OUTPUT = {"cn", "img2img", "kontext", "merge", "lora3"}


def _compat_latent(host: Host, name: str, variant: str) -> torch.Tensor:
    (t,) = host.latents(name)
    w, h, b = cm.VARIANTS[variant]
    assert t.shape == (b, 16, h // 8, w // 8), f"{name}: {tuple(t.shape)}"
    assert torch.isfinite(t).all(), name
    return t


@pytest.mark.parametrize("row, variant", COMPAT_SAMPLING, ids=[f"{r}-{v}" for r, v in COMPAT_SAMPLING])
def test_compat_matrix_sampling(host: Host, row: str, variant: str):
    t = _compat_latent(host, f"{row}_{variant}", variant)
    assert t.abs().mean() > 0.05, "the sampler did not move the latent"
    if row in CHANGES_OUTPUT:
        plain = _compat_latent(host, f"plain_{variant}", variant)
        assert _rel(t, plain) > 1e-3, f"{row}: the node had no effect on the ternary model"


def test_compat_torch_compile(host: Host):
    r = host.job("compile_ns2")
    if not r.get("success"):
        msgs = " ".join(
            (e.get("exception_type") or "") + ": " + (e.get("exception_message") or "")
            for e in r.get("errors", [])
        )
        # what a CPU host without a working C++ toolchain for inductor reports
        if any(s in msgs for s in ("CppCompileError", "InvalidCxxCompiler", "BackendCompilerFailed")):
            pytest.skip(f"TorchCompileModel: this CPU host cannot compile with inductor ({msgs[:200]})")
    t = _compat_latent(host, "compile_ns2", "ns2")
    plain = _compat_latent(host, "plain_ns2", "ns2")
    assert _rel(t, plain) < 2e-2, "the compiled ternary model must sample like the eager one"


def test_compat_merge_ternary_with_float_matches_dense_merge(host: Host):
    host.ok("fwd_merge")
    r = cm.MERGE_RATIO
    sd = {}
    for k, f in host.float_dev.items():
        p = k[: -len(".weight")] if k.endswith(".weight") else None
        if p and f"{p}.weight_scale" in host.tsd_dev:
            s = host.tsd_dev[f"{p}.weight_scale"]
            n, kk = f.shape
            t = TernaryWeight(host.tsd_dev[k], s, (n, kk), 0 if s.shape[1] == 1 else kk // s.shape[1])
            sd[k] = r * t.dequantize() + (1 - r) * f.float()
        else:
            sd[k] = r * host.tsd_dev[k].float() + (1 - r) * f.float()
    model = flux_from_state_dict(sd, dtype=torch.float32)
    with torch.no_grad():
        ref = model.forward_latent(**host.dev_inputs)
    out = host.forward_out("merge")
    assert _rel(out, ref) < 1e-3, "ModelMergeSimple(ternary, float) differs from the dense merge"
    assert _rel(host.forward_out("dev"), ref) > 1e-2


def test_compat_lora_stack_of_three_matches_dense_merge(host: Host):
    host.ok("fwd_lora3")
    deltas: dict[str, list] = {}
    for seed, s in zip(cm.LORA_STACK_SEEDS, cm.LORA_STACK_STRENGTHS):
        for layer, items in make_lora(host.dev_cfg, seed)[1].items():
            deltas.setdefault(layer, []).extend((s * d, row) for d, row in items)
    ref = reference_forward(host.tsd_dev, host.dev_inputs, deltas)
    assert _rel(host.forward_out("lora3"), ref) < 1e-4


def test_readme_compat_table_lists_every_row():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- compat-table -->")[1].split("<!-- /compat-table -->")[0]
    for node in cm.ROWS:
        line = next((ln for ln in table.splitlines() if ln.startswith(f"| {node} |")), None)
        assert line, f"README compat table lacks {node!r}"
        assert "works" in line or "clear error" in line, line
