"""FLUX.2 in a REAL ComfyUI host, all jobs in one host process:

* Load Ternary FLUX: the tool's FLUX.2 output (policies ``blocks`` and ``blocks+modulation``,
  group 128) and a Bonsai import (synthetic unpacked file) load into ComfyUI's own Flux2 model
  through the pack's ternary ops; the forward equals the library's ternary FLUX.2;
* LoRA through the stock LoraLoaderModelOnly on the ternary FLUX.2, with keys in every naming
  ComfyUI maps for FLUX.2 (kohya ``lora_unet_``, diffusers ``transformer.`` incl. a q/k/v slice and
  FLUX.2's ``ff.linear_in`` / ``to_qkv_mlp_proj`` / ``to_out``, ComfyUI's ``diffusion_model.``);
  equal to the library forward with the deltas merged densely;
* Ternarize FLUX on a float FLUX.2 from the stock UNETLoader, Save Ternary FLUX, and the saved
  file back through Load Ternary FLUX, against the library's ternarization of the same weights;
* the shipped FLUX.2 [klein] workflow with a random ``taef2`` VAE (VAEDecode → SaveImage kept),
  ReferenceLatent (FLUX.2 edit conditioning) on the ternary model, and what the stock CLIPLoader
  accepts as a FLUX.2 text encoder.

Needs ``COMFYUI_PATH`` (skips otherwise)."""

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
if not COMFYUI_PATH or not Path(COMFYUI_PATH, "main.py").is_file():
    pytest.skip("ComfyUI integration tests need COMFYUI_PATH (and COMFYUI_PYTHON)", allow_module_level=True)

from ternaryflux.core.checkpoint import load_checkpoint  # noqa: E402
from ternaryflux.core.fixtures import make_flux_inputs, make_flux_state_dict, tiny_flux2_config  # noqa: E402
from ternaryflux.core.flux_layout import FLUX2_VARIANTS  # noqa: E402
from ternaryflux.core.flux_model import flux_from_state_dict  # noqa: E402
from ternaryflux.core.ternarize import ternarize  # noqa: E402
from ternaryflux.quant.algorithms import TernaryConfig  # noqa: E402
from ternaryflux.quant.flux import quantize_flux_tensors  # noqa: E402
from ternaryflux.quant.importers import import_bonsai_unpacked  # noqa: E402

pytestmark = pytest.mark.comfyui
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_flux2_import import ternary_reference, write_diffusers  # noqa: E402

sys.path.insert(0, str(HERE))
from test_comfyui_integration import reference_forward  # noqa: E402

LOADER = {"kernel_backend": "auto", "activations": "bf16", "compute_dtype": "default"}
CFG = tiny_flux2_config(hidden=256, depth=2, depth_single=2, context_in_dim=128)
FILES = {
    "blocks": "tiny_flux2_blocks.safetensors",
    "modulation": "tiny_flux2_mod.safetensors",
    "bonsai": "tiny_bonsai_import.safetensors",
}
FLOAT = "tiny_flux2_float.safetensors"
SAVED = "tiny_flux2_saved"
LORA = "tiny_flux2_lora.safetensors"
RANK, ALPHA = 4, 8.0
WF = ROOT / "workflows" / "ternaryflux_flux2_klein_txt2img.json"
IMG_W, IMG_H = 160, 96  # FLUX.2 latent: 128 channels at 1/16 -> [B, 128, 6, 10]
# the LoRA file: (file key prefix, adapter kind, BFL layer, row offset of a q/k/v slice or None)
LORA_KEYS = [
    ("lora_unet_double_blocks_0_img_attn_qkv", "kohya", "double_blocks.0.img_attn.qkv", None),
    ("transformer.transformer_blocks.0.attn.to_k", "peft", "double_blocks.0.img_attn.qkv", 1),
    ("transformer.transformer_blocks.0.ff.linear_in", "peft", "double_blocks.0.img_mlp.0", None),
    ("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", "peft", "single_blocks.0.linear1", None),
    ("transformer.single_transformer_blocks.1.attn.to_out", "peft", "single_blocks.1.linear2", None),
    ("diffusion_model.double_blocks.1.txt_attn.proj", "peft", "double_blocks.1.txt_attn.proj", None),
    ("lora_unet_double_stream_modulation_img_lin", "kohya", "double_stream_modulation_img.lin", None),
    ("lora_unet_double_blocks_1_img_mlp_2", "diff", "double_blocks.1.img_mlp.2", None),
]
N_TERNARY = 2 * 8 + 2 * 2  # "blocks": 8 Linears per double block, 2 per single block


