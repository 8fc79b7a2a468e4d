"""Data parallel (and FSDP2 sharding) for ``distill`` on ``torch.distributed``: no launcher and no
transport of our own. ``torchrun`` (one node, or every node of a SLURM allocation) starts one
process per device and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
:func:`init_world` joins its process group (gloo on CPU, NCCL on CUDA with ``cuda:LOCAL_RANK``).
Without those variables it returns a size-1 :class:`World` and every helper here is a no-op, so
the engine has one code path.

The math (what makes a W-rank run equal the 1-process run with the same global batch):

* each step's global batch is a list of calibration positions; rank ``r`` takes positions
  ``r, r+W, r+2W, ...`` (:func:`local_positions`; the batch must be a multiple of W);
* every rank backpropagates ``loss_i / global_batch`` for its samples, so its gradient is its
  share of the batch mean, and :func:`all_reduce_grads` SUMs the shares: every rank then holds
  the gradient of the whole batch and takes the same optimizer step on the same parameters;
* with ``--shard fsdp``, :func:`shard_module` applies FSDP2 ``fully_shard`` to the trained block
  with the gradient reduction made a plain SUM (FSDP's default divides by W), so the sharded
  gradient is the same sum; each rank then updates its shard only.

Floating-point addition is commutative, so for W = 2 with one sample per rank (``--batch 2``)
the reduced gradient is bitwise the 1-process one; otherwise the summation order differs from
the 1-process accumulation (last-bit differences), but is fixed for a fixed world size and
backend, so a run is reproducible (and resumable bit-exactly) at the same W.

A rank that dies makes the collectives of the others fail (gloo: connection closed) and torchrun
stops the rest: the survivors raise :class:`RankFailure` (a :class:`QuantizeError`: one line,
exit status 2) and write nothing; the state file is written atomically by rank 0 only, so the
last one saved is intact and ``--resume`` continues from it. SIGTERM (a scheduler's preemption;
torchrun forwards it to every worker) is turned by :class:`GracefulStop` into a stop at the next
step boundary that every rank agrees on, so the state can be saved consistently first.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import QuantizeError, Terminated

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# test hook: "R:K" makes rank R SIGKILL itself right after it finished step K (tests/test_distributed.py)
KILL_HOOK_ENV = "TERNARYFLUX_TEST_KILL_RANK_AFTER_STEP"
DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long for a rank that hangs (one that dies fails fast)


class RankFailure(QuantizeError):
    """A collective failed: another rank died, was killed, or the network between ranks broke."""


@dataclass(frozen=True)
class World:
    """Where this process sits: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes state files, outputs and reports, and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def __str__(self) -> str:
        if not self.distributed:
            return f"1 process on {self.device}"
        return f"rank {self.rank}/{self.size} (local {self.local_rank}) on {self.device}, {self.backend}"


def _env_int(name: str) -> int:
    v = os.environ.get(name)
    if v is None:
        raise QuantizeError(
            f"WORLD_SIZE is set but {name} is not: start distributed runs with torchrun "
            "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
        )
    try:
        return int(v)
    except ValueError:
        raise QuantizeError(f"{name}={v!r} is not a whole number") from None


