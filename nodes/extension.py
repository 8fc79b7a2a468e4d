"""The ComfyUI V3 extension object listing this pack's nodes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .calibration import RecordCalibration
from .loader import LoadTernaryFlux
from .prompts import CalibrationPrompt
from .save import SaveTernaryFlux
from .ternarize import TernarizeFlux, register_calibration_folder

NODES: list[type[io.ComfyNode]] = [
    LoadTernaryFlux,
    TernarizeFlux,
    SaveTernaryFlux,
    RecordCalibration,
    CalibrationPrompt,
]


class TernaryFluxExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_calibration_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
