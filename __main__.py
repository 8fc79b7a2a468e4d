"""``python -m ternaryflux`` (pip installs) — or, for a ComfyUI-Manager install that has no
``ternaryflux`` command, from ``ComfyUI/custom_nodes`` with ComfyUI's Python:
``python -m ComfyUI-TernaryFLUX COMMAND ...`` (the pack folder's name). Same as ``ternaryflux``."""

import sys

from .quantize_tool.cli import main

if __name__ == "__main__":
    sys.exit(main())
