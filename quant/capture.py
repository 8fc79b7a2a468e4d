"""Block capture: record what named submodules (FLUX blocks, any ``nn.Module`` parts) receive
and return while a model runs. The one helper behind block-wise calibration, the block losses of
distillation and the per-block errors of evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a module output (a tensor, or nested tuples/lists/dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def move(x: Any, device) -> Any:
    """``x`` (tensors inside tuples, lists and dicts included) on ``device``; ``None`` = as is."""
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(move(v, device) for v in x)
    return x


class BlockCapture:
    """Context manager: while active, every call of the submodules ``names`` of ``model`` appends
    its positional and keyword arguments to ``inputs[name]`` (as ``(args, kwargs)``, moved to
    ``device`` when given) and its flattened outputs to ``outputs[name]`` (cloned when
    ``clone_outputs``, so later in-place edits cannot change them).

    Example::

        with BlockCapture(model, ["double_blocks.0"]) as cap:
            model(**inputs)
        (args, kwargs), = cap.inputs["double_blocks.0"]
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        inputs: bool = True,
        outputs: bool = True,
        device: torch.device | str | None = None,
        clone_outputs: bool = False,
    ):
        self.model = model
        self.names = list(names)
        self.want_inputs, self.want_outputs = inputs, outputs
        self.device, self.clone_outputs = device, clone_outputs
        self.inputs: dict[str, list[tuple[tuple, dict]]] = {n: [] for n in self.names}
        self.outputs: dict[str, list[list[torch.Tensor]]] = {n: [] for n in self.names}
        self._hooks: list[Any] = []

    def _on_input(self, name: str, args: tuple, kwargs: dict) -> None:
        self.inputs[name].append((move(args, self.device), move(kwargs, self.device)))

    def _on_output(self, name: str, out: Any) -> None:
        ts = flatten_outputs(out)
        self.outputs[name].append([t.clone() for t in ts] if self.clone_outputs else ts)

    def __enter__(self) -> BlockCapture:
        for n in self.names:
            mod = self.model.get_submodule(n)
            if self.want_inputs:
                self._hooks.append(
                    mod.register_forward_pre_hook(
                        lambda m, a, k, n=n: self._on_input(n, a, k), with_kwargs=True
                    )
                )
            if self.want_outputs:
                self._hooks.append(mod.register_forward_hook(lambda m, a, o, n=n: self._on_output(n, o)))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def last(self, name: str) -> tuple[tuple, dict, list[torch.Tensor]]:
        """``(args, kwargs, outputs)`` of the most recent call of ``name``."""
        args, kwargs = self.inputs[name][-1] if self.want_inputs else ((), {})
        return args, kwargs, self.outputs[name][-1] if self.want_outputs else []
