"""The library's user-facing error type."""

from __future__ import annotations


class QuantizeError(Exception):
    """Bad input to the quantization library (a file, a setting, calibration data that does not
    fit). The message is one sentence naming what is wrong; front ends show it as is (the CLI
    prints one line and exits with status 2, the nodes raise it to ComfyUI)."""
