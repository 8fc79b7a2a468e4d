"""Ternarize FLUX: a float FLUX MODEL (stock Load Diffusion Model, bf16/fp16/fp8, dev or schnell)
→ a new ternary MODEL. The input MODEL is not modified: the float weights are read (with any
weight patches on it, e.g. a LoRA, merged first), ternarized one layer at a time into a new
state dict, and a new diffusion model is built from it with packed layers.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable

import comfy.lora
import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..core.calibration_data import read_calibration
from ..core.checkpoint import TernaryMetadata
from ..core.flux_layout import is_ternary_layer
from ..core.ternarize import ternarize
from ..core.ternary_weight import TernaryWeight
from .act_aware import importance_weighted_ternarize
from .model_build import KernelOptions, build_ternary_model, is_ternary_model

log = logging.getLogger(__name__)

CALIBRATION_FOLDER = "ternaryflux_calibration"
METHODS = ("absmean", "twn", "calibrated")
GROUP_SIZES = {"per-channel": 0, "128": 128, "256": 256}
NO_CALIBRATION = "none"


def register_calibration_folder() -> None:
    """``ternaryflux_calibration`` model folder: models/ternaryflux_calibration and output/ternaryflux_calibration."""
    for base in (folder_paths.models_dir, folder_paths.get_output_directory()):
        path = os.path.join(base, CALIBRATION_FOLDER)
        if path not in folder_paths.folder_names_and_paths.get(CALIBRATION_FOLDER, ([], set()))[0]:
            folder_paths.add_model_folder_path(CALIBRATION_FOLDER, path)


def calibration_names() -> list[str]:
    register_calibration_folder()
    return [NO_CALIBRATION] + [
        n for n in folder_paths.get_filename_list(CALIBRATION_FOLDER) if n.endswith(".safetensors")
    ]


def _external_calibrated() -> Callable | None:
    """The offline tool's calibrated per-layer quantizer, if this install has one."""
    try:
        mod = importlib.import_module("..quantize_tool.calibrated", __package__)
    except ImportError:
        return None
    return getattr(mod, "quantize_linear_calibrated", None)


def _to_float(t: torch.Tensor) -> torch.Tensor:
    if type(t).__name__ == "QuantizedTensor" or hasattr(t, "params") and hasattr(t, "layout_type"):
        t = t.dequantize()
    return t.detach().to(torch.float32)


def _bfl_key(key: str) -> str:
    # ComfyUI renames the BFL RMSNorm "*_norm.scale" to "*_norm.weight" on load; undo it
    return key[: -len(".weight")] + ".scale" if key.endswith("_norm.weight") else key


