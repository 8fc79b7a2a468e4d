"""Self-distillation in bounded device memory: the teacher streamed from disk, one student block
trained at a time, then an end-to-end phase on the packed student.

The recipe is :mod:`.distill`'s (same parametrisation, losses, learning-rate schedule and sample
order); what changes is what is resident:

* **teacher**: never whole. :mod:`.teacher_cache` runs it block by block once and keeps the
  stream at every block boundary and the final velocity on disk.
* **block phase**: stage after stage, one block's ternary layers become
  :class:`~.distill.STETernaryLinear` (latent weights, scales, biases + optimizer state) on the
  device and are trained for ``n_block_steps`` steps on the cached (block input, block output)
  pairs — the resident run trains all blocks at once on the same pairs, and each block's loss
  term depends only on its own parameters, so the per-block gradients are the same. A finished
  block is written to the state folder and leaves the device.
* **end-to-end phase**: the resident run's velocity loss on all latent weights, scales and
  biases, paged: the forward runs without autograd on a packed copy of the student (2-bit codes +
  float32 scales) and keeps each block's input; the backward recomputes one block at a time with
  its latent weights and optimizer state brought from the host, steps its optimizer at once and
  passes the input gradient on. Device memory: one block's training state, the packed student,
  the block inputs of the step's samples. Host memory: latent weights + optimizer states.

With the same settings the result equals the resident run's up to float summation order (the
same per-block gradients and optimizer states), which ``tests/test_distill_streamed.py`` checks.

State folder (``resume``): ``settings.json`` (what the run was started with), ``block-NNN.pt``
per finished block (trainable tensors, optimizer state, exported layers), ``current.pt`` (the
phase in progress), all written atomically by rank 0.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from tqdm import tqdm

from ..core.calibration_data import CalibrationSample
from ..core.checkpoint import layer_tensors
from ..core.flux_layout import config_from_state_dict
from ..core.flux_model import flux_from_state_dict
from ..core.packing import pack_2bit, unpack_2bit
from ..core.ternary_linear import (
    TernaryLinear,
    replace_with_ternary_from_state_dict,
    set_submodule,
    ternary_modules,
)
from ..core.ternary_weight import TernaryWeight
from .distill import (
    DistillConfig,
    STETernaryLinear,
    _lr_factor,
    _save_state,
    make_optimizer,
    samples_for_step,
)
from .distributed import (
    GracefulStop,
    World,
    all_reduce_grads,
    all_reduce_sum,
    barrier,
    local_positions,
    maybe_kill_for_test,
    shard_module,
)
from .errors import QuantizeError
from .teacher_cache import Stage, TeacherCache, block_args, final_tokens, join_for, new_block, stages

log = logging.getLogger(__name__)


class FrozenCodeLinear(nn.Module):
    """A ternary Linear with fixed packed codes and a trainable scale (and bias):
    ``w = (code - 1) * |s|``; what the end-to-end phase trains."""

    def __init__(self, tw: TernaryWeight, bias: torch.Tensor | None):
        super().__init__()
        self.shape = tw.shape
        self.group_size = tw.group_size
        self.register_buffer("packed", tw.packed)
        self.scale = nn.Parameter(tw.scale.float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        s = self.scale.abs().to(dtype)
        if self.group_size:
            s = s.repeat_interleave(self.group_size, dim=1)
        return (unpack_2bit(self.packed, self.shape[1]).to(dtype) - 1) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def to_ternary(self) -> TernaryWeight:
        codes = unpack_2bit(self.packed, self.shape[1]).cpu()
        return TernaryWeight.from_codes(codes, self.scale.detach().abs().cpu(), self.group_size)


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def student_block(config, stage: Stage, sd: dict[str, torch.Tensor], device) -> nn.Module:
    """One block of the student checkpoint ``sd`` (runtime layout) on ``device``, float32."""
    sub = _prefixed(sd, stage.prefix)
    with torch.device("meta"):
        block = new_block(config, stage, dtype=torch.float32)
    replace_with_ternary_from_state_dict(block, sub)
    tensors = {
        k: v.to(device)
        if (not v.is_floating_point() or k.endswith(".weight_scale"))
        else v.to(device, torch.float32)
        for k, v in sub.items()
    }
    block.load_state_dict(tensors, strict=True, assign=True)
    return block.eval()


def export_module(prefix: str, module: nn.Module, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (runtime layout) of the trained ternary layers in ``module``."""
    out: dict[str, torch.Tensor] = {}
    for n, m in module.named_modules():
        if isinstance(m, (STETernaryLinear, FrozenCodeLinear)):
            out.update(_export_one(prefix + n, m, like))
    return out


