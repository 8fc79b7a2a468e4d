"""Self-distillation of a ternary FLUX against its float teacher (no images, no labels).

Student parametrisation (per ternary Linear, :class:`STETernaryLinear`): a latent float weight
``W`` and a trainable scale ``s`` (per output channel or group) with the LSQ straight-through
estimator::

    u = W / s,   q = clamp(round(u), -1, 1),   w = s * q        (forward)
    dw/dW = 1 inside |u| <= 1 (else 0);  dw/ds = q - u inside, q outside   (backward)

so training moves codes (when ``W`` crosses +-s/2) and scales. ``W`` starts as the teacher's
float weight projected into the rounding cell of the starting code, so the student starts
*exactly* at its ternary checkpoint (usually the ``calibrated`` one) while keeping how far each
weight was from a threshold. The bias is trained too (it stays float in the format).

Schedule: the first ``block_steps`` steps match every block separately (each student block is
fed the teacher's block input; loss = error of its residual update relative to the teacher's),
then ``end-to-end`` steps match the velocity ``||v_s - v_t||^2 / ||v_t||^2``. Learning rate:
cosine from ``lr`` to ``lr/10``. Optimizer: bitsandbytes AdamW8bit (8-bit states), or torch
AdamW when bitsandbytes is missing (logged).

Deterministic and resumable: the sample of step ``i`` is a pure function of (seed, i) (a seeded
permutation per epoch), and the state file written every ``save_every`` steps holds the step,
the trainable tensors, the optimizer state and the RNG states, so a run killed and resumed
gives bit-identical results to an uninterrupted one (same machine, same thread count).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core.calibration_data import CalibrationSample
from ..core.checkpoint import layer_tensors, publish_temp_file
from ..core.flux_model import Flux
from ..core.ternary_linear import TernaryLinear, set_submodule, ternary_modules
from ..core.ternary_weight import TernaryWeight
from . import distributed as D
from .capture import BlockCapture, flatten_outputs
from .errors import QuantizeError
from .evaluate import block_names

log = logging.getLogger(__name__)


class STETernaryLinear(nn.Module):
    """Trainable ternary Linear (latent weight + scale, LSQ straight-through estimator)."""

    def __init__(self, latent: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, group_size: int):
        super().__init__()
        self.group_size = group_size
        self.latent = nn.Parameter(latent.float().clone())
        self.scale = nn.Parameter(scale.float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.float().clone())

    @classmethod
    def from_ternary(cls, tl: TernaryLinear, teacher_weight: torch.Tensor | None = None) -> STETernaryLinear:
        tw = tl.ternary_weight()
        t = tw.signs(torch.float32)
        s = tw.expanded_scale(torch.float32).expand_as(t).clamp_min(1e-12)
        if teacher_weight is None:
            latent = t * s
        else:
            w = teacher_weight.float()
            zero = w.clamp(-0.45 * s, 0.45 * s)
            pos = torch.maximum(w, 0.55 * s)
            neg = torch.minimum(w, -0.55 * s)
            latent = torch.where(t > 0, pos, torch.where(t < 0, neg, zero))
        m = cls(latent, tw.scale, None if tl.bias is None else tl.bias.detach(), tw.group_size)
        if not torch.equal(m.codes(), tw.codes()):
            raise AssertionError("latent initialisation does not reproduce the starting codes")
        return m

    def _s(self) -> torch.Tensor:
        s = self.scale.abs().clamp_min(1e-12)
        return s if self.group_size == 0 else s.repeat_interleave(self.group_size, dim=1)

    def weight(self) -> torch.Tensor:
        s = self._s()
        u = self.latent / s
        uc = u.clamp(-1.0, 1.0)
        q = uc + (torch.round(uc) - uc).detach()
        return s * q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        u = self.latent / self._s()
        return (torch.round(u.clamp(-1, 1)) + 1).to(torch.uint8)

    @torch.no_grad()
    def to_ternary(self) -> TernaryWeight:
        return TernaryWeight.from_codes(self.codes().cpu(), self.scale.detach().abs().cpu(), self.group_size)


def make_student(student: Flux, teacher: Flux | None) -> list[str]:
    """Swap every :class:`TernaryLinear` of ``student`` for an :class:`STETernaryLinear`; freeze
    everything else. Returns the swapped paths."""
    for p in student.parameters():
        p.requires_grad_(False)
    names = [n for n, _ in ternary_modules(student)]
    for n in names:
        tw = teacher.get_submodule(n).weight.detach() if teacher is not None else None
        set_submodule(student, n, STETernaryLinear.from_ternary(student.get_submodule(n), tw))
    return names


def export_student(
    student: Flux, names: Sequence[str], like: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A checkpoint state dict (runtime layout) from a trained student; dtypes follow ``like``."""
    out = dict(like)
    for n in names:
        m: STETernaryLinear = student.get_submodule(n)
        out.update(layer_tensors(n, m.to_ternary()))
        if m.bias is not None:
            out[f"{n}.bias"] = m.bias.detach().cpu().to(like[f"{n}.bias"].dtype)
    return out


