"""Maintainer script: (re)writes the UI-format workflows in ``workflows/``.

    python tests/comfyui/make_workflows.py

The graphs are described here once (node type, position, widget values by name, links) and
written in the ComfyUI frontend's workflow format (nodes with ids/positions/sizes, ``links``
``[id, from_node, from_slot, to_node, to_slot, type]``, ``widgets_values`` in widget order), so
they open by drag and drop. The integration tests convert them back to API prompts with the
host's node definitions and run them on tiny models.
"""

from __future__ import annotations

import json
from pathlib import Path

from ternaryflux.core.defaults import DEFAULT_METHOD

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "workflows"

# node type -> (socket inputs [(name, type)], widget names in order, outputs [(name, type)])
SPECS: dict[str, tuple[list, list, list]] = {
    "TernaryFluxLoader": (
        [],
        ["unet_name", "kernel_backend", "activations", "compute_dtype"],
        [("MODEL", "MODEL")],
    ),
    "TernaryFluxTernarize": (
        [("model", "MODEL")],
        ["method", "group_size", "calibration", "max_calibration_samples"],
        [("MODEL", "MODEL")],
    ),
    "TernaryFluxSave": ([("model", "MODEL")], ["filename", "packing", "float_dtype", "overwrite"], []),
    "TernaryFluxRecordCalibration": (
        [("model", "MODEL")],
        ["filename_prefix", "every_n_calls", "max_samples", "max_mb", "store_dtype"],
        [("MODEL", "MODEL")],
    ),
    "TernaryFluxCalibrationPrompt": (
        [],
        ["index", "control_after_generate", "source", "custom_prompts"],
        [("prompt", "STRING"), ("index", "INT"), ("count", "INT")],
    ),
    "Note": ([], ["text"], []),  # frontend-only: never sent to the backend
    "UNETLoader": ([], ["unet_name", "weight_dtype"], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([], ["clip_name1", "clip_name2", "type", "device"], [("CLIP", "CLIP")]),
    "CLIPLoader": ([], ["clip_name", "type", "device"], [("CLIP", "CLIP")]),
    "EmptyFlux2LatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "Flux2Scheduler": ([], ["steps", "width", "height"], [("SIGMAS", "SIGMAS")]),
    "CFGGuider": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
        ["cfg"],
        [("GUIDER", "GUIDER")],
    ),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], ["guidance"], [("CONDITIONING", "CONDITIONING")]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING")], [], [("CONDITIONING", "CONDITIONING")]),
    "EmptySD3LatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "KSampler": (
        [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ],
        ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        [("LATENT", "LATENT")],
    ),
    "KSamplerAdvanced": (
        [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ],
        [
            "add_noise",
            "noise_seed",
            "control_after_generate",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ],
        [("LATENT", "LATENT")],
    ),
    "VAELoader": ([], ["vae_name"], [("VAE", "VAE")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "LoraLoaderModelOnly": ([("model", "MODEL")], ["lora_name", "strength_model"], [("MODEL", "MODEL")]),
    "ModelSamplingFlux": (
        [("model", "MODEL")],
        ["max_shift", "base_shift", "width", "height"],
        [("MODEL", "MODEL")],
    ),
    "BasicGuider": ([("model", "MODEL"), ("conditioning", "CONDITIONING")], [], [("GUIDER", "GUIDER")]),
    "RandomNoise": ([], ["noise_seed", "control_after_generate"], [("NOISE", "NOISE")]),
    "KSamplerSelect": ([], ["sampler_name"], [("SAMPLER", "SAMPLER")]),
    "BasicScheduler": ([("model", "MODEL")], ["scheduler", "steps", "denoise"], [("SIGMAS", "SIGMAS")]),
    "SamplerCustomAdvanced": (
        [
            ("noise", "NOISE"),
            ("guider", "GUIDER"),
            ("sampler", "SAMPLER"),
            ("sigmas", "SIGMAS"),
            ("latent_image", "LATENT"),
        ],
        [],
        [("output", "LATENT"), ("denoised_output", "LATENT")],
    ),
}


NOTE_TYPES = {"Note", "MarkdownNote"}


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, ntype: str, pos: tuple[int, int], title: str | None = None, **widgets) -> int:
        sockets, wnames, outs = SPECS[ntype]
        missing = [w for w in wnames if w not in widgets]
        if missing:
            raise KeyError(f"{ntype}: missing widget values {missing}")
        nid = len(self.nodes) + 1
        node = {
            "id": nid,
            "type": ntype,
            "pos": list(pos),
            "size": [320, 60 + 26 * (len(sockets) + len(wnames) + len(outs))],
            "flags": {},
            "order": nid - 1,
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in sockets],
            "outputs": [
                {"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outs)
            ],
            "properties": {"Node name for S&R": ntype},
            "widgets_values": [widgets[w] for w in wnames],
        }
        if ntype in NOTE_TYPES:  # what the frontend writes for a (yellow) note
            node["properties"] = {}
            node["color"], node["bgcolor"] = "#432", "#653"
        if title:
            node["title"] = title
        self.nodes.append(node)
        return nid

    def widget_to_input(self, nid: int, name: str, typ: str) -> None:
        """Turn widget ``name`` of node ``nid`` into a linkable input, as the frontend writes it: an
        ``inputs`` entry with ``"widget": {"name": ...}`` after the sockets; the widget keeps its
        slot in ``widgets_values`` (the backend ignores that value while the input is linked)."""
        node = self.nodes[nid - 1]
        if name not in SPECS[node["type"]][1]:
            raise KeyError(f"{node['type']} has no widget {name!r}")
        node["inputs"].append({"name": name, "type": typ, "widget": {"name": name}, "link": None})

    def link(self, src: int, src_slot: int, dst: int, dst_input: str) -> None:
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = [i["name"] for i in d["inputs"]].index(dst_input)
        typ = s["outputs"][src_slot]["type"]
        if d["inputs"][slot]["type"] != typ:
            raise TypeError(
                f"{s['type']}[{src_slot}] {typ} -> {d['type']}.{dst_input} {d['inputs'][slot]['type']}"
            )
        d["inputs"][slot]["link"] = lid
        s["outputs"][src_slot]["links"].append(lid)
        self.links.append([lid, src, src_slot, dst, slot, typ])

    def to_json(self, title: str) -> dict:
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "ternaryflux": {"title": title}},
            "version": 0.4,
        }


