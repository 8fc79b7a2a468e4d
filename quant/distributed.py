"""Data parallelism over calibration samples with ``torch.distributed`` (launched by
``torchrun``; no launcher or transport of our own).

Rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of each step's global batch, scales its
losses by ``1 / global_batch`` and the gradients are summed over ranks, so the update equals the
single-process step on the same global batch (bitwise for two ranks: a sum of two floats does
not depend on the order). Rank 0 writes state and outputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import QuantizeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_type: str = "cpu") -> World:
    """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ...), with a
    process group on gloo (CPU) or nccl (CUDA); a one-process world without those variables."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    w = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("rank %d of %d (local rank %d)", w.rank, w.size, w.local_rank)
    return w


def local_positions(positions: Sequence[int], world: World) -> list[int]:
    """This rank's share of a step's global batch (``positions`` in step order)."""
    if len(positions) % world.size:
        raise QuantizeError(
            f"the global batch ({len(positions)}) must be a multiple of the number of processes ({world.size})"
        )
    return list(positions[world.rank :: world.size])


def all_reduce_grads(params: Iterable[torch.nn.Parameter], world: World) -> None:
    """Sum every parameter's gradient over the ranks (a missing gradient counts as zeros)."""
    if not world.distributed:
        return
    ps = list(params)
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in ps:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        o = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[o : o + n].view_as(p.grad))
            o += n


def all_reduce_sum(value: float, world: World) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
