"""Streaming quantization keeps memory bounded: on a few-hundred-MB FLUX-shaped file the
quantizer's peak RSS (measured in a fresh subprocess) grows by far less than the file size."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from ternaryflux.core.checkpoint import load_checkpoint
from ternaryflux.core.defaults import DEFAULT_METHOD
from ternaryflux.core.flux_layout import FluxConfig
from ternaryflux.core.packing import unpack_2bit
from ternaryflux.core.ternarize import absmean, ternarize, ternarize_with_error, twn
from ternaryflux.core.ternary_weight import TernaryWeight
from ternaryflux.quant.sources import open_source
from ternaryflux.quant.testing import write_synthetic_flux

# Peak RSS from VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent
# at fork, so a child of a large pytest process would report the parent's size.
CHILD = r"""
import json, sys, psutil
from ternaryflux.quantize_tool.cli import main
from ternaryflux.quant.flux import peak_rss_bytes
base = psutil.Process().memory_info().rss
rc = main(["quantize", sys.argv[1], "-o", sys.argv[2], "--no-progress", "--device", "cpu"])
print(json.dumps({"rc": rc, "base": base, "peak": peak_rss_bytes()}))
"""


def test_streaming_quantize_peak_rss_is_bounded(tmp_path):
    cfg = FluxConfig(hidden_size=1024, num_heads=8, depth=2, depth_single_blocks=4)
    src = tmp_path / "flux-1024.safetensors"
    size = write_synthetic_flux(src, cfg)
    assert size > 250e6
    out = tmp_path / "out.safetensors"
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(out)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["rc"] == 0
    grew = m["peak"] - m["base"]
    largest_f32 = 6 * 1024 * 1024 * 4  # img_mod.lin, the largest tensor, in float32
    print(f"file {size / 1e6:.0f} MB, peak RSS growth {grew / 1e6:.0f} MB")
    assert grew < 0.5 * size, (grew, size)
    assert grew < 6 * largest_f32, grew
    ck = load_checkpoint(out)
    assert len(ck.ternary_layers) == 2 * 10 + 4 * 3
    s = open_source(src)
    k = "double_blocks.1.img_mlp.2"
    ref = ternarize(s.get(f"{k}.weight"), ck.metadata.method)  # the CLI default (core/defaults.py)
    assert ck.metadata.method == DEFAULT_METHOD
    _close(ck.state_dict[f"{k}.weight"], ck.state_dict[f"{k}.weight_scale"], ref)


def _close(packed, scale, ref):
    """Same as the whole-matrix result up to the last bit of the per-row mean (the reduction
    order depends on the slab shape), hence at most a knife-edge code or two."""
    assert torch.allclose(scale, ref.scale, rtol=1e-6, atol=0)
    diff = (unpack_2bit(packed, ref.shape[1]) != ref.codes()).float().mean()
    assert diff <= 1e-5, diff


def test_chunked_equals_whole_matrix():
    g = torch.Generator().manual_seed(0)
    for shape in [(300, 256), (1000, 512), (7, 1280)]:
        w = torch.randn(shape, generator=g).bfloat16()
        for method, gs in [("absmean", 0), ("twn", 0), ("absmean", 256)]:
            tw, err = ternarize_with_error(w, method, gs, chunk_elems=4096)
            # independent reference: the whole-matrix rounding functions, not the chunked driver
            if method == "absmean":
                codes, scale = absmean(w.float(), "group" if gs else "channel", gs)
            else:
                codes, scale = twn(w.float(), gs)
            ref = TernaryWeight.from_codes(codes, scale, gs)
            _close(tw.packed, tw.scale, ref)
            want = float((w.float() - ref.dequantize()).norm() / w.float().norm())
            assert abs(err - want) < 1e-4


def test_memory_sink_equals_the_file(tmp_path):
    """The Ternarize node's in-memory sink gives exactly what loading the CLI's file gives."""
    from safetensors.torch import load_file
    from ternaryflux.core.checkpoint import METADATA_KEY, checkpoint_from_tensors
    from ternaryflux.quant.algorithms import TernaryConfig
    from ternaryflux.quant.flux import quantize_flux_tensors
    from ternaryflux.quant.writer import MemoryWriter

    cfg = FluxConfig(
        hidden_size=128, num_heads=1, depth=1, depth_single_blocks=1, context_in_dim=64, vec_in_dim=32
    )
    path = tmp_path / "f.safetensors"
    write_synthetic_flux(path, cfg)
    sd = load_file(path)
    out = tmp_path / "t.safetensors"
    for packing in ("2bit", "base3"):
        quantize_flux_tensors(
            sd, out, TernaryConfig(method="twn", group_size=128), packing=packing, device="cpu"
        )
        sink = MemoryWriter()
        quantize_flux_tensors(
            sd, sink, TernaryConfig(method="twn", group_size=128), packing=packing, device="cpu"
        )
        mem = checkpoint_from_tensors(sink.tensors, sink.metadata[METADATA_KEY])
        disk = load_checkpoint(out)
        assert mem.metadata == disk.metadata and mem.ternary_layers == disk.ternary_layers
        assert mem.state_dict.keys() == disk.state_dict.keys()
        assert all(torch.equal(mem.state_dict[k], disk.state_dict[k]) for k in disk.state_dict)


def test_memory_writer_checks_like_the_file_writer():
    import pytest
    from ternaryflux.quant.writer import MemoryWriter

    w = MemoryWriter().start([("a", torch.float32, (2,)), ("b", torch.uint8, (1,))])
    with pytest.raises(ValueError, match="only 1 of 2"), w:
        with pytest.raises(ValueError, match="header order"):
            w.write("b", torch.zeros(1, dtype=torch.uint8))
        with pytest.raises(ValueError, match="header says"):
            w.write("a", torch.zeros(3))
        w.write("a", torch.ones(2))
    # closing with a tensor missing is an error and keeps nothing
    assert w.tensors == {}