PROMPT = "a photo of a red fox sitting in fresh snow, morning light, detailed fur"


def text_branch(g: Graph, clip: int, text: str, y: int, guidance: float = 3.5) -> tuple[int, int]:
    enc = g.add("CLIPTextEncode", (420, y), text=text)
    g.link(clip, 0, enc, "clip")
    fg = g.add("FluxGuidance", (780, y), guidance=guidance)
    g.link(enc, 0, fg, "conditioning")
    neg = g.add("ConditioningZeroOut", (780, y + 120))
    g.link(enc, 0, neg, "conditioning")
    return fg, neg


def encoders(g: Graph, y: int = 200) -> tuple[int, int]:
    clip = g.add(
        "DualCLIPLoader",
        (40, y),
        clip_name1="t5xxl_fp16.safetensors",
        clip_name2="clip_l.safetensors",
        type="flux",
        device="default",
    )
    vae = g.add("VAELoader", (40, y + 400), vae_name="ae.safetensors")
    return clip, vae


def decode_save(g: Graph, latent: int, vae: int, x: int, y: int, prefix: str, slot: int = 0) -> None:
    dec = g.add("VAEDecode", (x, y))
    g.link(latent, slot, dec, "samples")
    g.link(vae, 0, dec, "vae")
    save = g.add("SaveImage", (x + 300, y), filename_prefix=prefix)
    g.link(dec, 0, save, "images")


def ternary_loader(g: Graph, unet_name: str) -> int:
    """Load Ternary FLUX with the defaults a shared workflow should carry."""
    return g.add(
        "TernaryFluxLoader",
        (40, 40),
        unet_name=unet_name,
        kernel_backend="auto",
        activations="bf16",
        compute_dtype="default",
    )


