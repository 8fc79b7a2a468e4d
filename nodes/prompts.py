"""TernaryFLUX Calibration Prompt: picks prompt ``index`` from a prompt list (the pack's built-in
calibration prompts, a ``.txt`` file in the ``ternaryflux_calibration`` folder, or text typed into
the node) and outputs it as a STRING for *CLIP Text Encode*'s ``text`` input.

``index`` has a control-after-generate widget set to ``increment``: with the Queue batch count
set to N, one queue press records N consecutive prompts through *Record Calibration*.
"""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io

from ..quant.prompts import (
    BUILTIN_PROMPTS_PATH,
    PROMPT_FILE_SUFFIX,
    PromptListError,
    builtin_prompt_count,
    builtin_prompts,
    load_prompt_file,
    parse_prompts,
    select_prompt,
)
from .ternarize import CALIBRATION_FOLDER, register_calibration_folder

log = logging.getLogger(__name__)

BUILTIN = "built-in"
MAX_INDEX = 2**31 - 1
# ComfyUI >= 0.3.6x accepts the default control mode; older V3 hosts take a bool (frontend default)
_CONTROL = getattr(io, "ControlAfterGenerate", None)
CONTROL_AFTER_GENERATE = _CONTROL.increment if _CONTROL is not None else True


def prompt_file_names() -> list[str]:
    """``.txt`` files in the calibration folders (models/ and output/ternaryflux_calibration)."""
    register_calibration_folder()
    return [
        n
        for n in folder_paths.get_filename_list(CALIBRATION_FOLDER)
        if n.lower().endswith(PROMPT_FILE_SUFFIX)
    ]


def _source_path(source: str) -> str:
    if source == BUILTIN:
        return str(BUILTIN_PROMPTS_PATH)
    register_calibration_folder()
    path = (
        folder_paths.get_full_path(CALIBRATION_FOLDER, source)
        if source.endswith(PROMPT_FILE_SUFFIX)
        else None
    )
    if path is None:
        raise PromptListError(
            f"prompt file {source!r} is not in models/{CALIBRATION_FOLDER} or output/{CALIBRATION_FOLDER}"
        )
    return path


def load_prompts(source: str, custom_prompts: str | None = None) -> list[str]:
    """The prompt list the node uses: ``custom_prompts`` if it holds any, else ``source``."""
    custom = parse_prompts(custom_prompts or "")
    if custom:
        return custom
    if source == BUILTIN:
        return builtin_prompts()
    return load_prompt_file(_source_path(source))


class CalibrationPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        n = builtin_prompt_count()
        builtin_desc = f"the {n} prompts shipped with the pack" if n else "the pack's prompts (file missing!)"
        return io.Schema(
            node_id="TernaryFluxCalibrationPrompt",
            display_name="TernaryFLUX Calibration Prompt",
            category="TernaryFLUX",
            description=(
                "Outputs prompt number `index` of a calibration prompt list, for CLIP Text Encode's text input. "
                "With Record Calibration in the graph, set the Queue batch count to N: `index` increments after "
                "each queued run, so N runs record N different prompts."
            ),
            inputs=[
                io.Int.Input(
                    "index",
                    default=0,
                    min=0,
                    max=MAX_INDEX,
                    control_after_generate=CONTROL_AFTER_GENERATE,
                    tooltip="Which prompt (0-based; wraps around past the end of the list). Leave the control on "
                    "'increment' to take the next prompt on every queued run.",
                ),
                io.Combo.Input(
                    "source",
                    options=[BUILTIN, *prompt_file_names()],
                    default=BUILTIN,
                    tooltip=f"Prompt list: '{BUILTIN}' = {builtin_desc}; or a .txt file (one prompt per line, "
                    f"'#' lines skipped) in models/{CALIBRATION_FOLDER} or output/{CALIBRATION_FOLDER}.",
                ),
                io.String.Input(
                    "custom_prompts",
                    default="",
                    multiline=True,
                    dynamic_prompts=False,
                    optional=True,
                    tooltip="If not empty, these prompts (one per line, '#' lines skipped) replace the source list.",
                ),
            ],
            outputs=[
                io.String.Output("prompt", tooltip="The selected prompt"),
                io.Int.Output("index", tooltip="The index used (wrapped into the list)"),
                io.Int.Output("count", tooltip="How many prompts the list holds"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, index: int, source: str, custom_prompts: str | None = None, **kwargs):
        # re-run when the chosen prompt file changes on disk
        if parse_prompts(custom_prompts or ""):
            return ""
        try:
            st = os.stat(_source_path(source))
        except (OSError, PromptListError):
            return float("nan")
        return f"{st.st_mtime_ns}:{st.st_size}"

    @classmethod
    def execute(cls, index: int, source: str, custom_prompts: str | None = None) -> io.NodeOutput:
        try:
            prompts = load_prompts(source, custom_prompts)
        except PromptListError as e:
            raise ValueError(f"TernaryFLUX Calibration Prompt: {e}") from None
        prompt, i, count = select_prompt(prompts, index)
        log.info("Calibration Prompt %d/%d: %s", i, count, prompt)
        return io.NodeOutput(prompt, i, count)