def _storage(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if type(t).__name__ == "QuantizedTensor" or t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return _to_float(t).to(torch.bfloat16).cpu()
    return t.cpu().clone()


@torch.no_grad()
def collect_activation_stats(
    model, samples, layer_paths: list[str], max_samples: int
) -> dict[str, torch.Tensor]:
    """Mean squared input activation per channel of each layer in ``layer_paths``, running the
    (float, patched) diffusion model of ``model`` on up to ``max_samples`` calibration samples."""
    comfy.model_management.load_models_gpu([model])
    dm = model.model.diffusion_model
    dev = model.load_device
    dtype = (
        model.model.get_dtype_inference()
        if hasattr(model.model, "get_dtype_inference")
        else model.model.get_dtype()
    )
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(path: str):
        def hook(_module, args):
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            s = x.pow(2).sum(0)
            sums[path] = sums[path] + s if path in sums else s
            counts[path] = counts.get(path, 0) + x.shape[0]

        return hook

    handles = [dm.get_submodule(p).register_forward_pre_hook(hook_for(p)) for p in layer_paths]
    try:
        for s in samples[:max_samples]:
            inp = s.as_inputs(device=dev, dtype=dtype)
            dm(
                inp["x"],
                inp["timestep"].float(),
                inp["context"],
                y=inp["y"],
                guidance=inp["guidance"],
                transformer_options={},
            )
    finally:
        for h in handles:
            h.remove()
    missing = [p for p in layer_paths if p not in sums]
    if missing:
        raise RuntimeError(f"calibration run never reached layers {missing[:3]}")
    return {p: (sums[p] / counts[p]).cpu() for p in layer_paths}


def ternarize_model(
    model,
    method: str = "absmean",
    group_size: int = 0,
    calibration_path: str | None = None,
    max_calibration_samples: int = 16,
    progress: Callable[[int, int], None] | None = None,
):
    """The work of the node, callable from Python: returns a new ternary MODEL."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if is_ternary_model(model):
        raise ValueError("the MODEL is already ternary: connect a float FLUX from 'Load Diffusion Model'")
    cfg = getattr(model.model, "model_config", None)
    unet_config = getattr(cfg, "unet_config", {}) or {}
    if unet_config.get("image_model") != "flux":
        raise ValueError(
            f"Ternarize FLUX needs a FLUX.1 MODEL, got image_model={unet_config.get('image_model')!r} ({type(model.model).__name__})"
        )
    if method == "calibrated" and not calibration_path:
        raise ValueError(
            "method 'calibrated' needs a calibration file (record one with the 'Record Calibration' node)"
        )
    if getattr(model, "injections", None):
        log.warning(
            "Ternarize FLUX: injections on the input MODEL (e.g. a bypass LoRA) are not ternarized; apply them after"
        )

    dm = model.model.diffusion_model
    layer_paths = [n for n, m in dm.named_modules() if isinstance(m, torch.nn.Linear) and is_ternary_layer(n)]
    if not layer_paths:
        raise ValueError("no FLUX block Linear found in the MODEL")

    stats: dict[str, torch.Tensor] | None = None
    calib_info = None
    if calibration_path:
        samples = read_calibration(calibration_path)
        stats = collect_activation_stats(model, samples, layer_paths, max_calibration_samples)
        calib_info = {
            "file": os.path.basename(calibration_path),
            "samples": min(len(samples), max_calibration_samples),
        }
        if method != "calibrated":
            log.info("Ternarize FLUX: a calibration file is given, so method %r becomes 'calibrated'", method)
            method = "calibrated"
    external = _external_calibrated() if method == "calibrated" else None
    used_method = (
        method if method != "calibrated" else ("calibrated" if external else "importance-weighted-twn")
    )

    dev = model.load_device
    prefix = "diffusion_model."
    ternary_set = set(layer_paths)
    out: dict[str, torch.Tensor] = {}
    done = 0
    for name, m in dm.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            patches = model.patches.get(prefix + key)
            backup = model.backup.get(prefix + key)  # a loaded clone may have baked its patches in
            if backup is not None:
                p = backup.weight
            if name in ternary_set and pname == "weight":
                w = _to_float(p).to(dev)
                if patches:
                    w = comfy.lora.calculate_weight(patches, w, prefix + key)
                tw = _ternarize_layer(
                    w, method, group_size, stats.get(name) if stats else None, external, name
                )
                out[f"{name}.weight"] = tw.packed.cpu()
                out[f"{name}.weight_scale"] = tw.scale.cpu()
                out[f"{name}.weight_shape"] = torch.tensor(tw.shape, dtype=torch.int64)
                del w, tw
                done += 1
                if progress is not None:
                    progress(done, len(layer_paths))
                continue
            t = p
            if patches:
                t = comfy.lora.calculate_weight(patches, _to_float(p).to(dev), prefix + key).to(p.dtype)
            out[_bfl_key(key)] = _storage(t)
    meta = TernaryMetadata(
        group_size=group_size,
        variant="dev" if unet_config.get("guidance_embed") else "schnell",
        source_name=_source_name(model),
        method=used_method,
        method_params={"node": "Ternarize FLUX"},
        calibration=calib_info,
    )
    src_dtype = model.model.get_dtype()
    dtype = src_dtype if src_dtype in (torch.bfloat16, torch.float16, torch.float32) else None
    new = build_ternary_model(
        out, meta, KernelOptions(dtype=dtype), source=f"<ternarized {meta.source_name or 'MODEL'}>"
    )
    # keep what stock nodes put on the MODEL (sampling patches, options); weight patches are merged
    new.model_options = model.clone().model_options
    new.object_patches = dict(model.object_patches)
    return new


def _source_name(model) -> str | None:
    init = getattr(model, "cached_patcher_init", None)
    try:
        return os.path.basename(str(init[1][0])) if init else None
    except (IndexError, TypeError):
        return None


def _ternarize_layer(w, method, group_size, act_stats, external, name) -> TernaryWeight:
    try:
        if method in ("absmean", "twn"):
            return ternarize(w, method, group_size)
        if external is not None:
            try:
                return external(weight=w, act_sq_mean=act_stats, group_size=group_size)
            except Exception as e:  # the tool's API may differ: fall back, loudly
                log.warning(
                    "calibrated quantizer from quantize_tool failed on %s (%s); using importance-weighted TWN",
                    name,
                    e,
                )
        return importance_weighted_ternarize(w, act_stats, group_size)
    except ValueError as e:
        raise ValueError(f"layer {name}: {e}") from None


class TernarizeFlux(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TernaryFluxTernarize",
            display_name="Ternarize FLUX",
            category="TernaryFLUX",
            description=(
                "Converts a float FLUX MODEL (from Load Diffusion Model; bf16/fp16/fp8, dev or schnell) to 1.58-bit "
                "ternary, layer by layer. The input MODEL is left unchanged. Save the result with Save Ternary FLUX."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A float FLUX.1 MODEL (Load Diffusion Model). LoRAs already applied to it are merged first.",
                ),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default="absmean",
                    tooltip="absmean = BitNet b1.58 (data-free); twn = Ternary Weight Networks threshold (data-free); "
                    "calibrated = activation-aware, needs a calibration file.",
                ),
                io.Combo.Input(
                    "group_size",
                    options=list(GROUP_SIZES),
                    default="per-channel",
                    tooltip="One scale per output channel, or one per group of 128/256 inputs (slightly bigger file, lower error).",
                ),
                io.Combo.Input(
                    "calibration",
                    options=calibration_names(),
                    default=NO_CALIBRATION,
                    tooltip="Calibration file recorded with Record Calibration (output/ternaryflux_calibration or "
                    "models/ternaryflux_calibration). When given, the calibrated method is used.",
                ),
                io.Int.Input(
                    "max_calibration_samples",
                    default=16,
                    min=1,
                    max=4096,
                    tooltip="How many recorded diffusion-model calls to run for the activation statistics.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="Ternary FLUX MODEL")],
        )

    @classmethod
    def validate_inputs(cls, calibration: str, **kwargs) -> bool | str:
        if (
            calibration != NO_CALIBRATION
            and folder_paths.get_full_path(CALIBRATION_FOLDER, calibration) is None
        ):
            return f"calibration: {calibration!r} is not in output/ or models/ternaryflux_calibration"
        return True

    @classmethod
    def execute(
        cls, model, method: str, group_size: str, calibration: str, max_calibration_samples: int
    ) -> io.NodeOutput:
        path = (
            None
            if calibration == NO_CALIBRATION
            else folder_paths.get_full_path(CALIBRATION_FOLDER, calibration)
        )
        if group_size not in GROUP_SIZES:
            raise ValueError(
                f"Ternarize FLUX: group_size must be one of {tuple(GROUP_SIZES)}, got {group_size!r}"
            )
        pbar = comfy.utils.ProgressBar(1)

        def progress(i: int, total: int) -> None:
            pbar.update_absolute(i, total)

        try:
            new = ternarize_model(
                model, method, GROUP_SIZES[group_size], path, max_calibration_samples, progress
            )
        except ValueError as e:
            raise ValueError(f"Ternarize FLUX: {e}") from None
        return io.NodeOutput(new)
