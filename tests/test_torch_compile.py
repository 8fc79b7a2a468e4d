"""``torch.compile`` of TernaryLinear through the ``ternaryflux::ternary_linear`` custom op:
no graph breaks (fullgraph=True), same numbers as eager; the op passes ``opcheck``; autograd."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from ternaryflux.core.ternary_linear import TernaryLinear  # noqa: E402
from ternaryflux.core.ternary_weight import TernaryWeight  # noqa: E402
from ternaryflux.kernels import reference, ternary_linear_op  # noqa: E402
from torch import nn  # noqa: E402


def _tl(n: int, k: int, seed: int, group_size: int = 0, act: str = "a16") -> TernaryLinear:
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size == 0 else k // group_size
    tw = TernaryWeight.from_codes(
        torch.randint(0, 3, (n, k), dtype=torch.uint8, generator=g),
        torch.rand(n, groups, generator=g) * 0.1,
        group_size,
    )
    return TernaryLinear.from_weight(tw, torch.randn(n, generator=g), act=act)


@pytest.mark.parametrize("act", ["a16", "a8"])
def test_compile_fullgraph_matches_eager(act):
    torch._dynamo.reset()
    model = nn.Sequential(_tl(96, 128, 0, act=act), nn.GELU(), _tl(64, 96, 1, group_size=0, act=act))
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        y = compiled(x)
        y2 = compiled(torch.randn(2, 7, 128))  # a second shape: recompile or dynamic, no break
    assert y2.shape == (2, 7, 64)
    torch.testing.assert_close(y, eager, rtol=0, atol=0)
    # the eager model itself matches the independent reference
    h = reference.ternary_linear_a16(x, model[0].weight, model[0].weight_scale, 128, model[0].bias)
    if act == "a16":
        ref = reference.ternary_linear_a16(
            torch.nn.functional.gelu(h), model[2].weight, model[2].weight_scale, 96, model[2].bias
        )
        torch.testing.assert_close(eager, ref)


def test_op_has_no_graph_break_and_appears_in_graph():
    torch._dynamo.reset()
    layer = _tl(32, 256, 3, group_size=128)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        torch.compile(layer, fullgraph=True, backend=backend)(torch.randn(4, 256))
    assert len(graphs) == 1
    assert "ternaryflux.ternary_linear" in graphs[0].code


def test_opcheck():
    layer = _tl(24, 128, 4)
    x = torch.randn(3, 128)
    for args in [
        (x, layer.weight, layer.weight_scale, 128, layer.bias, "torch", "a16"),
        (x, layer.weight, layer.weight_scale, 128, None, "auto", "a8"),
    ]:
        torch.library.opcheck(ternary_linear_op, args)


def test_autograd_through_op_matches_reference():
    layer = _tl(40, 256, 5, group_size=128)
    layer.weight_scale.requires_grad_(True)
    layer.bias.requires_grad_(True)
    x = torch.randn(6, 256, requires_grad=True)
    y = layer(x)
    (y.square().sum()).backward()
    gx, gs, gb = x.grad.clone(), layer.weight_scale.grad.clone(), layer.bias.grad.clone()

    x2 = x.detach().clone().requires_grad_(True)
    s2 = layer.weight_scale.detach().clone().requires_grad_(True)
    b2 = layer.bias.detach().clone().requires_grad_(True)
    y2 = reference.ternary_linear_a16(x2, layer.weight, s2, 256, b2)
    y2.square().sum().backward()
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(gx, x2.grad)
    torch.testing.assert_close(gs, s2.grad)
    torch.testing.assert_close(gb, b2.grad)
