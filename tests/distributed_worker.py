"""A tiny training script for tests/test_distributed.py, run as ``python distributed_worker.py``
(one process) or under ``python -m torch.distributed.run --nproc-per-node 2 --standalone``.

``primitives``: the collectives of quant/distributed.py on known tensors; each rank writes what it
got to OUT/prim-RANK.pt. ``train``: a small block of two STE ternary layers trained on fixed
samples the way distill trains (each rank backpropagates loss/global_batch of its positions,
gradients SUMmed by all_reduce_grads, or FSDP2-sharded with --shard fsdp), resumable from an
atomically written state; rank 0 writes OUT/final.pt (the consolidated weights). Errors print
one line and exit 2, SIGTERM/Ctrl-C exit 143/130, like the CLI."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from ternaryflux.quant import distributed as D
from ternaryflux.quant.distill import STETernaryLinear, _save_state, samples_for_step
from ternaryflux.quant.errors import QuantizeError, Terminated
from torch import nn

DIM, HID, N_SAMPLES = 16, 24, 8


def make_block(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)

    def ste(o: int, i: int) -> STETernaryLinear:
        w = torch.randn(o, i, generator=g) * 0.2
        s = w.abs().mean(dim=1, keepdim=True)
        return STETernaryLinear(w, s, torch.randn(o, generator=g) * 0.01, group_size=0)

    return nn.Sequential(ste(HID, DIM), nn.GELU(), ste(DIM, HID))


def make_data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, 4, DIM, generator=g)
    return x, torch.tanh(x @ torch.randn(DIM, DIM, generator=g) * 0.5)


def primitives(world: D.World, out: Path) -> None:
    res: dict = {"world": (world.rank, world.size, world.local_rank, str(world.device), world.backend)}
    res["positions"] = D.local_positions(list(range(6)), world)
    try:
        D.local_positions([0, 1, 2], world)
        res["odd_batch"] = "accepted"
    except QuantizeError as e:
        res["odd_batch"] = str(e)
    g = torch.Generator().manual_seed(100 + world.rank)
    a = nn.Parameter(torch.zeros(5, 7))
    b = nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    c = nn.Parameter(torch.zeros(4))  # grad only on rank 0
    d = nn.Parameter(torch.zeros(2))  # no grad anywhere
    a.grad = torch.randn(5, 7, generator=g)
    b.grad = torch.randn(3, generator=g).to(torch.bfloat16)
    if world.rank == 0:
        c.grad = torch.randn(4, generator=g)
    D.all_reduce_grads([a, b, c, d], world, bucket_bytes=64)  # small buckets: several per dtype
    res["grads"] = {k: None if p.grad is None else p.grad.clone() for k, p in zip("abcd", [a, b, c, d])}
    res["loss"] = D.all_reduce_sum(0.1 * (world.rank + 1), world)
    res["bcast"] = D.broadcast_object({"from": world.rank}, world)
    D.barrier(world)
    torch.save(res, out / f"prim-{world.rank}.pt")


def train(world: D.World, a: argparse.Namespace) -> None:
    torch.manual_seed(0)
    block = make_block()
    x, y = make_data()
    if a.shard == "fsdp":
        D.shard_module(block, world, per_layer=STETernaryLinear)
    opt_kind = D.fsdp_optimizer_kind(a.optimizer) if a.shard == "fsdp" and world.distributed else a.optimizer
    if opt_kind == "adamw8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(block.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(block.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    state = Path(a.state)
    start = 0
    if a.resume:
        st = torch.load(state, weights_only=False) if world.is_main or a.shard != "fsdp" else {}
        D.load_full_state_dict(block, st.get("params", {}), world)
        D.load_full_optimizer_state_dict(block, opt, st.get("optimizer", {}), world)
        start = D.broadcast_object(st.get("step"), world)
    losses = []
    with D.GracefulStop() as stop:
        for step in range(start, a.steps):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for i in D.local_positions(samples_for_step(step, N_SAMPLES, a.batch, 0), world):
                loss = (block(x[i]) - y[i]).pow(2).mean()
                (loss / a.batch).backward()
                total += float(loss.detach()) / a.batch
            if a.shard != "fsdp":
                D.all_reduce_grads(block.parameters(), world)
            opt.step()
            losses.append(D.all_reduce_sum(total, world))
            done = step + 1
            if a.sleep:
                time.sleep(a.sleep)
            stopping = stop.requested(world)
            if done % a.save_every == 0 or done == a.steps or stopping:
                params = D.full_state_dict(block, world)
                osd = D.full_optimizer_state_dict(block, opt, world)
                if world.is_main:
                    _save_state(state, {"step": done, "params": params, "optimizer": osd})
                D.barrier(world)
            if world.is_main:
                print(f"step {done}", flush=True)
            D.maybe_kill_for_test(world, done)
            if stopping:
                stop.raise_stop()
    params = D.full_state_dict(block, world)
    if world.is_main:
        torch.save({"params": params, "losses": losses, "optimizer": opt_kind}, Path(a.out) / "final.pt")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["primitives", "train"])
    p.add_argument("--out", required=True)
    p.add_argument("--state", default=None)
    p.add_argument("--shard", choices=["none", "fsdp"], default="none")
    p.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default="adamw")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    world = D.World()
    try:
        world = D.init_world("cpu")
        if a.mode == "primitives":
            primitives(world, Path(a.out))
        else:
            train(world, a)
        D.shutdown(world)
        return 0
    except QuantizeError as e:
        print(f"worker rank {world.rank}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"worker rank {world.rank}: {what}; state saved", file=sys.stderr, flush=True)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
