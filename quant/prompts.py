"""Calibration prompt lists, read one way for the *Calibration Prompt* node and the CLI.

A prompt list is UTF-8 text with one prompt per line; blank lines and lines starting with ``#``
are skipped. The pack ships one (``quant/data/calibration_prompts.txt``, written by
``quant/make_prompts.py``); it is found relative to this file, so the pack works under
any folder name in ``custom_nodes``.
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_PROMPTS_PATH = Path(__file__).with_name("data") / "calibration_prompts.txt"
PROMPT_FILE_SUFFIX = ".txt"


class PromptListError(ValueError):
    """A prompt list is missing or holds no prompts; the message says which and how to fix it."""


def parse_prompts(text: str) -> list[str]:
    """The prompts in ``text``: one per line, stripped; blank and ``#`` comment lines skipped."""
    out = []
    for line in text.splitlines():
        p = line.strip()
        if p and not p.startswith("#"):
            out.append(p)
    return out


def load_prompt_file(path: str | os.PathLike) -> list[str]:
    """The prompts in the file at ``path``; :class:`PromptListError` if it is missing, unreadable or empty."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptListError(f"prompt list {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptListError(f"prompt list {p} cannot be read as UTF-8 text: {e}") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise PromptListError(
            f"prompt list {p} holds no prompts (one prompt per line; blank and '#' lines are skipped)"
        )
    return prompts


def builtin_prompts() -> list[str]:
    """The calibration prompts shipped with the pack."""
    try:
        return load_prompt_file(BUILTIN_PROMPTS_PATH)
    except PromptListError as e:
        raise PromptListError(
            f"the built-in calibration prompts are unavailable ({e}); reinstall the pack or choose a "
            "prompt file / custom_prompts"
        ) from None


def builtin_prompt_count() -> int | None:
    """How many built-in prompts there are, or ``None`` if the file is missing or empty."""
    try:
        return len(builtin_prompts())
    except PromptListError:
        return None


def wrap_index(index: int, count: int) -> int:
    """``index`` wrapped into ``[0, count)`` (so a queue counter can run past the end of the list)."""
    if count <= 0:
        raise PromptListError("the prompt list is empty")
    return int(index) % count


def select_prompt(prompts: list[str], index: int) -> tuple[str, int, int]:
    """``(prompt, wrapped index, count)`` for ``index`` into ``prompts``."""
    i = wrap_index(index, len(prompts))
    return prompts[i], i, len(prompts)
