"""Single source of the package version (pyproject.toml carries the same string; a test checks)."""

__version__ = "0.1.0"