@dataclass
class DistillConfig:
    steps: int = 600  # proxy: 600 steps 0.077 vs 300 steps 0.084 velocity error (docs/QUANTIZATION.md)
    block_steps: int | None = None  # default: a third of the steps
    lr: float = 1e-4
    scale_lr: float | None = None  # default: lr / 10
    batch: int = 1
    seed: int = 0
    save_every: int = 50
    optimizer: str = "adamw8bit"  # adamw8bit | adamw

    @property
    def n_block_steps(self) -> int:
        return self.steps // 3 if self.block_steps is None else min(self.block_steps, self.steps)


def _sample_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def samples_for_step(step: int, n: int, batch: int, seed: int) -> list[int]:
    """The calibration sample indices of ``step``: a pure function of its arguments."""
    out = []
    for j in range(batch):
        flat = step * batch + j
        out.append(_sample_order(n, seed, flat // n)[flat % n])
    return out


def make_optimizer(params: list[dict], kind: str) -> tuple[torch.optim.Optimizer, str]:
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, betas=(0.9, 0.99), weight_decay=0.0), "bitsandbytes AdamW8bit"
        except Exception as e:  # ImportError or a broken native library
            log.warning(
                "bitsandbytes AdamW8bit unavailable (%s: %s); falling back to torch AdamW",
                type(e).__name__,
                e,
            )
    return torch.optim.AdamW(params, betas=(0.9, 0.99), weight_decay=0.0), "torch AdamW"


def _lr_factor(step: int, total: int) -> float:
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def _block_loss(teacher: Flux, student: Flux, inp: dict, names: Sequence[str]) -> torch.Tensor:
    with torch.no_grad(), BlockCapture(teacher, names) as cap:
        teacher.forward_latent(**inp)
    loss = torch.zeros((), dtype=torch.float32)
    for n in names:
        args, kwargs, t_out = cap.last(n)
        outs = flatten_outputs(student.get_submodule(n)(*args, **kwargs))
        for j, (o_s, o_t) in enumerate(zip(outs, t_out)):
            upd = (o_t - args[j]).float().pow(2).sum().clamp_min(1e-12)
            loss = loss + (o_s.float() - o_t.float()).pow(2).sum() / upd
    return loss / len(names)


def _velocity_loss(teacher: Flux, student: Flux, inp: dict) -> torch.Tensor:
    with torch.no_grad():
        vt = teacher.forward_latent(**inp)
    vs = student.forward_latent(**inp)
    return (vs.float() - vt.float()).pow(2).sum() / vt.float().pow(2).sum().clamp_min(1e-12)


def fingerprint(cfg: DistillConfig, extra: dict[str, Any]) -> str:
    d = {k: v for k, v in asdict(cfg).items() if k != "save_every"}
    return hashlib.sha256(json.dumps({**d, **extra}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        publish_temp_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def distill(
    teacher: Flux,
    student: Flux,
    samples: Sequence[CalibrationSample],
    cfg: DistillConfig,
    state_path: Path,
    resume: bool = False,
    stop_after: int | None = None,
    fingerprint_extra: dict[str, Any] | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    world: D.World | None = None,
) -> dict[str, Any]:
    """Train ``student`` (already made by :func:`make_student`) in place. Returns a summary with
    ``completed`` False when ``stop_after`` stopped it early.

    ``world`` (:func:`quant.distributed.init_world`, under torchrun): data parallel, every rank
    holding teacher and student; rank r takes positions r, r+W, ... of each step's batch, the
    gradients are SUMmed over the ranks (so every rank takes the same step), and rank 0 writes
    the state file. SIGTERM / Ctrl-C stop every rank after the same step, the state saved."""
    world = world or D.World(device=device or torch.device("cpu"))
    device = device or world.device
    if not samples:
        raise QuantizeError("distill needs calibration samples")
    fp = fingerprint(cfg, fingerprint_extra or {})
    ste = {n: m for n, m in student.named_modules() if isinstance(m, STETernaryLinear)}
    latents = [m.latent for m in ste.values()]
    scales = [m.scale for m in ste.values()]
    biases = [m.bias for m in ste.values() if m.bias is not None]
    groups = [
        {"params": latents, "lr": cfg.lr, "base_lr": cfg.lr},
        {"params": scales, "lr": cfg.scale_lr or cfg.lr / 10, "base_lr": cfg.scale_lr or cfg.lr / 10},
        {"params": biases, "lr": cfg.lr, "base_lr": cfg.lr},
    ]
    opt, opt_name = make_optimizer(groups, cfg.optimizer)
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    start = 0
    history: list[dict[str, float]] = []
    if resume:
        if not state_path.is_file():
            raise QuantizeError(
                f"cannot resume: no state file {state_path} (it is written every {cfg.save_every} steps)"
            )
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("fingerprint") != fp:
            raise QuantizeError(
                f"{state_path}: saved by a run with different settings or inputs; resume with the same arguments or delete it"
            )
        with torch.no_grad():
            for n, t in st["params"].items():
                trainable[n].copy_(t.to(device))
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["rng_cpu"])
        if torch.cuda.is_available() and st.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(st["rng_cuda"])
        start = int(st["step"])
        history = list(st.get("history", []))
        log.info("resumed from %s at step %d", state_path, start)

    def save(step: int) -> None:
        if not world.is_main:
            D.barrier(world)  # rank 0 has published the state when this returns
            return
        _save_state(
            state_path,
            {
                "step": step,
                "fingerprint": fp,
                "params": {n: p.detach().cpu().clone() for n, p in trainable.items()},
                "optimizer": opt.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "history": history,
                "config": asdict(cfg),
            },
        )
        D.barrier(world)

    names = block_names(student)
    nb = cfg.n_block_steps
    teacher.eval()
    student.train()
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc="distill",
        unit="step",
        disable=not (progress and world.is_main),
        dynamic_ncols=True,
    )
    completed = True
    D.local_positions(range(cfg.batch), world)  # refuses a batch that is not a multiple of W
    with D.GracefulStop() as stop:
        for step in range(start, cfg.steps):
            phase = "block" if step < nb else "e2e"
            f = _lr_factor(step - (0 if phase == "block" else nb), nb if phase == "block" else cfg.steps - nb)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for idx in D.local_positions(samples_for_step(step, len(samples), cfg.batch, cfg.seed), world):
                inp = samples[idx].as_inputs(device, torch.float32)
                loss = (
                    _block_loss(teacher, student, inp, names)
                    if phase == "block"
                    else _velocity_loss(teacher, student, inp)
                )
                (loss / cfg.batch).backward()
                total += float(loss.detach()) / cfg.batch
            D.all_reduce_grads([p for g in groups for p in g["params"]], world)
            total = D.all_reduce_sum(total, world)
            opt.step()
            history.append({"step": step + 1, "phase": phase, "loss": total})
            bar.update(1)
            bar.set_postfix(phase=phase, loss=f"{total:.4g}")
            done = step + 1
            stopping = stop.requested(world)  # every rank: the same answer at the same step
            early = stop_after is not None and done >= stop_after
            if done % cfg.save_every == 0 or done == cfg.steps or early or stopping:
                save(done)
            D.maybe_kill_for_test(world, done)
            if stopping and done < cfg.steps:
                bar.close()
                stop.raise_stop()
            if early and done < cfg.steps:
                completed = False
                break
    bar.close()
    student.eval()
    return {
        "completed": completed,
        "optimizer": opt_name,
        "seconds": time.perf_counter() - t0,
        "history": history,
        "fingerprint": fp,
    }
