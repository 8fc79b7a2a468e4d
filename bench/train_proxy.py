"""Train (or find in the cache) the proxy FLUX: ``python bench/train_proxy.py [--architecture flux2] [--out FILE]``.

Deterministic (seeded, fixed step count): the result is a function of ``ProxySettings`` and the
code version. Prints the cache path, wall time and final loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from ternaryflux.proxy.model import ProxySettings, cache_root, ensure_proxy
from tqdm import tqdm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=ProxySettings.steps)
    p.add_argument(
        "--architecture",
        choices=["flux", "flux2"],
        default="flux",
        help="flux: the FLUX.1 proxy (proxy/data/proxy-flux.safetensors); flux2: the FLUX.2 one",
    )
    p.add_argument("--out", type=Path, default=None, help="also copy the checkpoint here")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core machine)"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    s = ProxySettings(steps=args.steps, architecture=args.architecture)
    bar = tqdm(total=s.steps, desc="train proxy", mininterval=5)

    def prog(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")

    t0 = time.time()
    path = ensure_proxy(s, progress=prog)
    bar.close()
    print(f"proxy: {path} ({time.time() - t0:.0f} s)")
    info = path.parent / "train.json"
    if info.exists():
        print(json.dumps(json.loads(info.read_text()), indent=1))
    if args.out:
        shutil.copyfile(path, args.out)
    print("cache root:", cache_root())


if __name__ == "__main__":
    main()
