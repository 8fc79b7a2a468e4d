"""Load Ternary FLUX: a TernaryFLUX checkpoint from ``models/diffusion_models`` → MODEL."""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io

from ..core.checkpoint import TernaryFormatError, is_ternary_file
from .model_build import ACTIVATIONS, BACKENDS, COMPUTE_DTYPES, KernelOptions, load_ternary_model

log = logging.getLogger(__name__)

FOLDER = "diffusion_models"  # also covers models/unet
_header_cache: dict[str, tuple[float, int, bool]] = {}


def looks_ternary(path: str) -> bool:
    """Cheap check (header only, cached by mtime/size): does the safetensors header carry
    TernaryFLUX metadata? Truncated tensor data still counts, so loading reports it clearly."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    hit = _header_cache.get(path)
    if hit is not None and hit[:2] == (st.st_mtime, st.st_size):
        return hit[2]
    result = is_ternary_file(path, check_data=False)
    _header_cache[path] = (st.st_mtime, st.st_size, result)
    return result


def ternary_model_names() -> list[str]:
    names = []
    for name in folder_paths.get_filename_list(FOLDER):
        full = folder_paths.get_full_path(FOLDER, name)
        if full and name.lower().endswith((".safetensors", ".sft")) and looks_ternary(full):
            names.append(name)
    return names


def _hint(problem: str) -> str:
    if problem.startswith("truncated"):
        return (
            ". The file is incomplete: copy or download it again, or re-create it with Ternarize FLUX + "
            "Save Ternary FLUX or `ternaryflux quantize`"
        )
    if "Ternarize FLUX" in problem:  # core's message for non-ternary files already says how to convert
        return ". A plain FLUX file loads with 'Load Diffusion Model'"
    return (
        ". Load Ternary FLUX reads TernaryFLUX checkpoints only; convert a FLUX file with the "
        "Ternarize FLUX node (then Save Ternary FLUX) or `ternaryflux quantize`"
    )


class LoadTernaryFlux(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TernaryFluxLoader",
            display_name="Load Ternary FLUX",
            category="TernaryFLUX",
            description=(
                "Loads a 1.58-bit TernaryFLUX checkpoint from models/diffusion_models (or models/unet) as a MODEL "
                "that works with every stock FLUX node. Only files with TernaryFLUX metadata are listed."
            ),
            inputs=[
                io.Combo.Input(
                    "unet_name",
                    options=ternary_model_names(),
                    tooltip="TernaryFLUX checkpoint (.safetensors with TernaryFLUX metadata). Make one with the "
                    "Ternarize FLUX + Save Ternary FLUX nodes or `ternaryflux quantize`.",
                ),
                io.Combo.Input(
                    "kernel_backend",
                    options=list(BACKENDS),
                    default="auto",
                    tooltip="Ternary matmul kernel: auto = Triton on CUDA when available, else PyTorch; "
                    "triton = ask for Triton (falls back to PyTorch with a warning if it cannot run); torch = reference.",
                ),
                io.Combo.Input(
                    "activations",
                    options=list(ACTIVATIONS),
                    default="bf16",
                    tooltip="Activation precision inside ternary layers: bf16 = activations in the compute dtype "
                    "(W1.58A16, best quality); int8 = per-token int8 activations (W1.58A8, faster on some GPUs).",
                ),
                io.Combo.Input(
                    "compute_dtype",
                    options=list(COMPUTE_DTYPES),
                    default="default",
                    tooltip="dtype of the non-ternary layers and activations; default lets ComfyUI choose "
                    "(bf16 on recent GPUs, fp32 on CPU).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="FLUX MODEL with packed ternary layers")],
        )

    @classmethod
    def validate_inputs(cls, unet_name: str, **kwargs) -> bool | str:
        # Any existing file passes (even a non-ternary one): execute() then explains what it is.
        if folder_paths.get_full_path(FOLDER, unet_name) is None:
            return f"unet_name: {unet_name!r} is not a file in models/diffusion_models or models/unet"
        return True

    @classmethod
    def execute(
        cls, unet_name: str, kernel_backend: str, activations: str, compute_dtype: str
    ) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, unet_name)
        if path is None:
            raise FileNotFoundError(
                f"Load Ternary FLUX: {unet_name!r} is not in models/diffusion_models or models/unet"
            )
        options = KernelOptions.from_widgets(kernel_backend, activations, compute_dtype)
        try:
            model = load_ternary_model(path, options)
        except TernaryFormatError as e:
            raise ValueError(f"Load Ternary FLUX: {unet_name}: {e.problem}{_hint(e.problem)}") from None
        return io.NodeOutput(model)
