"""File names typed into nodes: validated so that a name can never leave its models folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

_ALLOWED = re.compile(r"^[A-Za-z0-9._\- ]+$")
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}
SUFFIX = ".safetensors"


class FilenameError(ValueError):
    """A user-given file name is not acceptable; the message says why."""


def validate_filename(name: str, suffix: str = SUFFIX, allow_subfolders: bool = True) -> str:
    """Return ``name`` normalised to a relative POSIX path ending in ``suffix``.

    Accepts letters, digits, ``._- `` and (if ``allow_subfolders``) ``/`` between parts; rejects
    empty names, absolute paths, ``..``, hidden parts, backslashes, drive letters, control
    characters and reserved Windows device names.
    """
    if not isinstance(name, str):
        raise FilenameError(f"filename must be text, got {type(name).__name__}")
    raw = name.strip()
    if not raw:
        raise FilenameError("filename is empty")
    if "\\" in raw or ":" in raw or raw.startswith("/") or "\x00" in raw:
        raise FilenameError(f"filename {name!r} must be a relative name (no '/', '\\' or ':' at the start)")
    parts = raw.split("/")
    if len(parts) > 1 and not allow_subfolders:
        raise FilenameError(f"filename {name!r} must not contain '/'")
    for part in parts:
        if part in ("", ".", ".."):
            raise FilenameError(f"filename {name!r} has an empty, '.' or '..' part")
        if part.startswith("."):
            raise FilenameError(f"filename {name!r} has a hidden part {part!r}")
        if not _ALLOWED.match(part):
            raise FilenameError(f"filename {name!r}: use only letters, digits, space, '.', '_' and '-'")
        if part.split(".")[0].lower() in _WINDOWS_RESERVED:
            raise FilenameError(f"filename {name!r} uses a reserved device name")
    out = "/".join(p.strip() for p in parts)
    if not out.lower().endswith(suffix):
        out += suffix
    if len(out) > 200:
        raise FilenameError(f"filename {name!r} is too long (max 200 characters)")
    return out


def resolve_inside(folder: str | os.PathLike, relname: str) -> Path:
    """``folder / relname`` after checking it stays inside ``folder`` (symlinks resolved)."""
    base = Path(folder).resolve()
    target = (base / relname).resolve()
    if target != base and base not in target.parents:
        raise FilenameError(f"filename {relname!r} leaves the folder {base}")
    return target
