"""The teacher cache: boundaries equal the whole teacher's block outputs, velocities its
forward; reused when complete; refuses before writing when the disk is too small; an
out-of-disk failure mid-build leaves only complete files and the next build finishes it."""

from __future__ import annotations

import errno

import pytest
import torch
from ternaryflux.core.calibration_data import read_calibration
from ternaryflux.core.flux_model import flux_from_state_dict
from ternaryflux.quant import teacher_cache as tc
from ternaryflux.quant.capture import BlockCapture
from ternaryflux.quant.errors import QuantizeError
from ternaryflux.quant.sources import open_source
from ternaryflux.quant.testing import write_structured_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("tcache")
    paths = write_structured_fixture(d, cal_prompts=2, held_prompts=1)
    src = open_source(paths["model"])
    samples = read_calibration(paths["cal"])[:3]
    return {"src": src, "samples": samples, "sha": tc.sha256_files(src.files), "dir": d}


def test_boundaries_and_velocity_equal_the_whole_teacher(fx, tmp_path):
    cache = tc.build_teacher_cache(
        fx["src"], fx["samples"], tmp_path, teacher_sha256=fx["sha"], progress=False
    )
    teacher = flux_from_state_dict(fx["src"].state_dict(), dtype=torch.float32)
    names = [s.name for s in tc.stages(teacher.config)]
    for j, s in enumerate(fx["samples"]):
        with torch.no_grad(), BlockCapture(teacher, names, inputs=False) as cap:
            v = teacher.forward_latent(**s.as_inputs(None, torch.float32))
        torch.testing.assert_close(cache.velocity(j), v, rtol=0, atol=0)
        for b, n in enumerate(names):
            got = cache.boundary(b + 1, j)
            want = cap.last(n)[2]
            assert list(got) == (["img", "txt"] if n.startswith("double") else ["x"])
            for g, w in zip(got.values(), want):
                torch.testing.assert_close(g, w, rtol=0, atol=0)
    # complete: a second build reuses it (nothing rewritten)
    files = sorted(cache.directory.glob("*.safetensors"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = tc.build_teacher_cache(
        fx["src"], fx["samples"], tmp_path, teacher_sha256=fx["sha"], progress=False
    )
    assert again.directory == cache.directory
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # another teacher (hash) or dtype gets its own folder
    other = tc.build_teacher_cache(
        fx["src"], fx["samples"], tmp_path, teacher_sha256="0" * 64, dtype="bfloat16", progress=False
    )
    assert other.directory != cache.directory
    from ternaryflux.quant.sources import SafetensorsReader

    assert SafetensorsReader(other.directory / "b001.safetensors").dtype_name("s0.img") == "BF16"


def test_refuses_when_the_disk_is_too_small(fx, tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(tc.shutil, "disk_usage", lambda p: Usage())
    with pytest.raises(QuantizeError, match=r"needs .* GB more .* free"):
        tc.build_teacher_cache(fx["src"], fx["samples"], tmp_path, teacher_sha256=fx["sha"], progress=False)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_out_of_disk_mid_build_then_resumed(fx, tmp_path, monkeypatch):
    real = tc.atomic_save_safetensors
    calls = {"n": 0}

    def failing(tensors, path, metadata):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata)

    monkeypatch.setattr(tc, "atomic_save_safetensors", failing)
    with pytest.raises(QuantizeError, match="out of disk space"):
        tc.build_teacher_cache(fx["src"], fx["samples"], tmp_path, teacher_sha256=fx["sha"], progress=False)
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["b000.safetensors", "b001.safetensors", "const.safetensors"], written
    monkeypatch.setattr(tc, "atomic_save_safetensors", real)
    resumed = tc.build_teacher_cache(
        fx["src"], fx["samples"], tmp_path, teacher_sha256=fx["sha"], progress=False
    )
    fresh = tc.build_teacher_cache(
        fx["src"], fx["samples"], tmp_path / "fresh", teacher_sha256=fx["sha"], progress=False
    )
    for f in sorted(fresh.directory.glob("*.safetensors")):
        assert (resumed.directory / f.name).read_bytes() == f.read_bytes(), f.name


def test_bytes_estimate_matches_the_files(fx, tmp_path):
    cache = tc.build_teacher_cache(
        fx["src"], fx["samples"], tmp_path, teacher_sha256=fx["sha"], progress=False
    )
    est = tc.cache_bytes(fx["src"].config, fx["samples"], "float32")
    assert 0.9 * cache.manifest["bytes"] <= est <= 1.1 * cache.manifest["bytes"], (
        est,
        cache.manifest["bytes"],
    )
