"""The tool's user-facing error type (kept apart from ``cli`` so library modules can raise it)."""

from __future__ import annotations


class ToolError(Exception):
    """A user-facing error: the CLI prints it as one line and exits with status 2, no traceback."""
