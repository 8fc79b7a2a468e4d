"""Node-pack logic that runs without a ComfyUI host: file names, the LoRA low-rank branch, and
that importing the nodes package does not import ComfyUI. (The Ternarize FLUX node's calibrated
method is the offline tool's: tests/test_nodes_calibrated.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ternaryflux.core.ternarize import ternarize
from ternaryflux.kernels import ternary_linear
from ternaryflux.nodes.lowrank import apply_branches, dense_delta, plan_lowrank
from ternaryflux.nodes.naming import FilenameError, resolve_inside, validate_filename

# ----------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    "name, expect",
    [
        ("flux_ternary", "flux_ternary.safetensors"),
        ("flux.safetensors", "flux.safetensors"),
        ("my models/flux-dev v2", "my models/flux-dev v2.safetensors"),
        ("  padded  ", "padded.safetensors"),
        ("FLUX.SAFETENSORS", "FLUX.SAFETENSORS"),
    ],
)
def test_filename_accepted(name, expect):
    assert validate_filename(name) == expect


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "../x",
        "a/../../x",
        "/abs/path",
        "C:\\x",
        "c:x",
        "a\\b",
        ".hidden",
        "a/.b",
        "a//b",
        "x\x00y",
        "con",
        "NUL.safetensors",
        "we|rd",
        "star*",
        "a" * 250,
    ],
)
def test_filename_rejected(name):
    with pytest.raises(FilenameError):
        validate_filename(name)


def test_filename_subfolders_can_be_refused():
    with pytest.raises(FilenameError, match="must not contain"):
        validate_filename("a/b", allow_subfolders=False)


def test_resolve_inside_catches_symlink_escape(tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    (base / "link").symlink_to(tmp_path, target_is_directory=True)
    assert resolve_inside(base, "ok.safetensors") == (base / "ok.safetensors").resolve()
    with pytest.raises(FilenameError, match="leaves the folder"):
        resolve_inside(base, "link/evil.safetensors")


# ----------------------------------------------------------------------------- LoRA low-rank branch


class FakeLoRA:
    """Duck-typed stand-in for comfy.weight_adapter.LoRAAdapter."""

    name = "lora"

    def __init__(self, up, down, alpha=None, mid=None, dora=None, reshape=None):
        self.weights = (up, down, alpha, mid, dora, reshape)


def _ternary(n=96, k=256, seed=0, group_size=0):
    g = torch.Generator().manual_seed(seed)
    return ternarize(torch.randn(n, k, generator=g) / k**0.5, "absmean", group_size)


def _dense_merge(w: torch.Tensor, patches) -> torch.Tensor:
    """Independent re-statement of comfy.lora.calculate_weight for LoRA patches."""
    w = w.clone()
    for strength, ad, strength_model, offset, _fn in patches:
        up, down, alpha = ad.weights[0].float(), ad.weights[1].float(), ad.weights[2]
        a = alpha / down.shape[0] if alpha is not None else 1.0
        view = w if offset is None else w.narrow(offset[0], offset[1], offset[2])
        view *= strength_model
        view += strength * a * (up @ down)
    return w


def _lora(n, k, r, seed, alpha=None):
    g = torch.Generator().manual_seed(seed)
    return FakeLoRA(0.2 * torch.randn(n, r, generator=g), 0.2 * torch.randn(r, k, generator=g), alpha)


@pytest.mark.parametrize("group_size", [0, 128])
def test_lowrank_branch_equals_dense_merge(group_size):
    n, k = 96, 256
    tw = _ternary(n, k, group_size=group_size)
    patches = [
        (1.0, _lora(n, k, 4, 1, alpha=4.0), 1.0, None, None),
        (0.5, _lora(n, k, 8, 2, alpha=2.0), 0.8, None, None),  # strength_model scales what came before
        (0.7, _lora(32, k, 2, 3), 1.0, (0, 32, 32), None),  # q/k/v-style output slice
        (1.3, _lora(n, 128, 2, 4), 1.0, (1, 128, 128), None),  # input slice
    ]
    plan = plan_lowrank(patches)
    assert plan is not None and len(plan.branches) == 4 and plan.base_scale == pytest.approx(0.8)
    x = torch.randn(3, 5, k, generator=torch.Generator().manual_seed(9))
    y = ternary_linear(x, tw.packed, tw.scale, k, None, backend="torch") * plan.base_scale
    y = apply_branches(y, x, plan.branches)
    ref = x @ _dense_merge(tw.dequantize(), patches).T
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # and the plan's dense view is the same delta
    torch.testing.assert_close(
        plan.base_scale * tw.dequantize() + dense_delta((n, k), plan),
        _dense_merge(tw.dequantize(), patches),
        rtol=1e-5,
        atol=1e-6,
    )


def test_lowrank_zero_strength_is_a_no_op():
    tw = _ternary()
    plan = plan_lowrank([(0.0, _lora(96, 256, 4, 1), 1.0, None, None)])
    x = torch.randn(4, 256)
    y = ternary_linear(x, tw.packed, tw.scale, 256, None, backend="torch")
    assert torch.equal(apply_branches(y.clone(), x, plan.branches), y)


@pytest.mark.parametrize(
    "patch",
    [
        (
            1.0,
            FakeLoRA(torch.ones(4, 2), torch.ones(2, 8), None, None, torch.ones(4)),
            1.0,
            None,
            None,
        ),  # DoRA
        (
            1.0,
            FakeLoRA(torch.ones(4, 2), torch.ones(2, 8), None, torch.ones(2, 2, 1, 1)),
            1.0,
            None,
            None,
        ),  # LoCon mid
        (1.0, _lora(4, 8, 2, 0), 1.0, None, lambda a: a),  # function hook
        (1.0, _lora(2, 8, 2, 0), 0.5, (0, 0, 2), None),  # scaled slice: strength_model only on the slice
        (1.0, ("diff", (torch.ones(4, 8),)), 1.0, None, None),  # not an adapter
        (1.0, type("LoKr", (), {"name": "lokr", "weights": (None,) * 9})(), 1.0, None, None),
    ],
)
def test_non_plain_patches_take_the_exact_path(patch):
    assert plan_lowrank([(1.0, _lora(4, 8, 2, 5), 1.0, None, None), patch]) is None


# ----------------------------------------------------------------------------- packaging


def test_nodes_package_imports_without_comfyui():
    code = (
        "import sys, ternaryflux.nodes, ternaryflux.nodes.lowrank, ternaryflux.nodes.naming\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
