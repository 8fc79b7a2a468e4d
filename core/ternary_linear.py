"""``TernaryLinear``: an ``nn.Linear`` replacement that holds one packed ternary weight.

State-dict entries (identical to the checkpoint keys of one ternary layer):
``weight`` (uint8 packed codes ``[N, Kp/4]``), ``weight_scale`` (float32 ``[N, G]``),
``weight_shape`` (int64 ``[2]`` = logical (N, K)) and ``bias`` (source dtype, optional).
The forward pass dispatches to :func:`ternaryflux.kernels.ternary_linear`, which never keeps
a dense copy of the weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..kernels import ternary_linear
from .checkpoint import check_layer
from .packing import packed_2bit_cols
from .ternary_weight import TernaryWeight, num_groups

_ZERO_CODES = 0b01010101  # four codes of 1 = four zero weights


class TernaryLinear(nn.Module):
    """Linear layer with a ternary weight. ``backend`` and ``act`` select the kernel
    (see :func:`ternaryflux.kernels.ternary_linear`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = 0,
        device=None,
        bias_dtype: torch.dtype | None = None,
        backend: str = "auto",
        act: str = "a16",
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.backend = backend
        self.act = act
        self.register_buffer(
            "weight",
            torch.full(
                (out_features, packed_2bit_cols(in_features)), _ZERO_CODES, dtype=torch.uint8, device=device
            ),
        )
        self.register_buffer(
            "weight_scale",
            torch.ones(out_features, num_groups(in_features, group_size), dtype=torch.float32, device=device),
        )
        self.register_buffer(
            "weight_shape", torch.tensor([out_features, in_features], dtype=torch.int64, device=device)
        )
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device)) if bias else None

    @classmethod
    def from_weight(cls, tw: TernaryWeight, bias: torch.Tensor | None = None, **kw) -> TernaryLinear:
        m = cls(tw.in_features, tw.out_features, bias is not None, tw.group_size, device="meta", **kw)
        m.weight = tw.packed
        m.weight_scale = tw.scale
        m.weight_shape = torch.tensor(tw.shape, dtype=torch.int64, device=tw.packed.device)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return m

    def ternary_weight(self) -> TernaryWeight:
        return TernaryWeight(
            self.weight, self.weight_scale, (self.out_features, self.in_features), self.group_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ternary_linear(
            x, self.weight, self.weight_scale, self.in_features, self.bias, backend=self.backend, act=self.act
        )

    def extra_repr(self) -> str:
        g = f"group_size={self.group_size}" if self.group_size else "per-channel scale"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{g}, backend={self.backend}, act={self.act}"
        )


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def ternary_modules(model: nn.Module) -> Iterable[tuple[str, TernaryLinear]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, TernaryLinear))


def replace_with_ternary_from_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Swap every Linear whose ``<path>.weight_scale`` is in ``sd`` for an empty (meta)
    :class:`TernaryLinear` of the stored logical shape; returns the swapped paths."""
    swapped = []
    for key in sd:
        if not key.endswith(".weight_scale"):
            continue
        path = key[: -len(".weight_scale")]
        n, k, group_size = check_layer(sd, path)
        old = model.get_submodule(path)
        has_bias = getattr(old, "bias", None) is not None
        bias_dtype = old.bias.dtype if has_bias else None
        set_submodule(
            model, path, TernaryLinear(k, n, has_bias, group_size, device="meta", bias_dtype=bias_dtype)
        )
        swapped.append(path)
    return swapped


def set_backend(model: nn.Module, backend: str = "auto", act: str = "a16") -> None:
    """Choose the kernel backend and activation precision for every ternary layer of ``model``."""
    for _, m in ternary_modules(model):
        m.backend, m.act = backend, act
