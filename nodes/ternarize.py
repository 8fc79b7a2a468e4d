"""Ternarize FLUX: a float FLUX MODEL (stock Load Diffusion Model, bf16/fp16/fp8, dev or schnell)
→ a new ternary MODEL. The input MODEL is not modified: the float weights are read (with any
weight patches on it, e.g. a LoRA, merged first) one tensor at a time, and a new diffusion model
is built with packed layers.

Every method runs the offline tool's own streaming driver
(:func:`ternaryflux.quant.flux.quantize_flux_tensors`) on the in-memory weights, with a
:class:`~ternaryflux.quant.writer.MemoryWriter` as its sink: the same codes and scales as
``ternaryflux quantize`` on a file holding the same weights, and no temporary file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import comfy.lora
import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..core.checkpoint import METADATA_KEY, checkpoint_from_tensors
from ..core.defaults import DEFAULT_METHOD
from ..core.flux_layout import is_ternary_layer
from ..quant.algorithms import METHODS, TernaryConfig
from ..quant.calibration import load_calibration
from ..quant.errors import QuantizeError
from ..quant.flux import TensorSource, quantize_flux_tensors
from ..quant.writer import DTYPE_TO_ST, MemoryWriter
from .model_build import KernelOptions, build_ternary_model, is_ternary_model

log = logging.getLogger(__name__)

CALIBRATION_FOLDER = "ternaryflux_calibration"
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


def _is_quantized(t: torch.Tensor) -> bool:
    return type(t).__name__ == "QuantizedTensor" or hasattr(t, "params") and hasattr(t, "layout_type")


def _to_float(t: torch.Tensor) -> torch.Tensor:
    if _is_quantized(t):
        t = t.dequantize()
    return t.detach().to(torch.float32)


def _bfl_key(key: str) -> str:
    # ComfyUI renames the BFL RMSNorm "*_norm.scale" to "*_norm.weight" on load; undo it
    return key[: -len(".weight")] + ".scale" if key.endswith("_norm.weight") else key


CALIBRATION_SEED = 0  # the CLI's --seed default: same sample subset as `ternaryflux quantize`


def _read_param(model, key: str, p: torch.Tensor, dev) -> torch.Tensor:
    """Parameter ``key`` of the diffusion model as the MODEL means it: the original from the
    patcher backup if a loaded clone baked its patches in, weight patches (LoRA) merged (float32
    on ``dev``); otherwise the stored tensor itself (the caller must not modify it)."""
    prefix = "diffusion_model."
    backup = model.backup.get(prefix + key)
    if backup is not None:
        p = backup.weight
    patches = model.patches.get(prefix + key)
    if patches:
        return comfy.lora.calculate_weight(patches, _to_float(p).to(dev), prefix + key)
    return p


def _st_dtype(t: torch.Tensor) -> str:
    if _is_quantized(t):
        return "BF16"  # the driver writes dequantized (e.g. fp8 scaled) weights as bf16
    return DTYPE_TO_ST.get(t.dtype, "F32")


def model_tensor_source(model, source_name: str | None = None) -> TensorSource:
    """The float diffusion model of a MODEL as a BFL-keyed :class:`TensorSource` for the offline
    tool: tensors are read (patches merged) only when the tool asks for them, one at a time."""
    dm = model.model.diffusion_model
    dev = model.load_device
    params: dict[str, tuple[str, torch.Tensor]] = {}
    for name, m in dm.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            params[_bfl_key(key)] = (key, p)

    def getter(bfl: str) -> torch.Tensor:  # TensorSource.get converts (and copies) plain tensors
        key, p = params[bfl]
        t = _read_param(model, key, p, dev)
        return _to_float(t) if _is_quantized(t) else t

    def stored(key: str, p: torch.Tensor) -> torch.Tensor:
        b = model.backup.get("diffusion_model." + key)
        return p if b is None else b.weight

    return TensorSource(
        {k: tuple(stored(ck, p).shape) for k, (ck, p) in params.items()},
        {k: _st_dtype(stored(ck, p)) for k, (ck, p) in params.items()},
        getter,
        name=source_name or _source_name(model) or "MODEL",
        layout="comfyui-model",
    )


def _quantized_model(
    model,
    config: TernaryConfig,
    calibration_path: str | None,
    max_calibration_samples: int,
    progress: Callable[[int, int], None] | None,
    source_name: str | None,
):
    """The offline tool's recipe ``config`` on the MODEL's weights → a new ternary MODEL."""
    samples, summary = None, None
    if calibration_path:
        try:
            samples, summary = load_calibration([calibration_path], max_calibration_samples, CALIBRATION_SEED)
        except QuantizeError as e:
            raise ValueError(str(e)) from None
        log.info(
            "Ternarize FLUX: calibrated (the `ternaryflux quantize` recipe) on %d of %d samples of %s",
            summary["num_samples"],
            summary["num_samples_available"],
            os.path.basename(calibration_path),
        )
    src = model_tensor_source(model, source_name)
    sink = MemoryWriter()
    try:
        quantize_flux_tensors(
            src,
            sink,
            config,
            calibration=samples,
            calibration_summary=summary,
            device=str(model.load_device),
            on_layer=progress,
        )
    except QuantizeError as e:
        raise ValueError(str(e)) from None
    del samples
    ckpt = checkpoint_from_tensors(sink.tensors, sink.metadata[METADATA_KEY])
    src_dtype = model.model.get_dtype()
    dtype = src_dtype if src_dtype in (torch.bfloat16, torch.float16, torch.float32) else None
    return build_ternary_model(
        ckpt.state_dict,
        ckpt.metadata,
        KernelOptions(dtype=dtype),
        source=f"<ternarized {ckpt.metadata.source_name or 'MODEL'}>",
    )


def ternarize_comfy_model(
    model,
    method: str = "absmean",
    group_size: int = 0,
    calibration_path: str | None = None,
    max_calibration_samples: int = 16,
    progress: Callable[[int, int], None] | None = None,
    source_name: str | None = None,
):
    """The work of the node, callable from Python: returns a new ternary MODEL.

    ``source_name`` is recorded when the MODEL itself does not say which file it came from
    (hosts before ``ModelPatcher.cached_patcher_init``, e.g. ComfyUI 0.9.0)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if is_ternary_model(model):
        raise ValueError("the MODEL is already ternary: connect a float FLUX from 'Load Diffusion Model'")
    cfg = getattr(model.model, "model_config", None)
    unet_config = getattr(cfg, "unet_config", {}) or {}
    arch = unet_config.get("image_model")  # ComfyUI's "flux" / "flux2" are our architecture names
    if arch not in ("flux", "flux2"):
        raise ValueError(
            f"Ternarize FLUX needs a FLUX.1 or FLUX.2 MODEL, got image_model={arch!r} ({type(model.model).__name__})"
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
    layer_paths = [
        n for n, m in dm.named_modules() if isinstance(m, torch.nn.Linear) and is_ternary_layer(n, arch)
    ]
    if not layer_paths:
        raise ValueError("no FLUX block Linear found in the MODEL")

    source_name = _source_name(model) or source_name
    if calibration_path and method != "calibrated":
        log.info("Ternarize FLUX: a calibration file is given, so method %r becomes 'calibrated'", method)
        method = "calibrated"
    new = _quantized_model(
        model,
        TernaryConfig(method=method, group_size=group_size),
        calibration_path,
        max_calibration_samples,
        progress,
        source_name,
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


# inputs of the stock loaders that name the file a MODEL was loaded from
_LOADER_FILE_INPUTS = ("unet_name", "ckpt_name")


def _prompt_source_name(prompt, node_id) -> str | None:
    """The file name of the loader upstream of ``node_id``'s ``model`` input in the API prompt,
    following ``model`` links through MODEL-to-MODEL nodes (LoRA loaders, patches). A fallback for
    hosts whose MODEL does not record its file (no ``cached_patcher_init``, e.g. ComfyUI 0.9.0)."""
    if not isinstance(prompt, dict) or node_id is None:
        return None
    node, seen = prompt.get(str(node_id)), set()
    while isinstance(node, dict):
        link = (node.get("inputs") or {}).get("model")
        if not (isinstance(link, (list, tuple)) and len(link) == 2) or str(link[0]) in seen:
            return None
        seen.add(str(link[0]))
        node = prompt.get(str(link[0]))
        inputs = (node or {}).get("inputs") or {}
        for k in _LOADER_FILE_INPUTS:
            if isinstance(inputs.get(k), str) and inputs[k]:
                return os.path.basename(inputs[k])
    return None


def _hidden_source_name(node_cls) -> str | None:
    hidden = getattr(node_cls, "hidden", None)
    try:
        return _prompt_source_name(getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None))
    except Exception:  # a best-effort label only: never fail the node over it
        return None


class TernarizeFlux(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TernaryFluxTernarize",
            display_name="Ternarize FLUX",
            category="TernaryFLUX",
            description=(
                "Converts a float FLUX MODEL (from Load Diffusion Model; bf16/fp16/fp8; FLUX.1 dev or schnell, or "
                "FLUX.2 with its default policy: block Linears only) to 1.58-bit ternary, layer by layer. The input MODEL is left unchanged. Save the result with Save Ternary FLUX."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A float FLUX.1 or FLUX.2 MODEL (Load Diffusion Model). LoRAs already applied to it are merged first.",
                ),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default=DEFAULT_METHOD,
                    tooltip="absmean = BitNet b1.58 (data-free); twn = Ternary Weight Networks threshold (data-free); "
                    "calibrated = the `ternaryflux quantize --method calibrated` recipe (per layer, the candidate "
                    "giving the smallest block-output error on the calibration data), needs a calibration file.",
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
                    tooltip="Use at most this many recorded diffusion-model calls (a seeded random subset, like "
                    "`ternaryflux quantize --calib-samples N`). More samples: better, slower.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="Ternary FLUX MODEL")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
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
            comfy.model_management.throw_exception_if_processing_interrupted()

        try:
            new = ternarize_comfy_model(
                model,
                method,
                GROUP_SIZES[group_size],
                path,
                max_calibration_samples,
                progress,
                source_name=_hidden_source_name(cls),
            )
        except ValueError as e:
            raise ValueError(f"Ternarize FLUX: {e}") from None
        return io.NodeOutput(new)
