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
def test_launch_failure_disables_only_its_route(layer, monkeypatch, caplog, triton_calls, m):
    from ternaryflux.kernels import triton_gemm, triton_gemv

    x, tw, b = layer
    other = x[:3] if m == 20 else x  # the other kernel: a route that did not fail
    x = x[:m]
    triton_backend._load_kernels()
    attempts = []
    broken = triton_gemm if m == 20 else triton_gemv
    name = "ternary_gemm" if m == 20 else "ternary_gemv"

    def boom(*a, **kw):
        attempts.append(1)
        raise RuntimeError("simulated Triton launch failure")

    monkeypatch.setattr(broken, name, boom)
    want = reference.ternary_linear_a16(x, tw.packed, tw.scale, 256, b)
    with caplog.at_level(logging.WARNING, logger="ternaryflux.kernels.dispatch"):
        y1 = ternary_linear(x, tw.packed, tw.scale, 256, b, backend="triton")
        y2 = ternary_linear(x, tw.packed, tw.scale, 256, b, backend="triton")
    assert torch.equal(y1, want) and torch.equal(y2, want)
    assert attempts == [1]  # the route is disabled after the first failure
    assert caplog.text.count("simulated Triton launch failure") == 1
    assert "triton" in dispatch.available_backends()  # ... but not the whole backend
    routes = dispatch.disabled_routes()
    assert len(routes) == 1 and routes[0][0] == "triton"
    assert routes[0][1][2] == ("gemm" if m == 20 else "gemv")
    n_calls = len(triton_calls)
    y3 = ternary_linear(other, tw.packed, tw.scale, 256, b, backend="triton")  # other kernel still runs
    assert len(triton_calls) == n_calls + 1
    torch.testing.assert_close(y3, reference.ternary_linear_a16(other, tw.packed, tw.scale, 256, b))
    reset_disabled()
    assert dispatch.disabled_routes() == []


def test_backend_without_route_is_disabled_whole(layer, caplog):
    x, tw, b = layer
    calls = []

    def run(*a):
        calls.append(1)
        raise RuntimeError("broken backend")

    dispatch.register_backend(dispatch.Backend("flaky", run, lambda x, p, act: True, priority=500))
    try:
        with caplog.at_level(logging.WARNING, logger="ternaryflux.kernels.dispatch"):
            y = ternary_linear(x, tw.packed, tw.scale, 256, b)
            ternary_linear(x, tw.packed, tw.scale, 256, b, act="a8")
        assert calls == [1] and "flaky" not in dispatch.available_backends()
        assert torch.equal(y, reference.ternary_linear_a16(x, tw.packed, tw.scale, 256, b))
    finally:
        dispatch._BACKENDS.pop("flaky")


def test_triton_needs_sm80_and_tf32_for_fp32(monkeypatch):
    """The auto predicate on (faked) CUDA capabilities: sm80+ only; fp32 A16 only with TF32."""
    from ternaryflux.kernels import triton_common

    x = torch.zeros(2, 128)
    packed = torch.zeros(4, 32, dtype=torch.uint8)
    monkeypatch.setattr(triton_common, "triton_usable", lambda: True)
    monkeypatch.setattr(triton_backend, "triton_usable", lambda: True)
    fake = torch.device("cuda", 0)

    class T:  # a stand-in with a CUDA device: supports() reads only dtype and device
        def __init__(self, t):
            self.dtype, self.device = t.dtype, fake

    cap = {"v": (7, 5)}
    monkeypatch.setattr(triton_backend, "device_capability", lambda d: cap["v"])
    xb = T(x.to(torch.bfloat16))
    assert not triton_backend.supports(xb, T(packed), "a16")  # Turing: torch
    cap["v"] = (8, 6)
    assert triton_backend.supports(xb, T(packed), "a16") and triton_backend.supports(xb, T(packed), "a8")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert not triton_backend.supports(T(x), T(packed), "a16")  # fp32 without TF32: torch
        assert triton_backend.supports(T(x), T(packed), "a8")
        torch.backends.cuda.matmul.allow_tf32 = True
        assert triton_backend.supports(T(x), T(packed), "a16")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_import_graph_has_no_cycle():
    """ops imports dispatch (never the reverse); the public function lives above both."""
    import ast
    import pathlib

    src = pathlib.Path(dispatch.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    assert "ops" not in imported and "api" not in imported
    from ternaryflux import kernels
    from ternaryflux.kernels import api

    assert kernels.ternary_linear is api.ternary_linear
    assert hasattr(torch.ops.ternaryflux, "ternary_linear")


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
