"""Build a ComfyUI MODEL (a :class:`~.patcher.TernaryModelPatcher`) from a ternary FLUX state dict.

One place for the ComfyUI-version differences of ``comfy.sd.load_diffusion_model_state_dict``
(``metadata`` and ``disable_dynamic`` keywords exist only in newer hosts) and for the checks
that every ternary layer really became a packed Linear.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import comfy.sd
import torch

from ..core.checkpoint import TernaryFormatError, TernaryMetadata, load_checkpoint
from .ops import make_ternary_ops, ternary_op_modules
from .patcher import TernaryModelPatcher

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
ACTIVATIONS = {"bf16": "a16", "int8": "a8"}
COMPUTE_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


@dataclass(frozen=True)
class KernelOptions:
    backend: str = "auto"
    act: str = "a16"
    dtype: torch.dtype | None = None

    @classmethod
    def from_widgets(cls, backend: str, activations: str, compute_dtype: str) -> KernelOptions:
        if backend not in BACKENDS:
            raise ValueError(f"kernel_backend must be one of {BACKENDS}, got {backend!r}")
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {tuple(ACTIVATIONS)}, got {activations!r}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {compute_dtype!r}")
        return cls(backend, ACTIVATIONS[activations], COMPUTE_DTYPES[compute_dtype])


def _load_state_dict_kwargs(metadata: Mapping[str, str] | None) -> dict:
    params = inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters
    kw: dict = {}
    if "metadata" in params:
        kw["metadata"] = dict(metadata) if metadata else None
    if "disable_dynamic" in params:
        kw["disable_dynamic"] = True  # see patcher.py: DynamicVRAM would re-quantize merged weights
    return kw


def build_ternary_model(
    sd: dict[str, torch.Tensor],
    meta: TernaryMetadata,
    options: KernelOptions,
    source: str = "<memory>",
    header_metadata: Mapping[str, str] | None = None,
) -> TernaryModelPatcher:
    """Create the ComfyUI FLUX model with ternary layers straight from ``sd`` (consumed)."""
    expected = {k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale")}
    model_options: dict = {"custom_operations": make_ternary_ops(options.backend, options.act)}
    if options.dtype is not None:
        model_options["dtype"] = options.dtype
    try:
        base = comfy.sd.load_diffusion_model_state_dict(
            sd, model_options=model_options, **_load_state_dict_kwargs(header_metadata)
        )
    except RuntimeError as e:  # torch load_state_dict errors: shape mismatches etc.
        raise TernaryFormatError(source, f"does not fit ComfyUI's FLUX model ({e})") from None
    if base is None:
        raise TernaryFormatError(
            source, "ComfyUI could not detect a model type from its keys (not a FLUX transformer?)"
        )
    got = {n for n, _ in ternary_op_modules(base.model.diffusion_model)}
    if got != expected:
        missing = sorted(expected - got)[:5]
        raise TernaryFormatError(
            source, f"{len(expected - got)} ternary layers did not map onto the model, e.g. {missing}"
        )
    patcher = TernaryModelPatcher(
        base.model, load_device=base.load_device, offload_device=base.offload_device
    )
    patcher.model.ternaryflux_metadata = meta
    patcher.model.ternaryflux_source = source
    log.info(
        "TernaryFLUX: %s: %d ternary layers, %.1f MB in memory (backend=%s, act=%s)",
        os.path.basename(source),
        len(got),
        patcher.model_size() / 2**20,
        options.backend,
        options.act,
    )
    return patcher


def load_ternary_model(
    path: str, options: KernelOptions = KernelOptions(), disable_dynamic: bool = True
) -> TernaryModelPatcher:
    """Read a TernaryFLUX checkpoint and build its MODEL. Also ``cached_patcher_init`` target
    (ComfyUI calls it with ``disable_dynamic=True`` to rebuild a fresh copy)."""
    ckpt = load_checkpoint(path)
    if ckpt.metadata.architecture != "flux":
        raise TernaryFormatError(
            path, f"architecture is {ckpt.metadata.architecture!r}; Load Ternary FLUX needs 'flux'"
        )
    patcher = build_ternary_model(ckpt.state_dict, ckpt.metadata, options, source=path)
    patcher.cached_patcher_init = (load_ternary_model, (path, options))
    return patcher


def is_ternary_model(model) -> bool:
    """True for a MODEL (patcher) whose diffusion model has ternary layers."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    return dm is not None and len(ternary_op_modules(dm)) > 0