def make_flux2_lora(seed: int = 11) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """A FLUX.2 LoRA file in the key styles ComfyUI maps, and the dense deltas it stands for
    (``{layer: [(delta [N, K] or a row block, row offset or None)]}``), built independently of
    ComfyUI's key map from the BFL shapes."""
    g = torch.Generator().manual_seed(seed)
    shapes = {k[:-7]: v.shape for k, v in make_flux_state_dict(CFG, 0, dtype=torch.float32).items()}
    h = CFG.hidden_size
    lora, deltas = {}, {}
    for key, kind, layer, slot in LORA_KEYS:
        n, k = shapes[layer]
        if slot is not None:
            n = h
        if kind == "diff":
            d = 0.05 * torch.randn(n, k, generator=g)
            lora[f"{key}.diff"] = d
        else:
            up = 0.15 * torch.randn(n, RANK, generator=g)
            down = 0.15 * torch.randn(RANK, k, generator=g)
            if kind == "kohya":
                lora[f"{key}.lora_up.weight"], lora[f"{key}.lora_down.weight"] = up, down
                lora[f"{key}.alpha"] = torch.tensor(ALPHA)
                d = (ALPHA / RANK) * up @ down
            else:  # peft / diffusers: lora_B @ lora_A, no alpha = scale 1
                lora[f"{key}.lora_B.weight"], lora[f"{key}.lora_A.weight"] = up, down
                d = up @ down
        deltas.setdefault(layer, []).append((d, None if slot is None else slot * h))
    return lora, deltas


