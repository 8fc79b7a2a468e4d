"""Data-free conversion of a float model's Linear layers to :class:`TernaryLinear`, in place.

Layer by layer: each float weight is ternarized, the Linear is swapped out, and the float
weight is released before the next layer, so peak extra memory is one layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .flux_layout import is_ternary_layer
from .ternarize import ternarize
from .ternary_linear import TernaryLinear, _set_submodule


def linear_layers(model: nn.Module, select: Callable[[str], bool] = is_ternary_layer) -> list[str]:
    """Paths of the ``nn.Linear`` modules of ``model`` that ``select`` accepts, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and select(n)]


@torch.no_grad()
def ternarize_model(
    model: nn.Module,
    method: str = "absmean",
    group_size: int = 0,
    select: Callable[[str], bool] = is_ternary_layer,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Replace the selected Linears of ``model`` by ternary ones (``method``: absmean or twn).

    ``device`` is where the ternarization math runs (e.g. a GPU); the result stays on the
    layer's own device. ``progress(i, total)`` is called after each layer. Returns the paths.
    """
    names = linear_layers(model, select)
    for i, name in enumerate(names):
        lin = model.get_submodule(name)
        home = lin.weight.device
        w = lin.weight.to(device) if device is not None else lin.weight
        tw = ternarize(w, method, group_size).to(home)
        bias = lin.bias.detach() if lin.bias is not None else None
        _set_submodule(model, name, TernaryLinear.from_weight(tw, bias))
        del lin, w
        if progress is not None:
            progress(i + 1, len(names))
    return names
