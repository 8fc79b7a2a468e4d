"""Exact TernaryFLUX checkpoint sizes for the FLUX.2 family, from shapes (no weights, no GPU).

    python bench/flux2_sizes.py [--out bench/results/flux2_sizes.json]

For FLUX.2 klein 4B / klein 9B / dev: the bf16 transformer, and TernaryFLUX checkpoints at group
size 128 (Bonsai's layout) in 2-bit (runtime) and base3 (at rest) packing, for both ternary
policies (``blocks``: Bonsai's choice; ``blocks+modulation``: also the three global modulation
Linears). Byte-exact as ``write_checkpoint`` lays the file out (``core.checkpoint.layer_specs``
for each ternary layer, bf16 for the rest, the header included). Bonsai Image 4B's published
size (1.21 GB, PrismML's model card, unit as published) is listed beside klein 4B.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux_builders import REPO_ROOT, checkpoint_file_size, dense_file_size, param_counts  # noqa: E402
from ternaryflux.core.flux_layout import FLUX2_VARIANTS, POLICIES  # noqa: E402

BONSAI_4B_PUBLISHED_GB = 1.21
GOAL_KLEIN_4B_GB = 1.15
GROUP = 128


def sizes() -> dict:
    out: dict = {"group_size": GROUP, "bonsai_4b_published_GB": BONSAI_4B_PUBLISHED_GB, "models": {}}
    for name, cfg in FLUX2_VARIANTS.items():
        bf16 = dense_file_size(cfg)["total"]
        m: dict = {"config": cfg.to_dict(), "bf16_bytes": bf16, "policies": {}}
        for policy in POLICIES:
            counts = param_counts(cfg, policy)
            row = {"params": counts}
            for packing in ("2bit", "base3"):
                s = checkpoint_file_size(cfg, packing, GROUP, policy=policy)
                row[packing] = {**s, "vs_bf16": bf16 / s["total"]}
            m["policies"][policy] = row
        out["models"][name] = m
    k4 = out["models"]["klein-4b"]["policies"]
    out["goal"] = {
        "klein_4b_le_GB": GOAL_KLEIN_4B_GB,
        "met_by": [
            f"{p} {k}"
            for p in POLICIES
            for k in ("2bit", "base3")
            if k4[p][k]["total"] <= GOAL_KLEIN_4B_GB * 1e9
        ],
    }
    return out


def table(d: dict) -> str:
    lines = [
        "| FLUX.2 | ternary layers | ternary params | bf16 | 2-bit g128 | base3 g128 | 2-bit vs bf16 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        for policy, row in m["policies"].items():
            p = row["params"]
            lines.append(
                f"| {name} | {policy} | {p['ternary'] / 1e9:.3f} B of {p['total'] / 1e9:.3f} B "
                f"| {m['bf16_bytes'] / 1e9:.2f} GB | {row['2bit']['total'] / 1e9:.3f} GB "
                f"| {row['base3']['total'] / 1e9:.3f} GB | {row['2bit']['vs_bf16']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "flux2_sizes.json")
    a = ap.parse_args()
    d = sizes()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    print(table(d))
    print(
        f"Bonsai Image 4B published: {d['bonsai_4b_published_GB']} GB; goal klein 4B <= {GOAL_KLEIN_4B_GB} GB met by: {d['goal']['met_by'] or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
