"""TernaryFLUX: 1.58-bit (ternary) FLUX for ComfyUI.

This folder is both the ComfyUI custom-node pack and the Python package ``ternaryflux``
(``pip install -e .`` maps the repository root to that name). Library code (``core``,
``kernels``, ``quantize_tool``) never imports ComfyUI; only ``nodes`` does, and it is imported
here only when this module is loaded *by* a ComfyUI host.
"""

from __future__ import annotations

import sys


def _running_inside_comfyui() -> bool:
    # ComfyUI has imported both of these before it loads any custom node pack.
    return "folder_paths" in sys.modules and "comfy.model_management" in sys.modules


# ``__package__`` is empty when this file is imported bare, outside any package: pytest does that
# for the root of a checkout whose folder name is not a Python identifier (``tmp.Ab12``,
# ``ComfyUI-TernaryFLUX``). There is nothing to set up then; the package itself is importable as
# ``ternaryflux`` (``pip install -e .``) or under ComfyUI's name for the folder.
if __package__:
    from .version import __version__

    if _running_inside_comfyui():
        from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI V3 entry point)

    __all__ = ["__version__"]
