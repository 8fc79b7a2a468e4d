"""Triton ternary kernels vs the independent PyTorch reference, on CPU under the Triton
interpreter (TRITON_INTERPRET=1, set here before any kernel module is imported).

Error measure: ``max|y - ref| / max|ref|`` with ``ref`` the float64 reference. Interpreter dots
are exact fp32, so the bounds below are output-rounding bounds of each dtype; on a GPU, fp32
inputs use tf32 when ``torch.backends.cuda.matmul.allow_tf32`` is set (looser, ~1e-3).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from ternaryflux.core.packing import padded_k  # noqa: E402
from ternaryflux.core.ternary_weight import TernaryWeight  # noqa: E402
from ternaryflux.kernels import reference, triton_backend  # noqa: E402
from ternaryflux.kernels.triton_gemm import ternary_gemm  # noqa: E402
from ternaryflux.kernels.triton_gemv import ternary_gemv  # noqa: E402
from ternaryflux.kernels.triton_quant import quantize_rows_int8  # noqa: E402

if not triton_backend.supports_forced(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.uint8), "a16"):
    pytest.skip(
        "Triton interpreter not usable (TRITON_INTERPRET unset before import?)", allow_module_level=True
    )

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# A16 bound vs the fp64 reference, per dtype (half an output ulp, relative to max|y|, plus margin)
A16_BOUND = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
A8_VS_A16_BOUND = 2.5e-2  # per-token int8 quantization error on Gaussian activations


def _weight(n: int, k: int, group_size: int, seed: int) -> TernaryWeight:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 3, (n, k), dtype=torch.uint8, generator=g)
    groups = 1 if group_size == 0 else k // group_size
    scale = torch.rand(n, groups, generator=g) * 0.05 + 0.01
    return TernaryWeight.from_codes(codes, scale, group_size)


def _inputs(m: int, n: int, k: int, dtype: torch.dtype, seed: int, bias: bool):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = (torch.randn(n, generator=g) * 0.1).to(dtype) if bias else None
    return x, b


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "non-finite output (an unwritten, poisoned element?)"
    return ((y.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _truth_a16(x, tw, b):
    return reference.ternary_linear_a16(
        x.double(), tw.packed, tw.scale, tw.in_features, None if b is None else b.double()
    )


# --------------------------------------------------------------------------- A16 tiled GEMM
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size,bias", [(0, True), (0, False), (128, True), (256, False)])
def test_gemm_a16_matches_reference(dtype, group_size, bias):
    # odd M and N tails; K = 640 -> 5 pack blocks (with group 256: K=768)
    m, n, k = 67, 93, 640 if group_size != 256 else 768
    tw = _weight(n, k, group_size, seed=group_size + 7)
    x, b = _inputs(m, n, k, dtype, seed=3, bias=bias)
    out_dtype = torch.float32 if dtype == torch.bfloat16 else dtype  # interpreter bf16 stores truncate
    out = torch.full((m, n), float("nan"), dtype=out_dtype)
    y = ternary_gemm(x, tw.packed, tw.scale, k, b, out=out, dot_fp32=dtype == torch.bfloat16).to(dtype)
    assert y.shape == (m, n)
    assert _rel(y, _truth_a16(x, tw, b)) <= A16_BOUND[dtype]
    same = reference.ternary_linear_a16(x, tw.packed, tw.scale, k, b)
    assert _rel(y, same) <= 2 * A16_BOUND[dtype]


def test_gemm_k_tail_ignores_padding_codes():
    # K = 200 is not a multiple of 128: the layout pads with code 1; garbage there must not matter
    m, n, k = 20, 64, 200
    tw = _weight(n, k, 0, seed=11)
    x, b = _inputs(m, n, k, torch.float32, seed=5, bias=True)
    corrupted = tw.packed.clone()
    # bytes of the last pack block hold k = 128 + j + 32 s; k >= 200 are padding -> set their codes to 0 (w=-1)
    full = torch.zeros(n, padded_k(k), dtype=torch.bool)
    full[:, k:] = True
    last = full[:, 128:].reshape(n, 4, 32)  # [n, s, j]
    for s in range(4):
        bits = last[:, s, :]
        corrupted[:, 32:64] &= ~(bits.to(torch.uint8) * (3 << (2 * s))).to(torch.uint8)
    assert not torch.equal(corrupted, tw.packed)
    want = _truth_a16(x, tw, b)
    for fn in (ternary_gemm, ternary_gemv):
        xin = x if fn is ternary_gemm else x[:5]
        y = fn(xin, corrupted, tw.scale, k, b)
        assert _rel(y, want[: xin.shape[0]]) <= A16_BOUND[torch.float32]


# --------------------------------------------------------------------------- small-M path
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "m,group_size,split_k", [(1, 0, 1), (2, 128, 1), (3, 0, 3), (11, 0, 1), (16, 256, 2)]
)
def test_gemv_a16_matches_reference(dtype, m, group_size, split_k):
    n, k = 77, 512
    tw = _weight(n, k, group_size, seed=m)
    x, b = _inputs(m, n, k, dtype, seed=m + 100, bias=True)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    y = ternary_gemv(x, tw.packed, tw.scale, k, b, split_k=split_k, dot_fp32=dtype == torch.bfloat16, out=out)
    assert y.dtype == dtype and y.shape == (m, n)
    assert _rel(y, _truth_a16(x, tw, b)) <= A16_BOUND[dtype]


# --------------------------------------------------------------------------- A8
def test_quant_kernel_is_bit_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 300, generator=g) * torch.logspace(-3, 3, 9).unsqueeze(1)
    x[0] = 0.0  # all-zero row: scale clamps to 1e-12/127, q = 0
    x[1, :5] = torch.tensor([127.0, 0.5, 1.5, -2.5, 63.5])  # exact .5 ties: round half to even
    for block in (None, 128):  # one-pass and two-pass (looped) branches
        q, s = quantize_rows_int8(x, block=block)
        q_ref, s_ref = reference.quantize_activations_int8(x)
        assert torch.equal(s, s_ref.squeeze(1))
        assert torch.equal(q, q_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,group_size", [(45, 0), (45, 256), (2, 0), (13, 128)])
def test_a8_matches_reference_and_bounds_vs_a16(dtype, m, group_size):
    n, k = 70, 512
    tw = _weight(n, k, group_size, seed=m + group_size)
    x, b = _inputs(m, n, k, dtype, seed=m, bias=True)
    y8 = triton_backend.run(x, tw.packed, tw.scale, k, b, "a8")
    assert y8.dtype == dtype and y8.shape == (m, n)
    ref8 = reference.ternary_linear_a8(x, tw.packed, tw.scale, k, b)
    # same integer products; only fp32-vs-fp64 epilogue rounding and one output rounding differ
    assert _rel(y8, ref8) <= {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert _rel(y8, _truth_a16(x, tw, b)) <= A8_VS_A16_BOUND


def test_poisoned_output_gemm_int8():
    m, n, k = 33, 65, 384
    tw = _weight(n, k, 0, seed=1)
    x, b = _inputs(m, n, k, torch.float32, seed=2, bias=False)
    q, s = quantize_rows_int8(x)
    out = torch.full((m, n), float("nan"))
    y = ternary_gemm(q, tw.packed, tw.scale, k, None, s, out=out)
    assert _rel(y, reference.ternary_linear_a8(x, tw.packed, tw.scale, k)) <= 1e-6


# --------------------------------------------------------------------------- backend entry
@pytest.mark.parametrize("act", ["a16", "a8"])
def test_backend_run_3d_input_and_non_contiguous(act):
    n, k = 40, 256
    tw = _weight(n, k, 0, seed=4)
    x = torch.randn(2, 30, 2 * k)[..., ::2]  # non-contiguous last dim
    y = triton_backend.run(x, tw.packed, tw.scale, k, None, act)
    fn = reference.ternary_linear_a8 if act == "a8" else reference.ternary_linear_a16
    assert y.shape == (2, 30, n)
    assert _rel(y, fn(x.contiguous(), tw.packed, tw.scale, k)) <= 1e-5


# --------------------------------------------------------------------------- explicit tiles
# The interpreter's autotune list is one square config; these launch chosen configs directly so
# the transposed product (acc[BLOCK_N, BLOCK_M], stored transposed) is checked on non-square
# tiles with M/N tails, and the group-128 fast path on K tiles spanning 1, 2 and 4 groups.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "config,group_size",
    [
        ((32, 64, 128, 4, 1), 0),
        ((64, 16, 256, 4, 1), 0),
        ((16, 32, 256, 4, 1), 128),
        ((32, 16, 512, 4, 1), 128),
    ],
    ids=["32x64x128", "64x16x256", "16x32x256-g128", "32x16x512-g128"],
)
def test_gemm_explicit_tiles_transposed_and_group128(dtype, config, group_size):
    m, n, k = 37, 45, 1024
    tw = _weight(n, k, group_size, seed=config[1] + group_size)
    x, b = _inputs(m, n, k, dtype, seed=9, bias=True)
    out_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    out = torch.full((m, n), float("nan"), dtype=out_dtype)
    y = ternary_gemm(x, tw.packed, tw.scale, k, b, out=out, dot_fp32=dtype == torch.bfloat16, config=config)
    assert _rel(y.to(dtype), _truth_a16(x, tw, b)) <= A16_BOUND[dtype]


@pytest.mark.parametrize("group_size", [0, 128])
def test_gemm_int8_explicit_tiles(group_size):
    m, n, k = 29, 50, 768
    tw = _weight(n, k, group_size, seed=5)
    x, _ = _inputs(m, n, k, torch.float32, seed=6, bias=False)
    q, s = quantize_rows_int8(x)
    out = torch.full((m, n), float("nan"))
    y = ternary_gemm(q, tw.packed, tw.scale, k, None, s, out=out, config=(16, 32, 128, 4, 1))
    assert _rel(y, reference.ternary_linear_a8(x, tw.packed, tw.scale, k)) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,group_size", [(1, 0), (1, 128), (3, 128), (9, 128)])
def test_gemv_register_accumulator_and_group128(dtype, m, group_size):
    # BLOCK_K 512 over K = 1536: three K tiles accumulate in registers before the one reduction;
    # with group 128 each tile spans four groups (the per-byte scale gather)
    n, k = 40, 1536
    tw = _weight(n, k, group_size, seed=m + 31)
    x, b = _inputs(m, n, k, dtype, seed=m, bias=True)
    cfg = (16, 512, 4, 1) if m <= 4 else (16, 128, 4, 1)
    y = ternary_gemv(x, tw.packed, tw.scale, k, b, dot_fp32=dtype == torch.bfloat16, config=cfg)
    assert _rel(y, _truth_a16(x, tw, b)) <= A16_BOUND[dtype]
    if m <= 4:  # A8 on the CUDA-core path folds the group scale too
        q, s = quantize_rows_int8(x)
        y8 = ternary_gemv(q, tw.packed, tw.scale, k, b, s, out_dtype=dtype, config=cfg)
        assert (
            _rel(y8, reference.ternary_linear_a8(x, tw.packed, tw.scale, k, b))
            <= {
                torch.float32: 1e-6,
                torch.bfloat16: 8e-3,
            }[dtype]
        )


# --------------------------------------------------------------------------- autotune lists
def test_autotune_configs_collapse_and_prune(monkeypatch):
    from ternaryflux.kernels import triton_common as tc

    assert len(tc.gemm_configs()) == 1 and len(tc.gemv_configs()) == 1  # interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gemm, gemv = tc.gemm_configs(), tc.gemv_configs()
    assert len(gemm) == len(tc.gemm_candidates()) and len(gemv) == len(tc.GEMV)

    class FakeX:  # prune reads only the device and dtype of x
        def __init__(self, dtype):
            self.dtype, self.device = dtype, torch.device("cuda", 0)

    caps = {"sm_80": (8, 0), "sm_86": (8, 6), "sm_89": (8, 9), "sm_90": (9, 0), "sm_120": (12, 0)}
    for fam, cap in caps.items():
        monkeypatch.setattr(tc, "device_capability", lambda d, cap=cap: cap)
        assert tc.target_family(cap) == fam
        for dtype, int8 in ((torch.bfloat16, False), (torch.float16, False), (torch.int8, True)):
            kind = tc.kind_of(dtype)
            for mb in (32, 256, 1024, 8192):
                for gs in (0, 128, 256):
                    args = {"x_ptr": FakeX(dtype), "M_BUCKET": mb}
                    kept = tc.prune_gemm_configs(gemm, args, GROUP_SIZE=gs, INT8_DOT=int8)
                    keys = [tc._gemm_key(c) for c in kept]
                    passed = tc.GEMM_PASSED.get((fam, kind, gs > 0))
                    assert keys and (passed is None or set(keys) <= passed), (fam, kind, mb, gs)
                    assert set(keys) <= set(tc.GEMM_LARGE_M if mb >= 512 else tc.GEMM_MID_M)
                    assert not int8 or not gs or all(gs % kk[2] == 0 for kk in keys)
            for bm, dot in ((1, False), (2, False), (4, False), (16, True)):
                args = {"x_ptr": FakeX(dtype), "BLOCK_M": bm, "USE_DOT": dot}
                kept = tc.prune_gemv_configs(gemv, args, GROUP_SIZE=128, INT8_DOT=int8 and dot)
                keys = [tc._gemv_key(c) for c in kept]
                assert keys and all(tc.gemv_block_ok(bm, kk, dot) for kk in keys)
                assert not (int8 and dot) or all(128 % kk[1] == 0 for kk in keys)
    assert [tc.m_bucket(m) for m in (1, 2, 3, 16, 17, 4608, 10**6)] == [1, 2, 4, 16, 32, 8192, 8192]


# --------------------------------------------------------------------------- FLUX.2 [klein], group 128
# klein 4B's linears at H = 3072 (qkv / single modulation 3H x H, attn out H x H, SwiGLU up and
# double modulation 6H x H, down H x 3H, single linear1 9H x H, linear2 H x 4H) with one scale per
# 128 inputs (Bonsai's layout), scaled down to H = 256 (the interpreter costs ~N x K): the same
# N:K ratios, K = 2 .. 8 groups, N a multiple of the interpreter's 64-row tile. Through the backend entry the model calls (the
# route: M <= 16 small-M kernel, larger M the GEMM), forced to Triton as on a GPU.
KLEIN_H = 256
KLEIN_SHAPES = {  # layer: (N, K)
    "qkv-3HxH": (3 * KLEIN_H, KLEIN_H),
    "attn-out-HxH": (KLEIN_H, KLEIN_H),
    "mlp0-6HxH": (6 * KLEIN_H, KLEIN_H),
    "mlp2-Hx3H": (KLEIN_H, 3 * KLEIN_H),
    "linear1-9HxH": (9 * KLEIN_H, KLEIN_H),
    "linear2-Hx4H": (KLEIN_H, 4 * KLEIN_H),
}


def _dequant_matmul(x: torch.Tensor, tw: TernaryWeight) -> torch.Tensor:
    """The plain torch answer: dequantize (codes - 1) x group scale, then one fp64 matmul."""
    return x.double() @ tw.dequantize(torch.float64).T


@pytest.mark.parametrize("layer", list(KLEIN_SHAPES))
def test_klein_shapes_group128_gemm_and_gemv(layer):
    from ternaryflux.kernels import dispatch

    n, k = KLEIN_SHAPES[layer]
    tw = _weight(n, k, 128, seed=n + k)
    assert tw.scale.shape == (n, k // 128) and k // 128 >= 2  # real per-group scales
    dtype = torch.bfloat16  # the model's activations
    for m in (1, 2, 3, 4, 32):  # small-M kernel (M = 1..4, CUDA-core path), tiled GEMM (M = 32)
        x, _ = _inputs(m, n, k, dtype, seed=m + n, bias=False)
        for act in ("a16", "a8"):
            b = dispatch.resolve_backend("triton", x, tw.packed, act, tw.scale)
            assert b.name == "triton", (layer, m, act)  # group 128 is not sent to torch
            kernel, grouped = triton_backend.route(x, tw.packed, tw.scale, act)[2::4]
            assert (kernel, grouped) == ("gemv" if m <= 16 else "gemm", True)
        y = triton_backend.run(x, tw.packed, tw.scale, k, None, "a16")
        assert y.dtype == dtype and y.shape == (m, n)
        assert _rel(y, _dequant_matmul(x, tw)) <= A16_BOUND[dtype], (layer, m)
        if m not in (1, 32):  # A8: one small-M and one GEMM call (the interpreter is slow)
            continue
        y8 = triton_backend.run(x, tw.packed, tw.scale, k, None, "a8")
        assert _rel(y8, reference.ternary_linear_a8(x, tw.packed, tw.scale, k)) <= 8e-3, (layer, m)
        assert _rel(y8, _dequant_matmul(x, tw)) <= A8_VS_A16_BOUND, (layer, m)
