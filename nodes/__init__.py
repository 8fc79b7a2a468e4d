"""ComfyUI nodes of TernaryFLUX (the only part of the pack that imports ComfyUI).

Importing this package does not import ComfyUI: the pure helpers (``naming``, ``lowrank``)
are usable and testable without a host. ComfyUI calls :func:`comfy_entrypoint`,
which imports the node modules.
"""

from __future__ import annotations


async def comfy_entrypoint():
    """ComfyUI V3 entry point: returns the extension listing Load / Ternarize / Save / Record."""
    from .extension import TernaryFluxExtension

    return TernaryFluxExtension()


__all__ = ["comfy_entrypoint"]
