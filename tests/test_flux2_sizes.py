"""The FLUX.2 sizes table (bench/flux2_sizes.py, bench/results/flux2_sizes.json): the size
model is exact on real files written by the tool, and the committed table is what the code
computes now."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from ternaryflux.core.checkpoint import (
    METADATA_KEY,
    TernaryMetadata,
    load_checkpoint,
    read_header,
    write_checkpoint,
)
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux2_config
from ternaryflux.quant.algorithms import TernaryConfig
from ternaryflux.quant.flux import quantize_flux_tensors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import flux2_sizes  # noqa: E402
import flux_builders as fb  # noqa: E402


@pytest.mark.parametrize("policy", ["blocks", "blocks+modulation"])
@pytest.mark.parametrize("packing", ["2bit", "base3"])
def test_size_model_is_exact_on_a_written_flux2_checkpoint(tmp_path: Path, packing: str, policy: str):
    cfg = tiny_flux2_config(hidden=256, depth=1, depth_single=2, context_in_dim=128)
    sd = make_flux_state_dict(cfg, seed=0)
    out = tmp_path / "t.safetensors"
    quantize_flux_tensors(
        sd, out, TernaryConfig(method="absmean", group_size=128), packing=packing, device="cpu", policy=policy
    )
    ck = load_checkpoint(out)
    ck.metadata.packing = packing
    again = tmp_path / "w.safetensors"
    write_checkpoint(again, ck.state_dict, ck.metadata)  # the layout the size model describes
    meta = TernaryMetadata.from_json(read_header(again)["__metadata__"][METADATA_KEY])
    size = fb.checkpoint_file_size(cfg, packing, 128, metadata=meta, policy=policy)
    assert size["total"] == again.stat().st_size
    assert abs(size["total"] - out.stat().st_size) < 1024  # the streaming writer: same data, own header
    dense = tmp_path / "d.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, dense)
    assert fb.dense_file_size(cfg)["total"] == dense.stat().st_size


def test_committed_table_is_current():
    committed = json.loads((ROOT / "bench" / "results" / "flux2_sizes.json").read_text())
    now = flux2_sizes.sizes()
    assert committed["models"].keys() == now["models"].keys()
    for name, m in now["models"].items():
        c = committed["models"][name]
        assert c["bf16_bytes"] == m["bf16_bytes"]
        for policy, row in m["policies"].items():
            for packing in ("2bit", "base3"):
                assert c["policies"][policy][packing]["data"] == row[packing]["data"], (name, policy, packing)
    assert committed["goal"] == now["goal"]
    # the bf16 klein 4B transformer is the published 7.75 GB: our shapes are FLUX.2 klein 4B's
    assert round(now["models"]["klein-4b"]["bf16_bytes"] / 1e9, 2) == 7.75