def txt2img() -> dict:
    g = Graph()
    model = ternary_loader(g, "flux1-dev-ternary.safetensors")
    clip, vae = encoders(g)
    pos, neg = text_branch(g, clip, PROMPT, 200)
    latent = g.add("EmptySD3LatentImage", (780, 460), width=1024, height=1024, batch_size=1)
    ks = g.add(
        "KSampler",
        (1140, 120),
        seed=42,
        control_after_generate="fixed",
        steps=20,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=1.0,
    )
    g.link(model, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    decode_save(g, ks, vae, 1500, 120, "ternaryflux")
    return g.to_json("Ternary FLUX txt2img (KSampler)")


def txt2img_lora() -> dict:
    g = Graph()
    model = ternary_loader(g, "flux1-dev-ternary.safetensors")
    lora = g.add("LoraLoaderModelOnly", (420, 40), lora_name="my_flux_lora.safetensors", strength_model=1.0)
    g.link(model, 0, lora, "model")
    msf = g.add("ModelSamplingFlux", (780, 40), max_shift=1.15, base_shift=0.5, width=1024, height=1024)
    g.link(lora, 0, msf, "model")
    clip, vae = encoders(g)
    pos, _ = text_branch(g, clip, PROMPT + ", in the style of the LoRA", 200)
    guider = g.add("BasicGuider", (1140, 40))
    g.link(msf, 0, guider, "model")
    g.link(pos, 0, guider, "conditioning")
    noise = g.add("RandomNoise", (1140, 200), noise_seed=42, control_after_generate="fixed")
    sampler = g.add("KSamplerSelect", (1140, 320), sampler_name="euler")
    sched = g.add("BasicScheduler", (1140, 420), scheduler="simple", steps=20, denoise=1.0)
    g.link(msf, 0, sched, "model")
    latent = g.add("EmptySD3LatentImage", (780, 460), width=1024, height=1024, batch_size=1)
    sca = g.add("SamplerCustomAdvanced", (1500, 40))
    g.link(noise, 0, sca, "noise")
    g.link(guider, 0, sca, "guider")
    g.link(sampler, 0, sca, "sampler")
    g.link(sched, 0, sca, "sigmas")
    g.link(latent, 0, sca, "latent_image")
    decode_save(g, sca, vae, 1860, 40, "ternaryflux_lora")
    return g.to_json("Ternary FLUX txt2img with a LoRA (LoraLoaderModelOnly, SamplerCustomAdvanced)")


def ternarize_and_save() -> dict:
    g = Graph()
    src = g.add("UNETLoader", (40, 40), unet_name="flux1-dev.safetensors", weight_dtype="default")
    tern = g.add(
        "TernaryFluxTernarize",
        (420, 40),
        method=DEFAULT_METHOD,
        group_size="per-channel",
        calibration="none",
        max_calibration_samples=16,
    )
    g.link(src, 0, tern, "model")
    save = g.add(
        "TernaryFluxSave",
        (780, 40),
        filename="flux1-dev-ternary",
        packing="2bit",
        float_dtype="bf16",
        overwrite=False,
    )
    g.link(tern, 0, save, "model")
    clip, vae = encoders(g, 300)
    pos, neg = text_branch(g, clip, PROMPT, 300)
    latent = g.add("EmptySD3LatentImage", (780, 560), width=1024, height=1024, batch_size=1)
    ks = g.add(
        "KSamplerAdvanced",
        (1140, 220),
        add_noise="enable",
        noise_seed=42,
        control_after_generate="fixed",
        steps=20,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        start_at_step=0,
        end_at_step=10000,
        return_with_leftover_noise="disable",
    )
    g.link(tern, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    decode_save(g, ks, vae, 1500, 220, "ternaryflux_fresh")
    return g.to_json("Ternarize a FLUX checkpoint in the graph, save it, and sample from it")


RECORD_NOTE = """Record calibration data over many prompts

1. Pick the float FLUX in "Load Diffusion Model" and the text encoders / VAE as usual.
2. "TernaryFLUX Calibration Prompt" gives prompt number `index` of the built-in list (the ~1,100
   prompts shipped with the pack), of a .txt file in models/ternaryflux_calibration, or of the lines typed
   into custom_prompts. Its `index` is set to *increment* after every queued run.
3. Set the Queue batch count (e.g. 100) and press Queue once: each run records ONE prompt (every
   5th transformer call of its 20 steps, 4 samples, about 18 MB at 1024x1024) into a new file
   output/ternaryflux_calibration/flux_calibration_NNNNN.safetensors.
4. Quantize with all recorded files (a folder = every file in it), from the ComfyUI folder:
   ternaryflux quantize models/diffusion_models/flux1-dev.safetensors --method calibrated --calibration output/ternaryflux_calibration -o models/diffusion_models/flux1-dev-ternary.safetensors
   (no `ternaryflux` command after a Manager install? From ComfyUI/custom_nodes, with ComfyUI's
   Python: python -m ComfyUI-TernaryFLUX quantize ..., paths relative to custom_nodes.)
   Or pick one file in the Ternarize FLUX node, method "calibrated".
"""


def record_calibration() -> dict:
    g = Graph()
    src = g.add("UNETLoader", (40, 40), unet_name="flux1-dev.safetensors", weight_dtype="default")
    rec = g.add(
        "TernaryFluxRecordCalibration",
        (420, 40),
        filename_prefix="flux_calibration",
        every_n_calls=5,
        max_samples=64,
        max_mb=512,
        store_dtype="bf16",
    )
    g.link(src, 0, rec, "model")
    clip, vae = encoders(g, 300)
    prompt = g.add(
        "TernaryFluxCalibrationPrompt",
        (40, 520),
        index=0,
        control_after_generate="increment",
        source="built-in",
        custom_prompts="",
    )
    enc = g.add("CLIPTextEncode", (420, 300), text="")
    g.widget_to_input(enc, "text", "STRING")
    g.link(clip, 0, enc, "clip")
    g.link(prompt, 0, enc, "text")
    fg = g.add("FluxGuidance", (780, 300), guidance=3.5)
    g.link(enc, 0, fg, "conditioning")
    neg = g.add("ConditioningZeroOut", (780, 420))
    g.link(enc, 0, neg, "conditioning")
    latent = g.add("EmptySD3LatentImage", (780, 540), width=1024, height=1024, batch_size=1)
    ks = g.add(
        "KSampler",
        (1140, 40),
        seed=100,
        control_after_generate="increment",
        steps=20,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=1.0,
    )
    g.link(rec, 0, ks, "model")
    g.link(fg, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    decode_save(g, ks, vae, 1500, 40, "calibration_preview")
    note = g.add("Note", (1140, 420), title="How to record calibration data", text=RECORD_NOTE)
    g.nodes[note - 1]["size"] = [640, 300]
    return g.to_json(
        "Record calibration data: one prompt per queued run (Calibration Prompt -> Record Calibration)"
    )


FLUX2_NOTE = """FLUX.2 [klein] / Bonsai Image 4B, ternary

1. Make the checkpoint once (README, "FLUX.2 and Bonsai Image"): `ternaryflux import` a Bonsai
   Image 4B download, or `ternaryflux quantize` a FLUX.2 [klein] 4B file, into
   models/diffusion_models/bonsai-4b-ternary.safetensors.
2. Text encoder: the stock CLIPLoader, type flux2, with the Qwen3 4B file ComfyUI's FLUX.2 [klein]
   4B templates use (models/text_encoders/qwen_3_4b.safetensors); VAE: the FLUX.2 VAE
   (models/vae/flux2-vae.safetensors).
3. Bonsai's recommendation: 4 steps, guidance (CFG) 1.0. [klein] has no distilled-guidance input,
   so there is no FluxGuidance node; at CFG 1.0 the negative prompt is not evaluated.
4. A LoRA: put LoraLoaderModelOnly between Load Ternary FLUX and CFG Guider (FLUX.2 LoRAs in
   BFL, kohya or diffusers `transformer.` names load as they do on the float model).
"""


def flux2_klein_txt2img() -> dict:
    g = Graph()
    model = ternary_loader(g, "bonsai-4b-ternary.safetensors")
    clip = g.add("CLIPLoader", (40, 260), clip_name="qwen_3_4b.safetensors", type="flux2", device="default")
    vae = g.add("VAELoader", (40, 460), vae_name="flux2-vae.safetensors")
    enc = g.add("CLIPTextEncode", (420, 200), text=PROMPT)
    g.link(clip, 0, enc, "clip")
    neg = g.add("ConditioningZeroOut", (780, 320))
    g.link(enc, 0, neg, "conditioning")
    guider = g.add("CFGGuider", (1140, 40), cfg=1.0)
    g.link(model, 0, guider, "model")
    g.link(enc, 0, guider, "positive")
    g.link(neg, 0, guider, "negative")
    noise = g.add("RandomNoise", (1140, 200), noise_seed=42, control_after_generate="fixed")
    sampler = g.add("KSamplerSelect", (1140, 320), sampler_name="euler")
    sched = g.add("Flux2Scheduler", (1140, 420), steps=4, width=1024, height=1024)
    latent = g.add("EmptyFlux2LatentImage", (780, 460), width=1024, height=1024, batch_size=1)
    sca = g.add("SamplerCustomAdvanced", (1500, 40))
    g.link(noise, 0, sca, "noise")
    g.link(guider, 0, sca, "guider")
    g.link(sampler, 0, sca, "sampler")
    g.link(sched, 0, sca, "sigmas")
    g.link(latent, 0, sca, "latent_image")
    decode_save(g, sca, vae, 1860, 40, "ternaryflux_flux2")
    note = g.add("Note", (420, 520), title="FLUX.2 [klein] / Bonsai Image", text=FLUX2_NOTE)
    g.nodes[note - 1]["size"] = [640, 300]
    return g.to_json("Ternary FLUX.2 [klein] txt2img (Bonsai Image 4B: 4 steps, CFG 1.0)")


WORKFLOWS = {
    "ternaryflux_txt2img.json": txt2img,
    "ternaryflux_txt2img_lora.json": txt2img_lora,
    "ternaryflux_ternarize_and_save.json": ternarize_and_save,
    "ternaryflux_record_calibration.json": record_calibration,
    "ternaryflux_flux2_klein_txt2img.json": flux2_klein_txt2img,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, fn in WORKFLOWS.items():
        (OUT / name).write_text(json.dumps(fn(), indent=1) + "\n")


if __name__ == "__main__":
    main()