def _n(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _loader(fname: str) -> dict:
    return _n("TernaryFluxLoader", unet_name=fname, **LOADER)


def _fwd(
    tag: str, nodes: dict, base: Path, inputs: Path, model_node: str = "1", mode: str = "normal"
) -> dict:
    """Run the MODEL of ``model_node`` once on ``inputs`` (TFTestForward) and record its facts."""
    p = dict(nodes)
    out = str(base / f"fwd_{tag}.safetensors")
    p["900"] = _n("TFTestForward", model=[model_node, 0], inputs_path=str(inputs), output_path=out, mode=mode)
    p["901"] = _n("TFTestModelInfo", model=[model_node, 0], output_path=str(base / f"info_{tag}.json"))
    return {"name": f"fwd_{tag}", "prompt": p}


def _job(tag: str, fname: str, base: Path, inputs: Path) -> dict:
    return _fwd(tag, {"1": _loader(fname)}, base, inputs)


def _sample(name: str, reference: bool) -> dict:
    """KSampler (2 steps, CFG 1) on the ternary FLUX.2; with ``reference``, the positive
    conditioning carries a reference latent (ReferenceLatent, VAEEncode of an image with taef2)."""
    p = {
        "1": _loader(FILES["blocks"]),
        "3": _n("TFTestConditioning", seed=1, tokens=8, batch=1, dim=CFG.context_in_dim),
        "4": _n("ConditioningZeroOut", conditioning=["3", 0]),
        "5": _n("EmptyFlux2LatentImage", width=IMG_W, height=IMG_H, batch_size=1),
        "10": _n(
            "KSampler",
            model=["1", 0],
            seed=0,
            steps=2,
            cfg=1.0,
            sampler_name="euler",
            scheduler="simple",
            positive=["3", 0],
            negative=["4", 0],
            latent_image=["5", 0],
            denoise=1.0,
        ),
        "11": _n("SaveLatent", samples=["10", 0], filename_prefix=f"flux2/{name}"),
    }
    if reference:
        p["6"] = _n("EmptyImage", width=IMG_W, height=IMG_H, batch_size=1, color=0x8040C0)
        p["7"] = _n("VAELoader", vae_name="taef2")
        p["8"] = _n("VAEEncode", pixels=["6", 0], vae=["7", 0])
        p["9"] = _n("ReferenceLatent", conditioning=["3", 0], latent=["8", 0])
        p["10"]["inputs"]["positive"] = ["9", 0]
    return {"name": name, "prompt": p}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfybase_flux2")
    dm = base / "models" / "diffusion_models"
    for d in (dm, base / "custom_nodes", base / "models" / "loras", base / "models" / "vae_approx"):
        d.mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "ComfyUI-TernaryFLUX").symlink_to(ROOT, target_is_directory=True)
    (base / "custom_nodes" / "tf_test_nodes").symlink_to(HERE / "test_nodes_pack", target_is_directory=True)
    sd = make_flux_state_dict(CFG, seed=7, structured=True)
    quantize_flux_tensors(
        sd, dm / FILES["blocks"], TernaryConfig(method="absmean", group_size=128), device="cpu"
    )
    quantize_flux_tensors(
        sd,
        dm / FILES["modulation"],
        TernaryConfig(method="twn", group_size=128),
        device="cpu",
        policy="blocks+modulation",
    )
    bonsai_bfl, _ = ternary_reference()
    import_bonsai_unpacked(write_diffusers(base / "bonsai_unpacked", bonsai_bfl), dm / FILES["bonsai"])
    inputs = make_flux_inputs(CFG, batch=2, height=6, width=5, txt_len=7, seed=8)
    inp = base / "inputs.safetensors"
    save_file({k: v for k, v in inputs.items() if v is not None}, str(inp))
    save_file(sd, str(dm / FLOAT))
    save_file(make_flux2_lora()[0], str(base / "models" / "loras" / LORA))
    jobs = [
        {"name": "node_list", "node_list": True},
        {
            "name": "taef2",
            "call": "host_fixtures:make_taef2",
            "kwargs": {"out_dir": str(base / "models" / "vae_approx")},
        },
        {"name": "te_facts", "call": "host_fixtures:flux2_text_encoder_facts"},
    ]
    jobs += [_job(tag, f, base, inp) for tag, f in FILES.items()]
    # LoRA through the stock loader: strength 1, 0.5, and with every module offloaded (low VRAM)
    tl = _loader(FILES["blocks"])
    for tag, strength, mode in (
        ("lora", 1.0, "normal"),
        ("lora_half", 0.5, "normal"),
        ("lora_lowvram", 1.0, "lowvram"),
    ):
        lora = _n("LoraLoaderModelOnly", model=["1", 0], lora_name=LORA, strength_model=strength)
        jobs.append(_fwd(tag, {"1": tl, "2": lora}, base, inp, model_node="2", mode=mode))
    jobs.append(_fwd("after_lora", {"1": tl}, base, inp))  # the LoRA must not stick to the cached model
    # Ternarize FLUX on a float FLUX.2 from the stock loader, saved, and the file loaded back
    tern = {
        "1": _n("UNETLoader", unet_name=FLOAT, weight_dtype="default"),
        "2": _n(
            "TernaryFluxTernarize",
            model=["1", 0],
            method="twn",
            group_size="128",
            calibration="none",
            max_calibration_samples=16,
        ),
        "3": _n(
            "TernaryFluxSave",
            model=["2", 0],
            filename=SAVED,
            packing="2bit",
            float_dtype="keep",
            overwrite=False,
        ),
    }
    jobs.append(_fwd("ternarized", tern, base, inp, model_node="2"))
    jobs.append(_fwd("saved", {"1": _loader(f"{SAVED}.safetensors")}, base, inp))
    # the shipped FLUX.2 workflow: text encoder swapped for seeded conditioning, decoded with taef2
    wf_set = {
        "TernaryFluxLoader": {"unet_name": FILES["blocks"]},
        "TFTestConditioning": {"dim": CFG.context_in_dim},
        "EmptyFlux2LatentImage": {"width": IMG_W, "height": IMG_H, "batch_size": 2},
        "Flux2Scheduler": {"steps": 2, "width": IMG_W, "height": IMG_H},
        "VAELoader": {"vae_name": "taef2"},
    }
    jobs.append({"name": "workflow", "workflow": str(WF), "set": wf_set, "keep_decode": True})
    jobs += [_sample("plain", False), _sample("reference", True)]
    (base / "jobs.json").write_text(json.dumps(jobs))
    out = base / "results.json"
    t0 = time.time()
    proc = subprocess.run(
        [COMFYUI_PYTHON, str(HERE / "host_driver.py"), "--comfy", COMFYUI_PATH, "--base", str(base)]
        + ["--jobs", str(base / "jobs.json"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    (base / "host.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and out.exists(), (proc.stdout + proc.stderr)[-4000:]
    return base, json.loads(out.read_text()), inputs, time.time() - t0


@pytest.mark.parametrize("tag", list(FILES))
def test_flux2_ternary_checkpoint_runs_in_comfyui_flux2(run, tag):
    base, results, inputs, _ = run
    r = results[f"fwd_{tag}"]
    assert r.get("valid", True) and r["success"], r.get("errors") or r.get("node_errors")
    got = load_file(str(base / f"fwd_{tag}.safetensors"))["out"]
    ck = load_checkpoint(base / "models" / "diffusion_models" / FILES[tag])
    tsd = ck.state_dict
    with safe_open(str(base / f"fwd_{tag}.safetensors"), "pt") as f:
        meta = f.metadata()
    # every ternary layer ran on the packed codes (no dense fallback)
    assert meta["kernel_layers"] == str(len(ck.ternary_layers)) and meta["exact_layers"] == "0", meta
    with torch.no_grad():
        ref = flux_from_state_dict(tsd, dtype=torch.float32).forward_latent(**inputs)
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"FLUX.2 {tag}: ComfyUI host vs library rel {rel:.3g}")
    assert rel < 1e-4, rel


def _ok(results: dict, name: str) -> dict:
    r = results[name]
    assert "driver_error" not in r, r["driver_error"]
    assert r.get("valid", True), r.get("node_errors") or r.get("validation_error")
    assert r["success"], r.get("errors")
    return r


def _out(base: Path, tag: str) -> tuple[torch.Tensor, dict, dict]:
    path = base / f"fwd_{tag}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path))["out"], meta, json.loads((base / f"info_{tag}.json").read_text())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _latent(base: Path, results: dict, name: str) -> torch.Tensor:
    (item,) = [i for o in _ok(results, name)["outputs"].values() for i in o.get("latents", [])]
    return load_file(str(base / "output" / item.get("subfolder", "") / item["filename"]))["latent_tensor"]


@pytest.mark.parametrize("tag, strength", [("lora", 1.0), ("lora_half", 0.5), ("lora_lowvram", 1.0)])
def test_flux2_lora_through_stock_loader_matches_dense_merge(run, tag, strength):
    """Every FLUX.2 key style is applied (7 patched weights, none dropped), ternary layers take the
    low-rank path (the diff patch the exact one), and the output equals the library FLUX.2 with
    the deltas merged into the dequantized weights."""
    base, results, inputs, _ = run
    _ok(results, f"fwd_{tag}")
    out, meta, info = _out(base, tag)
    tsd = load_checkpoint(base / "models" / "diffusion_models" / FILES["blocks"]).state_dict
    _, deltas = make_flux2_lora()
    ref = reference_forward(tsd, inputs, deltas, strength=strength)
    plain = reference_forward(tsd, inputs)
    assert info["patcher_class"] == "TernaryModelPatcher" and not info["is_dynamic"]
    assert info["patches"] == len(deltas) == 7, info  # one patched weight per layer: nothing dropped
    counts = tuple(int(meta[f"{k}_layers"]) for k in ("kernel", "lowrank", "exact"))
    assert counts == (N_TERNARY - 6, 5, 1), meta
    if tag == "lora_lowvram":
        assert meta["model_lowvram"] == "True" and int(meta["lowvram_patches"]) >= 6, meta
    print(
        f"FLUX.2 {tag}: host vs dense-merged reference {_rel(out, ref):.3g}, LoRA effect {_rel(plain, ref):.3g}"
    )
    assert _rel(out, ref) < 1e-4
    assert _rel(plain, ref) > 0.05, "the test LoRA must change the output clearly"


def test_flux2_lora_does_not_stick(run):
    base, results, _, _ = run
    _ok(results, "fwd_after_lora")
    assert _rel(_out(base, "after_lora")[0], load_file(str(base / "fwd_blocks.safetensors"))["out"]) < 1e-6


def test_flux2_ternarize_node_equals_library_and_saved_file_loads_back(run):
    base, results, inputs, _ = run
    _ok(results, "fwd_ternarized")
    _ok(results, "fwd_saved")
    saved = load_checkpoint(base / "models" / "diffusion_models" / f"{SAVED}.safetensors")
    md = saved.metadata
    assert md.architecture == "flux2" and md.ternary_policy == "blocks" and md.group_size == 128
    assert md.method == "twn" and md.source_name == FLOAT
    assert len(saved.ternary_layers) == N_TERNARY
    float_sd = make_flux_state_dict(CFG, seed=7, structured=True)
    for p in saved.ternary_layers:  # the library's TWN on the same float weights
        ref = ternarize(float_sd[f"{p}.weight"], "twn", 128)
        assert torch.equal(saved.state_dict[f"{p}.weight"], ref.packed), p
        torch.testing.assert_close(saved.state_dict[f"{p}.weight_scale"], ref.scale)
    out, meta, info = _out(base, "ternarized")
    assert info["ternary_layers"] == N_TERNARY and meta["exact_layers"] == "0"
    ref = reference_forward(saved.state_dict, inputs)
    assert _rel(out, ref) < 1e-4
    back, _, _ = _out(base, "saved")
    assert _rel(back, out) < 1e-5


def test_flux2_workflow_samples_and_decodes_with_taef2(run):
    base, results, _, _ = run
    r = _ok(results, "workflow")
    classes = {n["class_type"] for n in r["prompt"].values()}
    assert {"Flux2Scheduler", "EmptyFlux2LatentImage", "CFGGuider", "VAEDecode", "SaveImage"} <= classes
    images = [i for o in r["outputs"].values() for i in o.get("images", [])]
    assert len(images) == 2  # batch 2
    from PIL import Image

    for item in images:
        path = base / "output" / item.get("subfolder", "") / item["filename"]
        assert item["filename"].startswith("ternaryflux_flux2")
        with Image.open(path) as im:  # taef2 decodes the 1/16 latent back to the requested size
            assert im.size == (IMG_W, IMG_H), im.size
            assert len(torch.tensor(list(im.convert("L").tobytes())).unique()) > 8, (
                "a flat image: nothing was decoded"
            )


def test_flux2_reference_latent_reaches_the_ternary_model(run):
    base, results, _, _ = run
    plain, ref = _latent(base, results, "plain"), _latent(base, results, "reference")
    assert plain.shape == ref.shape == (1, 128, IMG_H // 16, IMG_W // 16)
    assert torch.isfinite(ref).all() and ref.abs().mean() > 0.05
    assert _rel(ref, plain) > 1e-3, "ReferenceLatent had no effect on the ternary FLUX.2"


def test_flux2_text_encoder_the_stock_cliploader_accepts(run):
    """No tiny FLUX.2 text encoder exists for the stock CLIPLoader: ComfyUI routes a Qwen3 file to
    FLUX.2 [klein] only at hidden 2560 (4B) or 4096 (8B), and the 4B encoder's config is fixed
    (36 layers, 151,936-token vocabulary): ~4 B parameters. Its 3-layer tap gives the context
    width our klein-4b config encodes."""
    _, results, _, _ = run
    facts = _ok(results, "te_facts")["result"]
    det, q = facts["detected"], facts["qwen3_4b"]
    assert det["2560"] == "QWEN3_4B" and det["4096"] == "QWEN3_8B"
    assert not {det[h] for h in ("64", "256", "1024", "2048")} & {"QWEN3_4B", "QWEN3_8B"}
    assert q["num_hidden_layers"] == 36 and q["vocab_size"] == 151936 and q["params"] > 3.5e9
    assert q["context_dim"] == FLUX2_VARIANTS["klein-4b"].context_in_dim == 7680