def _export_one(
    name: str, m: STETernaryLinear | FrozenCodeLinear, like: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = dict(layer_tensors(name, m.to_ternary()))
    if m.bias is not None:
        out[f"{name}.bias"] = m.bias.detach().cpu().to(like[f"{name}.bias"].dtype)
    return out


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


class StateFolder:
    """The resume state of a streamed run (see the module docstring)."""

    def __init__(self, path: Path, world: World):
        self.path = Path(path)
        self.world = world

    def start(self, settings: dict[str, Any], resume: bool) -> None:
        sf = self.path / "settings.json"
        if resume:
            if not sf.is_file():
                raise QuantizeError(f"cannot resume: {self.path} holds no distill state (settings.json)")
            old = json.loads(sf.read_text())
            diff = _settings_diff(old, settings)
            if diff:
                detail = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
                raise QuantizeError(
                    f"{self.path}: saved by a run with different settings ({detail}); resume with the "
                    "same arguments and files, or start again without --resume"
                )
            return
        if self.world.is_main:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
            tmp = self.path / ".settings.json.tmp"
            tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
            os.replace(tmp, sf)
        barrier(self.world)

    def block_file(self, b: int) -> Path:
        return self.path / f"block-{b:03d}.pt"

    def save_block(self, b: int, state: dict[str, Any]) -> None:
        """A finished block: its trainable tensors, optimizer state and exported layers."""
        if self.world.is_main:
            _save_state(self.block_file(b), state)
            (self.path / "current.pt").unlink(missing_ok=True)
        barrier(self.world)

    def load_current(self, phase: str, stage: int) -> dict[str, Any] | None:
        p = self.path / "current.pt"
        if not p.is_file():
            return None
        st = torch.load(p, map_location="cpu", weights_only=False)
        return st if (st.get("phase"), st.get("stage")) == (phase, stage) else None

    def save_current(self, state: dict[str, Any]) -> None:
        if self.world.is_main:
            _save_state(self.path / "current.pt", state)
        barrier(self.world)


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _ste_block(
    cfg_model,
    stage: Stage,
    sd: dict[str, torch.Tensor],
    device: torch.device,
    teacher_get: Callable[[str], torch.Tensor] | None = None,
    params: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """Block ``stage`` of ``sd`` with its ternary layers as :class:`STETernaryLinear`: latent
    weights from the teacher (``teacher_get``) or from saved ``params``. Returns (block,
    trainable parameters by name)."""
    block = student_block(cfg_model, stage, sd, device)
    for p in block.parameters():
        p.requires_grad_(False)
    for n in [n for n, m in block.named_modules() if isinstance(m, TernaryLinear)]:
        tl = block.get_submodule(n)
        if params is not None and teacher_get is None:
            # the saved tensors replace latent, scale and bias: no initialisation from the codes
            bias = params.get(f"{n}.bias")
            ste = STETernaryLinear(
                params[f"{n}.latent"].to(device),
                params[f"{n}.scale"].to(device),
                None if bias is None else bias.to(device),
                tl.group_size,
            )
        else:
            tw = None if teacher_get is None else teacher_get(f"{stage.prefix}{n}.weight").to(device)
            ste = STETernaryLinear.from_ternary(tl, tw)
        set_submodule(block, n, ste)
    trainable = {n: p for n, p in block.named_parameters() if p.requires_grad}
    if params is not None:
        if set(params) != set(trainable):
            raise QuantizeError(
                f"{stage.name}: saved tensors {sorted(set(params) ^ set(trainable))} do not match"
            )
        if teacher_get is not None:
            with torch.no_grad():
                for n, t in params.items():
                    trainable[n].copy_(t.to(device))
    return block, trainable


def _prepare(block: nn.Module, counter: dict[str, Any]) -> nn.Module:
    """``--shard fsdp``: shard the block's trainable state over the ranks (FSDP2, one unit per
    ternary layer, gradients summed); else the block as it is."""
    if counter["shard"]:
        shard_module(block, counter["world"], per_layer=STETernaryLinear)
    return block


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole (unsharded) optimizer state, distributing it like the parameters when they are
    FSDP shards."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if any(isinstance(p, DTensor) for p in params):
        state = {
            "param_groups": state["param_groups"],
            "state": {
                i: {
                    k: distribute_tensor(
                        v.to(params[i].device_mesh.device_type), params[i].device_mesh, params[i].placements
                    )
                    if isinstance(v, torch.Tensor) and v.shape == params[i].shape
                    else v
                    for k, v in st.items()
                }
                for i, st in state["state"].items()
            },
        }
    opt.load_state_dict(state)


def _release() -> None:
    """Free a block's training state now. bitsandbytes' ``Optimizer8bit.load_state_dict`` leaves a
    reference cycle (a recursive local function whose closure holds the optimizer), so a loaded
    optimizer — with its parameters, gradients and state — outlives ``del`` until the cyclic
    garbage collector runs: on a paged end-to-end step that is many blocks' latents at once
    (measured: +1.2 GB peak on the hidden-512 FLUX.1-dev bench, ``bench/distill_memory.py``)."""
    gc.collect()


def _reduce(params: dict[str, nn.Parameter], counter: dict[str, Any]) -> None:
    """Sum the gradients over the ranks (FSDP has done it for sharded blocks)."""
    if not counter["shard"]:
        all_reduce_grads(params.values(), counter["world"])


def _optimizer(module: nn.Module, cfg: DistillConfig, counter: dict[str, Any]) -> torch.optim.Optimizer:
    """The resident run's optimizer groups (latents, scales, biases) for ``module``'s layers."""
    ste = [m for m in module.modules() if isinstance(m, STETernaryLinear)]
    lr, slr = cfg.lr, cfg.scale_lr or cfg.lr / 10
    groups = [
        {"params": [m.latent for m in ste], "lr": lr, "base_lr": lr},
        {"params": [m.scale for m in ste], "lr": slr, "base_lr": slr},
        {"params": [m.bias for m in ste if m.bias is not None], "lr": lr, "base_lr": lr},
    ]
    opt, counter["optimizer"] = make_optimizer([g for g in groups if g["params"]], cfg.optimizer)
    return opt


def block_loss(out, args: tuple, target: dict[str, torch.Tensor], stage: Stage) -> torch.Tensor:
    """The block phase's loss of one sample: the error of the block's outputs ``out`` relative to
    the teacher's residual update (``target`` minus the block's stream inputs ``args``)."""
    outs = out if isinstance(out, tuple) else (out,)
    loss = torch.zeros((), dtype=torch.float32, device=outs[0].device)
    for i, f in enumerate(stage.fields):
        o_t = target[f]
        upd = (o_t - args[i]).float().pow(2).sum().clamp_min(1e-12)
        loss = loss + (outs[i].float() - o_t.float()).pow(2).sum() / upd
    return loss


def _set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor


@dataclass
class PhaseRun:
    """What the two phases share: the recipe, where the state goes, the device, and the run's
    bookkeeping (``counter``: steps done, the world, the signal handler, sharding, the optimizer
    name; ``host``: every block's trainable tensors and optimizer state between phases)."""

    cfg: DistillConfig
    state: StateFolder
    world: World = field(default_factory=World)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compute_dtype: torch.dtype = torch.float32
    stop_after: int | None = None
    shard: bool = False
    bar: tqdm = field(default_factory=lambda: tqdm(disable=True))
    history: list[dict[str, Any]] = field(default_factory=list)
    host: dict[Any, dict[str, Any]] = field(default_factory=dict)
    counter: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counter = {
            "done": 0,
            "world": self.world,
            "graceful": GracefulStop(),
            "shard": self.shard,
            **self.counter,
        }


def _block_phase(
    run: PhaseRun,
    cfg_model,
    sd: dict[str, torch.Tensor],
    teacher_get: Callable[[str], torch.Tensor],
    cache: TeacherCache,
    n_samples: int,
    only: Sequence[int] | None = None,
) -> bool:
    """Train each block on its cached input/output pairs; ``run.host[b]`` receives block ``b``'s
    trainable tensors and optimizer state (the end-to-end phase continues from them).
    ``only``: train just these block indices (``bench/distill_memory.py`` runs one block)."""
    cfg, state, world, device, counter = run.cfg, run.state, run.world, run.device, run.counter
    compute_dtype, stop_after, bar, history, host = (
        run.compute_dtype,
        run.stop_after,
        run.bar,
        run.history,
        run.host,
    )
    sts = stages(cfg_model)
    nb = cfg.n_block_steps
    for b, stage in enumerate(sts):
        if only is not None and b not in only:
            continue
        if state.block_file(b).is_file():
            saved = torch.load(state.block_file(b), map_location="cpu", weights_only=False)
            sd.update(saved["export"])
            host[b] = {"params": saved["params"], "optimizer": saved["optimizer"]}
            counter["done"] += nb
            bar.update(nb)
            continue
        cur = state.load_current("block", b)
        block, params = _ste_block(
            cfg_model,
            stage,
            sd,
            device,
            teacher_get=teacher_get,
            params=None if cur is None else cur["params"],
        )
        block = _prepare(block.train(), counter)
        params = {n: p for n, p in block.named_parameters() if p.requires_grad}
        opt = _optimizer(block, cfg, counter)
        start = 0
        if cur is not None:
            _load_optimizer(opt, cur["optimizer"])
            start = int(cur["step"])
            counter["done"] += start
            bar.update(start)

        def loss_of(j: int, b=b, stage=stage, block=block) -> torch.Tensor:
            stream = cache.stage_input(b, stage, j, device)
            args = block_args(cfg_model, stage, stream)
            target = cache.boundary(b + 1, j, device)
            with _autocast(device, compute_dtype):
                out = block(*args)
            return block_loss(out, args, target, stage) / len(sts)

        for step in range(start, nb):
            _set_lr(opt, _lr_factor(step, nb))
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for idx in local_positions(samples_for_step(step, n_samples, cfg.batch, cfg.seed), world):
                loss = loss_of(idx)
                (loss / cfg.batch).backward()
                total += float(loss.detach()) / cfg.batch
            _reduce(params, counter)
            total = all_reduce_sum(total, world)
            opt.step()
            if _after_step(counter, bar, history, "block", b, step, total, cfg, stop_after, nb):
                state.save_current(
                    {
                        "phase": "block",
                        "stage": b,
                        "step": step + 1,
                        "params": {n: _full(p) for n, p in params.items()},
                        "optimizer": _to_cpu(opt.state_dict()),
                    }
                )
            _after_save(counter)
            if counter.get("stop"):
                return False
        host[b] = {"params": {n: _full(p) for n, p in params.items()}, "optimizer": _to_cpu(opt.state_dict())}
        whole, _ = _ste_block(cfg_model, stage, sd, torch.device("cpu"), params=host[b]["params"])
        done = export_module(stage.prefix, whole, sd)
        sd.update(done)
        state.save_block(b, {**host[b], "export": done})
        del block, params, opt
        _release()
    return True


def _full(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``t``, gathered whole when it is an FSDP shard (a collective then)."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _full(obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _after_step(counter, bar, history, phase, stage, step, total, cfg, stop_after, n_steps) -> bool:
    """Book-keeping after one optimizer step; True when the state is to be saved now."""
    history.append({"phase": phase, "stage": stage, "step": step + 1, "loss": total})
    bar.update(1)
    bar.set_postfix(phase=phase, stage=stage, loss=f"{total:.4g}")
    counter["done"] += 1
    stopping = stop_after is not None and counter["done"] >= stop_after and step + 1 < n_steps
    counter["stop"] = stopping
    signalled = counter["graceful"].requested(counter["world"])  # a collective: every rank
    counter["signalled"] = signalled
    return (step + 1) % cfg.save_every == 0 or stopping or signalled


def _after_save(counter: dict[str, Any]) -> None:
    """After a step (and its save): the kill test hook, then a SIGTERM/Ctrl-C stop."""
    maybe_kill_for_test(counter["world"], counter["done"])
    if counter.get("signalled"):
        counter["graceful"].raise_stop()


def _view(ste: STETernaryLinear) -> FrozenCodeLinear:
    """A forward-only copy of ``ste`` (packed codes, float32 scale, bias): the same weight."""
    tw = TernaryWeight(pack_2bit(ste.codes()), ste.scale.detach().float(), ste.latent.shape, ste.group_size)
    m = FrozenCodeLinear(tw, ste.bias)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _e2e_phase(
    run: PhaseRun,
    cfg_model,
    sd: dict[str, torch.Tensor],
    teacher_get: Callable[[str], torch.Tensor],
    samples: Sequence[CalibrationSample],
    cache: TeacherCache,
) -> bool:
    """End to end on the velocity, the resident run's math with one block resident at a time.

    The forward runs without autograd on a packed copy of the student (codes + float32 scales)
    and keeps each block's input; the backward walks the blocks from the last to the first: the
    block's latent weights and optimizer state come from the host, the block is recomputed on
    its saved input with autograd, its gradient (summed over the ranks) makes the optimizer step
    at once, and the gradient of its input goes on to the block before. Latent weights and
    optimizer state of the other blocks stay on the host."""
    cfg, state, world, device, counter = run.cfg, run.state, run.world, run.device, run.counter
    compute_dtype, stop_after, bar, history, host = (
        run.compute_dtype,
        run.stop_after,
        run.bar,
        run.history,
        run.host,
    )
    nb = cfg.n_block_steps
    n_e2e = cfg.steps - nb
    if n_e2e <= 0:
        return True
    sts = stages(cfg_model)
    model = flux_from_state_dict(sd, dtype=torch.float32, device=device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # ternary layers outside the blocks (FLUX.2's global modulation under 'blocks+modulation'):
    # trained in this phase only (no block loss reaches them), from the teacher like the blocks;
    # their outputs are the stream's ``mod_*`` entries, whose gradients every block adds to
    outside = [n for n, _ in ternary_modules(model) if not n.startswith(("double_blocks.", "single_blocks."))]
    if outside and "outside" not in host:
        ste = nn.ModuleList(
            STETernaryLinear.from_ternary(model.get_submodule(n), teacher_get(f"{n}.weight").to(device))
            for n in outside
        )
        host["outside"] = {
            "params": {k: v.detach().cpu() for k, v in ste.named_parameters()},
            "optimizer": None,
        }
    outside_ste: nn.ModuleList | None = None

    def outside_modules() -> nn.ModuleList:
        """The outside layers as trainable modules, from the host state."""
        mods = nn.ModuleList(
            STETernaryLinear.from_ternary(model.get_submodule(n)) if outside_ste is None else outside_ste[i]
            for i, n in enumerate(outside)
        )
        with torch.no_grad():
            for k, p in mods.named_parameters():
                p.copy_(host["outside"]["params"][k].to(device))
                p.requires_grad_(True)
        return mods

    if outside:
        outside_ste = outside_modules()
        for n, m in zip(outside, outside_ste):
            set_submodule(model, n, _view(m))

    def install_views(b: int, block: nn.Module) -> None:
        target = model.get_submodule(sts[b].name)
        for n, m in block.named_modules():
            if isinstance(m, STETernaryLinear):
                set_submodule(target, n, _view(m))

    for b, stage in enumerate(sts):  # the packed forward copy of every block, from the host state
        blk, _ = _ste_block(cfg_model, stage, sd, torch.device("cpu"), params=host[b]["params"])
        install_views(b, blk.to(device))
        del blk
    start = 0
    cur = state.load_current("e2e", 0)
    if cur is not None:
        if outside:
            host["outside"] = cur["host"]["outside"]
            outside_ste = outside_modules()
            for n, m in zip(outside, outside_ste):
                set_submodule(model, n, _view(m))
        for b in range(len(sts)):
            host[b] = cur["host"][b]
            blk, _ = _ste_block(cfg_model, sts[b], sd, torch.device("cpu"), params=host[b]["params"])
            install_views(b, blk.to(device))
        start = int(cur["step"])
        counter["done"] += start
        bar.update(start)
    depth = cfg_model.depth
    for step in range(start, n_e2e):
        factor = _lr_factor(step, n_e2e)
        local = local_positions(samples_for_step(nb + step, len(samples), cfg.batch, cfg.seed), world)
        saved: list[dict[str, Any]] = []
        total = 0.0
        for j in local:  # forward (no autograd), keep each block's input; the loss's gradient
            inp = samples[j].as_inputs(device, torch.float32)
            with torch.no_grad(), _autocast(device, compute_dtype):
                stream = model.embed(**model.tokens_of(**inp))
            const = {k: v for k, v in stream.items() if k not in ("img", "txt", "x")}
            cur_s = {"img": stream["img"], "txt": stream["txt"]}
            inputs = []
            for stage in sts:
                cur_s = join_for(stage, cur_s)
                inputs.append(cur_s)
                with torch.no_grad(), _autocast(device, compute_dtype):
                    out = model.get_submodule(stage.name)(*block_args(cfg_model, stage, {**const, **cur_s}))
                out = out if isinstance(out, tuple) else (out,)
                cur_s = dict(zip(stage.fields, out))
            last = {f: t.detach().requires_grad_(True) for f, t in cur_s.items()}
            txt_len = inputs[0]["txt"].shape[1]
            vt = cache.velocity(j, device)
            with _autocast(device, compute_dtype):
                o = model.final_layer(final_tokens(last, txt_len), const["vec"])
            vs = model.tokens_to_latent(o, inp["x"]).float()
            loss = (vs - vt).pow(2).sum() / vt.pow(2).sum().clamp_min(1e-12)
            (loss / cfg.batch).backward()
            total += float(loss.detach()) / cfg.batch
            saved.append(
                {
                    "const": const,
                    "inputs": inputs,
                    "grad": {f: t.grad for f, t in last.items()},
                    # the modulation entries the outside layers make (FLUX.2 names them mod_*)
                    "mod_grad": {k: None for k in const if outside and k.startswith("mod_")},
                }
            )
        total = all_reduce_sum(total, world)
        for b in reversed(range(len(sts))):  # backward, one block resident at a time
            stage = sts[b]
            block, params = _ste_block(cfg_model, stage, sd, device, params=host[b]["params"])
            block = _prepare(block.train(), counter)
            params = {n: p for n, p in block.named_parameters() if p.requires_grad}
            opt = _optimizer(block, cfg, counter)
            _load_optimizer(opt, host[b]["optimizer"])
            _set_lr(opt, factor)
            for sv in saved:
                ins = {f: t.detach().requires_grad_(True) for f, t in sv["inputs"][b].items()}
                mods = {k: sv["const"][k].detach().requires_grad_(True) for k in sv["mod_grad"]}
                with _autocast(device, compute_dtype):
                    out = block(*block_args(cfg_model, stage, {**sv["const"], **mods, **ins}))
                outs = out if isinstance(out, tuple) else (out,)
                grads = [sv["grad"][f] for f in stage.fields]
                torch.autograd.backward(outs, grads)
                for k, t in mods.items():
                    if t.grad is not None:
                        sv["mod_grad"][k] = (
                            t.grad if sv["mod_grad"][k] is None else sv["mod_grad"][k] + t.grad
                        )
                g = {f: t.grad for f, t in ins.items()}
                if b == depth and "x" in g:  # the joined stream goes back to img and txt
                    n_txt = sv["inputs"][0]["txt"].shape[1]
                    g = {"txt": g["x"][:, :n_txt], "img": g["x"][:, n_txt:]}
                sv["grad"] = g
                sv["inputs"][b] = None
            _reduce(params, counter)
            opt.step()
            host[b] = {
                "params": {n: _full(p) for n, p in params.items()},
                "optimizer": _to_cpu(opt.state_dict()),
            }
            del block, params, opt
            _release()
            whole, _ = _ste_block(cfg_model, stage, sd, torch.device("cpu"), params=host[b]["params"])
            install_views(b, whole.to(device))
            del whole
        if outside:  # the outside layers, from the gradients the blocks left on their outputs
            mods = outside_modules()
            for n, m in zip(outside, mods):
                set_submodule(model, n, m)
            opt = _optimizer(mods, cfg, counter)
            if host["outside"]["optimizer"] is not None:
                opt.load_state_dict(host["outside"]["optimizer"])
            _set_lr(opt, factor)
            for sv in saved:
                with _autocast(device, compute_dtype):
                    out = model.modulations(sv["const"]["vec"])
                keys = [k for k, g in sv["mod_grad"].items() if g is not None]
                torch.autograd.backward([out[k] for k in keys], [sv["mod_grad"][k] for k in keys])
            all_reduce_grads([p for p in mods.parameters()], world)
            opt.step()
            host["outside"] = {
                "params": {k: v.detach().cpu().clone() for k, v in mods.named_parameters()},
                "optimizer": _to_cpu(opt.state_dict()),
            }
            for n, m in zip(outside, mods):
                set_submodule(model, n, _view(m))
            del mods, opt
            _release()
        if _after_step(counter, bar, history, "e2e", 0, step, total, cfg, stop_after, n_e2e):
            state.save_current({"phase": "e2e", "stage": 0, "step": step + 1, "host": host})
        _after_save(counter)
        if counter.get("stop"):
            return False
    for b, stage in enumerate(sts):
        blk, _ = _ste_block(cfg_model, stage, sd, torch.device("cpu"), params=host[b]["params"])
        sd.update(export_module(stage.prefix, blk, sd))
    if outside:
        mods = outside_modules()
        for n, m in zip(outside, mods):
            sd.update(_export_one(n, m, sd))
    return True


def distill_streamed(
    sd: dict[str, torch.Tensor],
    teacher_get: Callable[[str], torch.Tensor],
    samples: Sequence[CalibrationSample],
    cache: TeacherCache,
    cfg: DistillConfig,
    state_dir: Path,
    *,
    settings: dict[str, Any],
    resume: bool = False,
    stop_after: int | None = None,
    world: World | None = None,
    device: torch.device | None = None,
    compute_dtype: torch.dtype = torch.float32,
    shard: str = "none",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the student checkpoint ``sd`` (runtime layout; updated in place with the trained
    layers) against the cached teacher. ``teacher_get(key)`` reads one teacher tensor (the float
    weights the latent weights start from). ``settings`` identify the run for ``resume``."""
    world = world or World()
    device = device or torch.device("cpu")
    if not samples:
        raise QuantizeError("distill needs calibration samples")
    if cache.n_samples < len(samples):
        raise QuantizeError(f"{cache.directory}: the teacher cache holds fewer samples than given")
    cfg_model = config_from_state_dict(sd)
    state = StateFolder(state_dir, world)
    state.start({**settings, "distill": {k: v for k, v in asdict(cfg).items() if k != "save_every"}}, resume)
    n_stages = len(stages(cfg_model))
    total = n_stages * cfg.n_block_steps + max(cfg.steps - cfg.n_block_steps, 0)
    run = PhaseRun(
        cfg,
        state,
        world=world,
        device=device,
        compute_dtype=compute_dtype,
        stop_after=stop_after,
        shard=shard == "fsdp" and world.distributed,
        bar=tqdm(
            total=total, desc="distill (streamed)", unit="step", disable=not progress or not world.is_main
        ),
    )
    t0 = time.perf_counter()
    with run.counter["graceful"]:
        t_block = time.perf_counter()
        ok = _block_phase(run, cfg_model, sd, teacher_get, cache, len(samples))
        t_block = time.perf_counter() - t_block
        t_e2e = time.perf_counter()
        ok = ok and _e2e_phase(run, cfg_model, sd, teacher_get, samples, cache)
        t_e2e = time.perf_counter() - t_e2e
    run.bar.close()
    return {
        "completed": ok,
        "optimizer": run.counter.get("optimizer", cfg.optimizer),
        "seconds": time.perf_counter() - t0,
        "seconds_block_phase": t_block,
        "seconds_e2e_phase": t_e2e,
        "history": run.history,
    }
