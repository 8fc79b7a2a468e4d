"""The library's user-facing error type."""

from __future__ import annotations


class QuantizeError(Exception):
    """Bad input to the quantization library (a file, a setting, calibration data that does not
    fit). The message is one sentence naming what is wrong; front ends show it as is (the CLI
    prints one line and exits with status 2, the nodes raise it to ComfyUI)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every atomic writer removes its
    temporary file on the way out (the CLI reports it and exits with status 143)."""