def init_world(device_kind: str | torch.device = "cpu", timeout_s: float | None = None) -> World:
    """Join torchrun's process group (from its environment variables), or a size-1 World when the
    process was not started by torchrun (no ``WORLD_SIZE``) or is alone (``WORLD_SIZE=1``).

    ``device_kind``: ``"cpu"`` (backend gloo) or ``"cuda"`` (NCCL; this rank's device is
    ``cuda:LOCAL_RANK``). A ``torch.device`` is taken by its type for a distributed run and as is
    for a single process. ``timeout_s``: how long a collective waits for a rank that hangs
    (default 30 min; ``TERNARYFLUX_DIST_TIMEOUT`` seconds overrides)."""
    dev = torch.device(device_kind)
    if "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1":
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return World(device=dev)
    size, rank, local = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise QuantizeError(
                f"WORLD_SIZE={size} is set but {name} is not: start distributed runs with torchrun"
            )
    if not 0 <= rank < size:
        raise QuantizeError(f"RANK={rank} is outside WORLD_SIZE={size}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QuantizeError("a CUDA run was asked for but torch sees no CUDA device")
        n = torch.cuda.device_count()
        if local >= n:
            raise QuantizeError(
                f"LOCAL_RANK={local} but this node has {n} CUDA device(s): use --nproc-per-node {n} or fewer"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        dev, backend = torch.device("cpu"), "gloo"
    else:
        raise QuantizeError(f"distributed runs support cpu (gloo) and cuda (NCCL) devices, not {dev.type}")
    if timeout_s is None:
        timeout_s = float(os.environ.get("TERNARYFLUX_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not dist.is_initialized():
        kw: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        try:
            dist.init_process_group(
                backend, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout_s), **kw
            )
        except (RuntimeError, ValueError) as e:
            raise RankFailure(
                f"rank {rank}: could not join the process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({type(e).__name__}: {e})"
            ) from e
    world = World(rank=rank, size=size, local_rank=local, device=dev, backend=backend)
    log.debug("joined %s", world)
    return world


def shutdown(world: World) -> None:
    """Leave the process group (every rank, at the end of a run; harmless when there is none)."""
    if world.distributed and dist.is_initialized():
        # FSDP2 leaves DTensors / device-mesh groups in reference cycles; gloo threads still held
        # by them at interpreter exit aborted a rank now and then after a finished run
        # ("terminate called without an active exception", ~1 in 10 runs under load)
        gc.collect()
        try:
            dist.barrier()
        except Exception:
            pass
        dist.destroy_process_group()
        gc.collect()


@contextlib.contextmanager
def _collective(world: World, what: str) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        cause = (str(e).splitlines() or [""])[0].split(". This is typically")[0]
        if len(cause) > 160:
            cause = cause[:157] + "..."
        raise RankFailure(
            f"rank {world.rank} of {world.size}: {what} failed, another rank died or was stopped "
            f"({type(e).__name__}: {cause}); nothing was written after the last saved state: rerun "
            "the same command with --resume"
        ) from e


def local_positions(positions: Sequence[T], world: World) -> list[T]:
    """This rank's share of one step's global batch: positions ``rank, rank+W, ...``."""
    n = len(positions)
    if n % world.size:
        lower = (n // world.size) * world.size
        raise QuantizeError(
            f"the batch ({n} samples per step) is not a multiple of the number of processes "
            f"({world.size}): every process takes the same number of samples per step; use --batch "
            f"{max(lower, world.size)} or {lower + world.size}"
        )
    return list(positions[world.rank :: world.size])


def all_reduce_grads(params: Iterable[torch.Tensor], world: World, bucket_bytes: int = 256 << 20) -> None:
    """SUM every parameter's ``.grad`` over the ranks, in place. A grad missing on some ranks
    counts as zeros there; one missing on every rank stays ``None`` (as in a single process, where
    the optimizer then skips it). Gradients are packed into one flat buffer per dtype (split in
    buckets of at most ``bucket_bytes``) so a block costs a few collectives, not one per tensor."""
    if not world.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    have = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=world.device)
    with _collective(world, "gradient all-reduce"):
        dist.all_reduce(have, op=dist.ReduceOp.SUM)
    live = [p for p, h in zip(params, have.tolist()) if h > 0]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in live:
        by_dtype.setdefault(p.dtype if p.grad is None else p.grad.dtype, []).append(p)
    for dtype, group in by_dtype.items():
        bucket: list[torch.Tensor] = []
        size = 0
        for p in group:
            nbytes = p.numel() * dtype.itemsize
            if bucket and size + nbytes > bucket_bytes:
                _reduce_bucket(bucket, dtype, world)
                bucket, size = [], 0
            bucket.append(p)
            size += nbytes
        if bucket:
            _reduce_bucket(bucket, dtype, world)


def _reduce_bucket(params: list[torch.Tensor], dtype: torch.dtype, world: World) -> None:
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p, dtype=dtype)).reshape(-1) for p in params]
    ).to(world.device)
    with _collective(world, "gradient all-reduce"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    off = 0
    for p in params:
        n = p.numel()
        g = flat[off : off + n].view_as(p)
        if p.grad is None:
            p.grad = g.to(p.device).clone()
        else:
            p.grad.copy_(g)
        off += n


def all_reduce_sum(value: float, world: World) -> float:
    """The sum of a Python float over the ranks (float64; e.g. the step's loss shares)."""
    if not world.distributed:
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=world.device)
    with _collective(world, "loss all-reduce"):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_max_int(value: int, world: World) -> int:
    if not world.distributed:
        return int(value)
    t = torch.tensor([value], dtype=torch.int64, device=world.device)
    with _collective(world, "all-reduce"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier(world: World) -> None:
    """Wait until every rank gets here (e.g. rank 0 published a file the others will read)."""
    if not world.distributed:
        return
    with _collective(world, "barrier"):
        if world.backend == "nccl":
            dist.barrier(device_ids=[world.local_rank])
        else:
            dist.barrier()


def broadcast_object(obj: T, world: World, src: int = 0) -> T:
    """Rank ``src``'s (picklable) ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj if world.rank == src else None]
    with _collective(world, "broadcast"):
        dist.broadcast_object_list(box, src=src, device=world.device if world.backend == "nccl" else None)
    return box[0]  # type: ignore[return-value]


# ---- FSDP2 (--shard fsdp) --------------------------------------------------------------------


def shard_module(
    module: nn.Module, world: World, per_layer: type | tuple[type, ...] | None = None
) -> nn.Module:
    """Shard ``module``'s parameters over the ranks with FSDP2 ``fully_shard`` (a 1-D device mesh
    over the world), in place; returns it. ``per_layer``: submodule type(s) sharded as their own
    unit first (each is gathered only while it runs, so the peak holds one layer whole, not the
    block). The gradient reduction is a plain SUM (FSDP divides by W by default): with every rank
    backpropagating ``loss / global_batch`` the sharded gradient is the batch gradient of the
    unsharded run. After this the parameters are DTensors: the optimizer must accept them (torch
    AdamW does; bitsandbytes AdamW8bit does not, see :func:`fsdp_optimizer_kind`). A size-1
    World leaves the module as it is."""
    if not world.distributed:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    if per_layer is not None:
        for sub in list(module.modules()):
            if sub is not module and isinstance(sub, per_layer) and any(True for _ in sub.parameters()):
                fully_shard(sub, mesh=mesh)
    fully_shard(module, mesh=mesh)
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.set_gradient_divide_factor(1.0)
            sub.set_force_sum_reduction_for_comms(True)  # SUM, no pre/post scaling (gloo has no PREMUL_SUM)
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def fsdp_optimizer_kind(kind: str) -> str:
    """The optimizer a sharded block trains with. bitsandbytes AdamW8bit takes plain tensors only
    (measured, bitsandbytes 0.50.2 + torch 2.13: its step fails with "optimizer_update_8bit_blockwise
    got mixed torch.Tensor and DTensor"), so ``--shard fsdp`` uses torch AdamW, whose state
    follows the DTensor parameters and is sharded with them (8 B/param, divided by W)."""
    if kind == "adamw8bit":
        log.info(
            "--shard fsdp: bitsandbytes AdamW8bit does not take sharded (DTensor) parameters; using torch AdamW"
        )
        return "adamw"
    return kind


def full_state_dict(module: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """The consolidated (unsharded, CPU) state dict of a sharded module on rank 0; ``{}`` on the
    other ranks. Every rank must call it (it gathers). A plain module: its state dict on CPU."""
    if not is_sharded(module):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    with _collective(world, "state gather"):
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], world: World) -> None:
    """Load a consolidated state dict (read on rank 0; the other ranks may pass ``{}``) into a
    sharded module (rank 0 broadcasts, each rank keeps its shard), or into a plain one."""
    if not is_sharded(module):
        module.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    with _collective(world, "state broadcast"):
        set_model_state_dict(
            module, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )


def full_optimizer_state_dict(module: nn.Module, opt: torch.optim.Optimizer, world: World) -> dict[str, Any]:
    """The consolidated optimizer state (rank 0; ``{}`` elsewhere) keyed by parameter names, for
    a state file that resumes at any world size. Every rank must call it."""
    if not is_sharded(module):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    with _collective(world, "optimizer state gather"):
        return get_optimizer_state_dict(
            module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )


def load_full_optimizer_state_dict(
    module: nn.Module, opt: torch.optim.Optimizer, osd: dict[str, Any], world: World
) -> None:
    if not is_sharded(module):
        opt.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    with _collective(world, "optimizer state broadcast"):
        set_optimizer_state_dict(
            module, opt, osd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )


# ---- stopping ------------------------------------------------------------------------------


class GracefulStop:
    """SIGTERM (and Ctrl-C) become a stop at the next step boundary on every rank.

    Used as a context manager around the training loop; at each step boundary the loop calls
    :meth:`requested` (every rank, it is a collective): True on every rank as soon as one rank got
    a signal, so all save the same step and stop together; then :meth:`raise_stop` raises
    :class:`Terminated` (SIGTERM) or ``KeyboardInterrupt`` (Ctrl-C), which the CLI reports with
    its resume hint. A second signal interrupts at once. Outside the main thread it does nothing
    (signal handlers can only be set there)."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second one: now
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.received = signum
        log.warning(
            "%s received: stopping after this step (the state is saved first); send it again to stop now",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    def requested(self, world: World) -> bool:
        """Whether any rank got a signal (every rank calls this at the same step boundary)."""
        code = 0 if self.received is None else (2 if self.received == signal.SIGTERM else 1)
        code = all_reduce_max_int(code, world)
        if code and self.received is None:
            self.received = signal.SIGTERM if code == 2 else signal.SIGINT
        return code > 0

    def raise_stop(self) -> None:
        if self.received == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt()


def maybe_kill_for_test(world: World, step: int) -> None:
    """Test hook (``TERNARYFLUX_TEST_KILL_RANK_AFTER_STEP=R:K``): rank R SIGKILLs itself after
    finishing step K, like a node lost mid-run. The engine calls it after each step's save."""
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return
    r, k = (int(x) for x in spec.split(":"))
    if world.rank == r and step == k:
        log.warning("test hook %s=%s: rank %d kills itself", KILL_HOOK_ENV, spec, r)
        os.kill(os.getpid(), signal.SIGKILL)
