"""Backend dispatch: forcing, environment override, fallback on a (simulated) compile failure,
and the rule that CPU tensors never reach Triton without the interpreter."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from ternaryflux.core.ternary_weight import TernaryWeight  # noqa: E402
from ternaryflux.kernels import dispatch, reference, reset_disabled, ternary_linear, triton_backend  # noqa: E402
from ternaryflux.kernels.triton_common import triton_usable  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_usable(), reason="triton not installed")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_BACKEND, raising=False)
    reset_disabled()
    yield
    reset_disabled()


@pytest.fixture
def layer():
    g = torch.Generator().manual_seed(0)
    n, k = 48, 256
    tw = TernaryWeight.from_codes(
        torch.randint(0, 3, (n, k), dtype=torch.uint8, generator=g), torch.rand(n, 1, generator=g) + 0.5
    )
    x = torch.randn(20, k, generator=g)
    b = torch.randn(n, generator=g)
    return x, tw, b


@pytest.fixture
def triton_calls(monkeypatch):
    """Count calls that reach the Triton backend's ``run`` (still running it)."""
    calls = []
    real = triton_backend.run

    def spy(*a, **kw):
        calls.append(a[0].device)
        return real(*a, **kw)

    monkeypatch.setattr(dispatch._BACKENDS["triton"], "run", spy)
    return calls


def test_registry_has_triton_above_torch():
    assert dispatch.available_backends().index("triton") < dispatch.available_backends().index("torch")


def test_unknown_backend_raises(layer):
    x, tw, b = layer
    with pytest.raises(ValueError, match="unknown ternary backend"):
        ternary_linear(x, tw.packed, tw.scale, 256, b, backend="cutlass")


def test_auto_on_cpu_uses_torch_even_with_interpreter(layer, triton_calls):
    x, tw, b = layer
    y = ternary_linear(x, tw.packed, tw.scale, 256, b)
    assert triton_calls == []
    assert torch.equal(y, reference.ternary_linear_a16(x, tw.packed, tw.scale, 256, b))
    assert not triton_backend.supports(x, tw.packed, "a16")  # auto predicate: CUDA only


@needs_triton
@pytest.mark.parametrize("how", ["argument", "env"])
@pytest.mark.parametrize("act", ["a16", "a8"])
def test_forced_triton_on_cpu_runs_interpreter(layer, triton_calls, monkeypatch, how, act):
    x, tw, b = layer
    if how == "env":
        monkeypatch.setenv(dispatch.ENV_BACKEND, "triton")
        y = ternary_linear(x, tw.packed, tw.scale, 256, b, act=act)
    else:
        y = ternary_linear(x, tw.packed, tw.scale, 256, b, backend="triton", act=act)
    assert triton_calls == [torch.device("cpu")]
    fn = reference.ternary_linear_a8 if act == "a8" else reference.ternary_linear_a16
    torch.testing.assert_close(y, fn(x, tw.packed, tw.scale, 256, b), rtol=1e-5, atol=1e-5)


def test_forced_torch_never_calls_triton(layer, triton_calls, monkeypatch):
    x, tw, b = layer
    monkeypatch.setenv(dispatch.ENV_BACKEND, "triton")  # an explicit argument beats the env var
    ternary_linear(x, tw.packed, tw.scale, 256, b, backend="torch")
    assert triton_calls == []


@needs_triton
def test_cpu_never_reaches_triton_without_interpreter(layer, triton_calls, monkeypatch, caplog):
    x, tw, b = layer
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with caplog.at_level(logging.WARNING, logger="ternaryflux.kernels.dispatch"):
        y = ternary_linear(x, tw.packed, tw.scale, 256, b, backend="triton")
    assert triton_calls == []
    assert "cannot run this call" in caplog.text
    assert torch.equal(y, reference.ternary_linear_a16(x, tw.packed, tw.scale, 256, b))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):  # and the backend itself refuses
        triton_backend.run(x, tw.packed, tw.scale, 256, b, "a16")


@needs_triton
@pytest.mark.parametrize("m", [20, 3], ids=["gemm", "gemv"])
def test_compile_failure_falls_back_once(layer, monkeypatch, caplog, m):
    from ternaryflux.kernels import triton_gemm, triton_gemv

    x, tw, b = layer
    x = x[:m]
    triton_backend._load_kernels()
    attempts = []

    def boom(*a, **kw):
        attempts.append(1)
        raise RuntimeError("simulated Triton compile failure")

    monkeypatch.setattr(triton_gemm, "ternary_gemm", boom)
    monkeypatch.setattr(triton_gemv, "ternary_gemv", boom)
    want = reference.ternary_linear_a16(x, tw.packed, tw.scale, 256, b)
    with caplog.at_level(logging.WARNING, logger="ternaryflux.kernels.dispatch"):
        y1 = ternary_linear(x, tw.packed, tw.scale, 256, b, backend="triton")
        y2 = ternary_linear(x, tw.packed, tw.scale, 256, b, backend="triton")
    assert torch.equal(y1, want) and torch.equal(y2, want)
    assert attempts == [1]  # disabled after the first failure
    assert caplog.text.count("simulated Triton compile failure") == 1
    assert "triton" not in dispatch.available_backends()
    reset_disabled()
    assert "triton" in dispatch.available_backends()


def test_custom_backend_priority_and_predicate(layer):
    x, tw, b = layer
    seen = []

    def run(x, packed, scale, k, bias, act):
        seen.append(act)
        return reference.ternary_linear_a16(x, packed, scale, k, bias)

    dispatch.register_backend(dispatch.Backend("fake", run, lambda x, p, act: act == "a16", priority=500))
    try:
        ternary_linear(x, tw.packed, tw.scale, 256, b)
        ternary_linear(x, tw.packed, tw.scale, 256, b, act="a8")  # predicate says no -> torch
        assert seen == ["a16"]
    finally:
        dispatch._BACKENDS.pop("fake")


def test_import_and_run_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import ternaryflux.kernels as K\n"
        "from ternaryflux.kernels.triton_common import triton_usable\n"
        "from ternaryflux.core.ternary_weight import TernaryWeight\n"
        "assert not triton_usable()\n"
        "tw = TernaryWeight.from_codes(torch.ones(8, 128, dtype=torch.uint8) * 2, torch.ones(8, 1))\n"
        "x = torch.ones(3, 128)\n"
        "y = K.ternary_linear(x, tw.packed, tw.scale, 128, backend='triton')\n"
        "assert torch.equal(y, torch.full((3, 8), 128.0)), y\n"
        "assert 'triton' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
