"""Save Ternary FLUX: write a ternary MODEL's weights as a TernaryFLUX checkpoint (atomic)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import folder_paths
import torch
from comfy_api.latest import io

from ..core.checkpoint import PACKINGS, TernaryMetadata, write_checkpoint
from ..version import __version__
from .model_build import is_ternary_model
from .naming import FilenameError, resolve_inside, validate_filename
from .ops import ternary_op_modules

log = logging.getLogger(__name__)

SAVE_FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "keep": None}


def diffusion_models_dir() -> str:
    paths = folder_paths.get_folder_paths("diffusion_models")
    for p in paths:
        if os.path.basename(os.path.normpath(p)) == "diffusion_models":
            return p
    return paths[0]


def ternary_state_dict(model, float_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The MODEL's weights in the checkpoint layout (BFL keys, packed ternary layers)."""
    if model.patches:
        keys = sorted(model.patches)[:3]
        raise ValueError(
            f"this MODEL carries {len(model.patches)} weight patches (e.g. {keys}): a LoRA cannot be merged into "
            "ternary weights without re-quantizing. Save before applying LoRAs, or merge the LoRA into the float "
            "model and run Ternarize FLUX on that."
        )
    dm = model.model.diffusion_model
    ternary = {n for n, _ in ternary_op_modules(dm)}
    prefix = "diffusion_model."
    out: dict[str, torch.Tensor] = {}
    for key, t in dm.state_dict().items():
        bk = model.backup.get(prefix + key)
        if bk is not None:  # another clone of this model baked its patches in: save the original
            t = bk.weight
        layer, _, param = key.rpartition(".")
        if layer in ternary and param in ("weight", "weight_scale", "weight_shape"):
            out[key] = t.detach().cpu()
            continue
        t = t.detach().cpu()
        if float_dtype is not None and t.is_floating_point():
            t = t.to(float_dtype)
        out[key[: -len(".weight")] + ".scale" if key.endswith("_norm.weight") else key] = t
    return out


def save_ternary_model(
    model, filename: str, packing: str = "2bit", float_dtype: str = "bf16", overwrite: bool = False
) -> str:
    if not is_ternary_model(model):
        raise ValueError("the MODEL has no ternary layers: connect Load Ternary FLUX or Ternarize FLUX")
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if float_dtype not in SAVE_FLOAT_DTYPES:
        raise ValueError(f"float_dtype must be one of {tuple(SAVE_FLOAT_DTYPES)}, got {float_dtype!r}")
    try:
        rel = validate_filename(filename)
        folder = diffusion_models_dir()
        target = resolve_inside(folder, rel)
    except FilenameError as e:
        raise ValueError(f"filename: {e}") from None
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pick another filename or enable 'overwrite'")
    meta: TernaryMetadata = getattr(model.model, "ternaryflux_metadata", None) or TernaryMetadata()
    meta = replace(meta, packing=packing, tool_version=__version__)
    write_checkpoint(target, ternary_state_dict(model, SAVE_FLOAT_DTYPES[float_dtype]), meta)
    log.info("Save Ternary FLUX: wrote %s (%.1f MB)", target, target.stat().st_size / 2**20)
    return str(target)


class SaveTernaryFlux(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TernaryFluxSave",
            display_name="Save Ternary FLUX",
            category="TernaryFLUX",
            description="Writes a ternary MODEL as a TernaryFLUX checkpoint into models/diffusion_models (atomic write).",
            is_output_node=True,
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A ternary MODEL from Ternarize FLUX or Load Ternary FLUX (without LoRAs).",
                ),
                io.String.Input(
                    "filename",
                    default="flux_ternary",
                    tooltip="File name inside models/diffusion_models; '.safetensors' is appended. Letters, digits, "
                    "space, '.', '_', '-' and sub-folders with '/'; no '..' or absolute paths.",
                ),
                io.Combo.Input(
                    "packing",
                    options=list(PACKINGS),
                    default="2bit",
                    tooltip="2bit = runtime layout (fastest to load); base3 = 5 weights per byte (1.6 bits, ~20% smaller "
                    "file, decoded at load).",
                ),
                io.Combo.Input(
                    "float_dtype",
                    options=list(SAVE_FLOAT_DTYPES),
                    default="bf16",
                    tooltip="dtype for the layers that stay float (embedders, final layer, norms, biases); keep = as in memory.",
                ),
                io.Boolean.Input(
                    "overwrite", default=False, tooltip="Replace an existing file of the same name."
                ),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, model, filename: str, packing: str, float_dtype: str, overwrite: bool) -> io.NodeOutput:
        try:
            path = save_ternary_model(model, filename, packing, float_dtype, overwrite)
        except (ValueError, FileExistsError) as e:
            raise ValueError(f"Save Ternary FLUX: {e}") from None
        return io.NodeOutput(ui={"text": [os.path.basename(path)]})
