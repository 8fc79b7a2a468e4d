"""Memory plan of ``ternaryflux distill`` (issue 13): device, host and disk bytes per phase,
computed without loading weights.

Shapes come from the model itself, built on the ``meta`` device from a
:class:`~..core.flux_layout.FluxConfig` / :class:`~..core.flux_layout.Flux2Config` (so nothing
here repeats a layer shape). Three kinds of numbers:

* **analytic** — parameter-sized state: trainable latents / scales / biases (fp32), their
  gradients (fp32), optimizer state (torch AdamW: 8 B/param; bitsandbytes AdamW8bit: 2 B/param
  plus two fp32 absmax per 256-element block for tensors of >= 4096 elements, and 8 B/param
  below that, as bitsandbytes does), frozen packed codes (2-bit, ``packed_2bit_cols``), frozen
  float weights, the cached stream tensors one sample needs, the teacher-cache file sizes.
* **counted** — what autograd saves for backward: one training step of one block (and the
  end-to-end student) is run on ``meta`` tensors of the real shapes under
  :func:`torch.autograd.graph.saved_tensors_hooks`; saved tensors are deduplicated by storage,
  parameters and the step's inputs are excluded, the dense weight the straight-through forward
  materialises (and ``F.linear`` saves) is reported separately. Exact at any size, in
  milliseconds.
* **simulated** — the transient peak: the same meta step runs under a dispatch mode that keeps
  the live bytes of every tensor the step allocates (freed when its storage dies), i.e. the
  peak of an allocator without caching; ``transient = simulated peak - saved``. The rule is
  validated against the real peak RSS by ``bench/distill_memory.py``.

Compute dtype ``bfloat16``/``float16``: the step is traced with the stream in that dtype (the
straight-through weight is cast to it, ``F.linear`` saves the cast copy); the norms and losses
follow the model code. (Autocast itself cannot run on meta tensors; its fp32 islands — layer
norm, softmax — are a few activation-sized tensors more, inside the 15% the bench checks in
float32.)

Strategies and phases follow the design of issue 13 (``/work/notes/distill-design.md``):
``streamed`` = teacher cache build, block phase (worst block), end-to-end phase (codes frozen and
packed, scales + biases trainable, every block under non-reentrant activation checkpointing);
``resident`` = ``quant/distill.py`` (teacher and student whole on the device).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..core.flux_layout import FLUX2_VARIANTS, Flux2Config, FluxConfig, architecture
from ..core.flux_model import model_class
from ..core.packing import packed_2bit_cols
from ..core.ternary_weight import TernaryWeight, num_groups
from .distill import STETernaryLinear
from .distill_streamed import FrozenCodeLinear, block_loss
from .teacher_cache import STREAM_FIELDS, Stage, block_args, join_for, new_block, stages

GB = 10**9
GiB = 1 << 30

# name -> (config, default text length). FLUX.1-schnell was trained with 256 T5 tokens, the
# others with 512.
PRESETS: dict[str, tuple[FluxConfig | Flux2Config, int]] = {
    "flux1-dev": (FluxConfig(), 512),
    "flux1-schnell": (FluxConfig(guidance_embed=False), 256),
    "flux2-klein-4b": (FLUX2_VARIANTS["klein-4b"], 512),
    "flux2-klein-9b": (FLUX2_VARIANTS["klein-9b"], 512),
    "flux2-dev": (FLUX2_VARIANTS["dev"], 512),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPTIMIZERS = ("adamw8bit", "adamw")
SHARD_MODES = ("none", "fsdp")
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes: smaller tensors keep 32-bit optimizer state
BNB_BLOCK = 256  # bitsandbytes blockwise quantization: one fp32 absmax per 256 values per state

# Component keys, in table order, with their labels.
COMPONENTS = {
    "trainable": "trainable latents / scales / biases (fp32)",
    "gradients": "gradients (fp32)",
    "optimizer": "optimizer state",
    "unsharded": "FSDP all-gathered params + full grads",
    "frozen_packed": "frozen packed weights (2-bit)",
    "frozen_float": "frozen float weights",
    "dense": "dense weights materialised (saved)",
    "stream": "cached stream tensors in flight",
    "activations": "saved activations",
    "transient": "transient peak (backward / no-grad forward)",
    "optimizer_step": "optimizer step temporaries",
    "streams": "every sample's stream at one boundary",
    "finished_blocks": "finished blocks' latents + optimizer state",
    "latents_optimizer": "all blocks' latents + optimizer state",
    "staging": "one block's state copied back (staging)",
    "read_buffer": "read buffer (one tensor, source dtype)",
    "write_buffer": "serialised boundary file",
    "whole_files": "whole state dicts (load)",
}


@dataclass(frozen=True)
class PlanSettings:
    """What the plan depends on besides the model. ``txt_len=None``: the preset's default
    (512; FLUX.1-schnell 256). ``device``: ``cuda`` (host staging buffers are separate memory) or
    ``cpu`` (the device *is* the host: no staging copies)."""

    resolution: int = 1024
    txt_len: int | None = None
    batch: int = 1
    compute_dtype: str = "bfloat16"
    cache_dtype: str = "bfloat16"
    source_dtype: str = "bfloat16"
    optimizer: str = "adamw8bit"
    world_size: int = 1
    shard: str = "none"
    num_samples: int = 256
    device: str = "cuda"

    def check(self) -> None:
        for name in ("compute_dtype", "cache_dtype", "source_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {tuple(DTYPES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: expected one of {OPTIMIZERS}")
        if self.shard not in SHARD_MODES:
            raise ValueError(f"shard {self.shard!r}: expected one of {SHARD_MODES}")
        if self.resolution < 16 or self.resolution % 16:
            raise ValueError(f"resolution {self.resolution}: expected a positive multiple of 16 pixels")
        for name in ("batch", "world_size", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch % self.world_size:
            raise ValueError(f"batch {self.batch} must be a multiple of the world size {self.world_size}")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device {self.device!r}: expected 'cuda' or 'cpu'")

    @property
    def image_tokens(self) -> int:
        """FLUX.1: latent /8 then 2x2 patches; FLUX.2: latent /16, patch 1 — both (res/16)^2."""
        return (self.resolution // 16) ** 2


@dataclass
class PhasePlan:
    name: str
    title: str
    device: dict[str, int]
    host: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def total_bytes(self) -> int:
        return self.device_bytes + self.host_bytes


@dataclass
class DistillPlan:
    model: str
    config: FluxConfig | Flux2Config
    policy: str
    group_size: int
    settings: PlanSettings
    txt_len: int
    params_total: int
    params_ternary: int
    phases: dict[str, PhasePlan]
    cache_bytes_per_sample: int
    cache_files: dict[str, int]  # per sample: const / boundaries / velocity
    worst_block: str

    @property
    def cache_disk_bytes(self) -> int:
        return self.cache_bytes_per_sample * self.settings.num_samples

    def peak_device_bytes(self, strategy: str = "streamed") -> int:
        names = ("resident_block", "resident_e2e") if strategy == "resident" else STREAMED_PHASES
        return max(self.phases[n].device_bytes for n in names)


STREAMED_PHASES = ("cache", "block", "e2e")


# --------------------------------------------------------------------------- memory units


_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)\s*$")


def parse_memory(text: str) -> int:
    """``"22GB"`` (10^9), ``"22GiB"`` (2^30), ``"24000MB"``, ``"1.5 TB"`` -> bytes.
    Raises ``ValueError`` naming the problem (no unit, unknown unit, not a positive number)."""
    if not isinstance(text, str):
        raise ValueError(f"memory size must be a string like '22GB', got {text!r}")
    m = _MEM_RE.match(text)
    if m is None:
        if re.match(r"^\s*[0-9.]+\s*$", text):
            raise ValueError(f"memory size {text!r} has no unit: write e.g. '22GB' or '22GiB'")
        raise ValueError(f"cannot read memory size {text!r}: expected a number and a unit, e.g. '22GB'")
    num, unit = float(m.group(1)), m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(
            f"unknown unit {m.group(2)!r} in {text!r}: use B, KB, MB, GB, TB (10^3) or KiB, MiB, GiB, TiB (2^10)"
        )
    if num <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return int(round(num * _UNITS[unit]))


def fmt_bytes(n: float) -> str:
    for unit, div in (("GB", GB), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- optimizer state


def optimizer_state_bytes(numels: Iterable[int], optimizer: str) -> int:
    """Bytes of optimizer state for parameters of the given sizes (see module doc)."""
    total = 0
    for n in numels:
        if optimizer == "adamw" or n < BNB_MIN_8BIT_SIZE:
            total += 8 * n
        else:
            total += 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCK) + 2 * 256 * 4  # states, absmax, qmaps
    return total


# --------------------------------------------------------------------------- meta tracing


class LiveBytes(TorchDispatchMode):
    """Live bytes of the tensors allocated under this mode (by storage), and their peak.
    Works on ``meta`` tensors (the storage's lifetime is tracked, not its memory)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.exclude = {_storage_key(t) for t in exclude}  # pre-existing storages (views of params)
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live or key in self.exclude:
            return
        n = st.nbytes()
        self.live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._release, key)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


class _FlashAttention(torch.autograd.Function):
    """Memory stand-in for a fused attention kernel (CUDA flash / memory-efficient, CPU flash):
    no ``L x L`` matrix; saves q, k, v, the output and the fp32 log-sum-exp per query."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out, lse = ctx.saved_tensors
        delta = torch.empty_like(lse)  # rowsum(dO * O), fp32
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del delta
        return grads


@contextmanager
def fused_attention_on_meta():
    """On meta tensors, ``F.scaled_dot_product_attention`` costs what a fused kernel costs (the
    meta decomposition is the math path, which would materialise ``L x L`` scores). Patches the
    module attribute for the duration (the FLUX layers look it up at call time)."""
    orig = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        if q.device.type == "meta" and not args and not kwargs:
            return _FlashAttention.apply(q, k, v)
        return orig(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class SavedTensors:
    """``saved_tensors_hooks`` that records every tensor autograd saves, once per storage,
    skipping the storages in ``exclude`` (parameters, buffers, the step's inputs). Keeps only
    (bytes, shape) — holding the tensors would keep them alive through backward."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.exclude = {_storage_key(t) for t in exclude}
        self.seen: dict[int, tuple[int, tuple[int, ...]]] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        k = _storage_key(t)
        if k not in self.exclude and k not in self.seen:
            self.seen[k] = (t.untyped_storage().nbytes(), tuple(t.shape))
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def bytes(self, shape_pred: Callable[[tuple[int, ...]], bool] = lambda shape: True) -> int:
        return sum(n for n, shape in self.seen.values() if shape_pred(shape))


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd saves while ``fn()`` runs (deduplicated by storage, ``exclude`` left out).
    Works on real and meta tensors."""
    rec = SavedTensors(exclude)
    with rec.hooks():
        fn()
    return rec.bytes()


def ternary_linear_paths(module: nn.Module, prefix: str, arch: str, policy: str) -> list[str]:
    a = architecture(arch)
    return [
        n
        for n, m in module.named_modules()
        if isinstance(m, nn.Linear) and a.is_ternary_layer(f"{prefix}{n}" if n else prefix[:-1], policy)
    ]


def _swap(module: nn.Module, paths: list[str], make: Callable[[nn.Linear], nn.Module]) -> None:
    for p in paths:
        old = module.get_submodule(p)
        parent, _, name = p.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, make(old))


def _effective_group_size(group_size: int) -> Callable[[int], int]:
    return lambda k: group_size if group_size and k % group_size == 0 else 0


def _ste_linear(m: nn.Linear, gs: int, device) -> STETernaryLinear:
    """The engine's trainable layer (block phase, end-to-end recompute) of ``m``'s shape."""
    n, k = m.out_features, m.in_features
    return STETernaryLinear(
        torch.empty(n, k, device=device),
        torch.ones(n, num_groups(k, gs), device=device),
        torch.zeros(n, device=device) if m.bias is not None else None,
        gs,
    )


def _packed_linear(m: nn.Linear, gs: int, device) -> FrozenCodeLinear:
    """The engine's forward-only layer of the end-to-end phase (2-bit codes, fp32 scale, bias)."""
    n, k = m.out_features, m.in_features
    packed = torch.full((n, packed_2bit_cols(k)), 0b01010101, dtype=torch.uint8, device=device)
    tw = TernaryWeight(packed, torch.full((n, num_groups(k, gs)), 0.02, device=device), (n, k), gs)
    lin = FrozenCodeLinear(tw, torch.zeros(n, device=device) if m.bias is not None else None)
    for p in lin.parameters():
        p.requires_grad_(False)
    return lin


def _outside_model(config, device="meta") -> nn.Module:
    """Everything outside the blocks (embedders, final layer, FLUX.2's global modulation)."""
    with torch.device(device):
        return model_class(config)(replace(config, depth=0, depth_single_blocks=0), dtype=torch.float32)


def _outside_params_bytes(config) -> int:
    return sum(p.numel() * 4 for p in _outside_model(config).parameters())


def meta_stream(config, n_img: int, n_txt: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One sample's embedded stream on ``meta``, from the model's own ``tokens_of`` / ``embed``
    (img, txt, vec, pe, FLUX.2's modulations), in the dtype the engine keeps it: ``dtype``
    (under autocast the stream and the constants are in the compute dtype), ``pe`` float32."""
    md = torch.device("meta")
    outside = _outside_model(config)
    p = 4 if config.architecture == "flux" else 2  # a 2x2-token latent: FLUX.1 patch 2, FLUX.2 patch 1
    x = torch.empty(1, config.in_channels // (4 if config.architecture == "flux" else 1), p, p, device=md)
    y = torch.empty(1, config.vec_in_dim, device=md) if config.vec_in_dim else None
    g = torch.empty(1, device=md) if config.guidance_embed else None
    tok = outside.tokens_of(
        x, torch.empty(1, device=md), torch.empty(1, 3, config.context_in_dim, device=md), y, g
    )
    for k, n in (("img", n_img), ("img_ids", n_img), ("txt", n_txt), ("txt_ids", n_txt)):
        t = tok[k]
        tok[k] = torch.empty((t.shape[0], n, *t.shape[2:]), dtype=t.dtype, device=md)
    with torch.no_grad():
        st = outside.embed(**tok)
    return {k: v if k == "pe" else v.to(dtype) for k, v in st.items()}


def _materialise_stream(st: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    if torch.device(device).type == "meta":
        return st
    return {k: (torch.randn(v.shape) * 0.1).to(v.dtype) for k, v in st.items()}


def _nbytes(ts: Iterable[torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in ts)


@dataclass
class StepCount:
    """What one step of a module allocates (bytes)."""

    params: dict[str, int]  # trainable: latent / scale / bias; frozen_float; frozen_packed
    param_numels: list[int]  # trainable tensors' sizes (optimizer state)
    stream: int  # the block's inputs (+ targets or output gradients) of the step
    saved: int  # saved for backward, without dense weights
    dense: int  # dense weights saved (STE forward)
    peak: int  # simulated peak of everything the step allocates
    opt_step: int = 0  # simulated optimizer step temporaries (torch AdamW), else 0

    @property
    def transient(self) -> int:
        return max(0, self.peak - self.saved - self.dense)


def _param_split(module: nn.Module) -> tuple[dict[str, int], list[int]]:
    out = {"trainable": 0, "frozen_float": 0, "frozen_packed": 0}
    numels = []
    for p in module.parameters():
        if p.requires_grad:
            out["trainable"] += p.numel() * p.element_size()
            numels.append(p.numel())
        else:
            out["frozen_float"] += p.numel() * p.element_size()
    for n, b in module.named_buffers():
        if n.endswith("weight_shape"):
            continue
        out["frozen_packed" if b.dtype == torch.uint8 else "frozen_float"] += b.numel() * b.element_size()
    return out, numels


def _stage(kind: str) -> Stage:
    return Stage(f"{kind}_blocks.0", kind)


def count_block_step(
    config,
    kind: str,
    *,
    policy: str,
    group_size: int,
    n_img: int,
    n_txt: int,
    compute_dtype: torch.dtype,
    linear: str = "ste",
    grad: bool = True,
    loss: str = "block",
    optimizer: str | None = None,
    device: str = "meta",
) -> StepCount:
    """Build one ``kind`` ("double" | "single") block of ``config`` on ``device`` (meta: no
    memory) with the engine's layers — ``linear="ste"``: :class:`STETernaryLinear` (trainable
    latent + scale + bias), ``"packed"``: :class:`FrozenCodeLinear` (frozen 2-bit codes, the
    end-to-end forward), ``"float"``: the teacher's ``nn.Linear`` — and count one step of one
    sample on the engine's stream (:func:`meta_stream`, :func:`.teacher_cache.block_args`):
    ``loss="block"``: the block phase (:func:`.distill_streamed.block_loss`, backward, gradients
    pre-allocated: the steady state of accumulation); ``loss="grad"``: the end-to-end recompute
    (stream inputs require grad, backward from given output gradients); ``grad=False``: a
    no-grad forward."""
    dev = torch.device(device)
    stage = _stage(kind)
    with torch.device(dev):
        block = new_block(config, stage, dtype=torch.float32)
    paths = ternary_linear_paths(block, stage.prefix, config.architecture, policy)
    for p in block.parameters():
        p.requires_grad_(False)
    gs = _effective_group_size(group_size)
    if linear == "ste":
        _swap(block, paths, lambda m: _ste_linear(m, gs(m.in_features), dev))
        if dev.type != "meta":
            with torch.no_grad():
                for m in block.modules():
                    if isinstance(m, STETernaryLinear):
                        m.latent.normal_(0, 0.02)
                        m.scale.fill_(0.02)
    elif linear == "packed":
        _swap(block, paths, lambda m: _packed_linear(m, gs(m.in_features), dev))
    elif linear != "float":
        raise ValueError(f"linear {linear!r}: expected 'ste', 'packed' or 'float'")
    if dev.type != "meta" and linear != "ste":
        with torch.no_grad():
            for p in block.parameters():
                p.normal_(0, 0.02)
    params, numels = _param_split(block)
    if not grad:
        for p in block.parameters():
            p.requires_grad_(False)
    st = _materialise_stream(meta_stream(config, n_img, n_txt, compute_dtype), dev)
    stream = join_for(stage, st)
    args = block_args(config, stage, stream)
    n_out = len(stage.fields)
    extra: list[torch.Tensor] = []
    if grad and loss == "grad":
        args = tuple(a.detach().requires_grad_(True) if i < n_out else a for i, a in enumerate(args))
        extra = [torch.empty_like(a) if dev.type == "meta" else torch.randn_like(a) for a in args[:n_out]]
    elif grad:
        target = {
            f: torch.empty_like(a) if dev.type == "meta" else a + 0.01 for f, a in zip(stage.fields, args)
        }
        extra = list(target.values())
    stream_bytes = _nbytes({_storage_key(t): t for t in (*args, *extra)}.values())
    trainable = [p for p in block.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    exclude = [*block.parameters(), *block.buffers(), *args, *extra]
    rec = SavedTensors(exclude)
    dense_shapes = {tuple(m.latent.shape) for m in block.modules() if isinstance(m, STETernaryLinear)}
    mode = LiveBytes(exclude + [p.grad for p in trainable])
    with fused_attention_on_meta(), mode:
        if grad:
            with rec.hooks():
                out = block(*args)
                outs = out if isinstance(out, tuple) else (out,)
                if loss == "block":
                    lo = block_loss(out, args, target, stage)
            del out
            if loss == "block":
                del outs
                lo.backward()
                del lo
            else:
                torch.autograd.backward(outs, extra)
                del outs
        else:
            with torch.no_grad():
                block(*args)
    dense = rec.bytes(lambda shape: shape in dense_shapes)
    saved = rec.bytes() - dense
    opt_step = 0
    if grad and optimizer == "adamw" and trainable:
        opt_step = _adamw_step_peak(trainable, foreach=True)
    return StepCount(params, numels, stream_bytes, saved, dense, mode.peak, opt_step)


def _adamw_step_peak(params: list[torch.Tensor], foreach: bool) -> int:
    """Simulated temporaries of a torch AdamW step (second step: state already allocated)."""
    opt = torch.optim.AdamW(params, betas=(0.9, 0.99), weight_decay=0.0, foreach=foreach)
    opt.step()
    mode = LiveBytes()
    with mode:
        opt.step()
    return mode.peak


def _final_layer_peak(config, n_img: int, n_txt: int, compute_dtype: torch.dtype) -> int:
    """Simulated peak of the end-to-end loss through the final layer (forward + backward to the
    last block's output), one sample, meta."""
    outside = _outside_model(config)
    for p in outside.parameters():
        p.requires_grad_(False)
    st = meta_stream(config, n_img, n_txt, compute_dtype)
    h = config.hidden_size
    last = torch.empty(1, n_img + n_txt, h, device="meta", dtype=compute_dtype).requires_grad_(True)
    target = torch.empty(1, n_img, config.out_channels, device="meta")
    mode = LiveBytes([*outside.parameters(), *outside.buffers(), last, target, *st.values()])
    with mode:
        o = outside.final_layer(last[:, n_txt:], st["vec"])
        lo = (o.float() - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
        del o
        lo.backward()
        del lo
    return mode.peak


# --------------------------------------------------------------------------- the plan


def _block_linear_numels(block: nn.Module, paths: list[str], group_size: int) -> tuple[int, list[int]]:
    """(latent + scale + bias fp32 bytes, trainable numels) of a block's ternary linears."""
    gs = _effective_group_size(group_size)
    total, numels = 0, []
    for p in paths:
        m = block.get_submodule(p)
        n, k = m.out_features, m.in_features
        parts = [n * k, n * num_groups(k, gs(k))] + ([n] if m.bias is not None else [])
        numels += parts
        total += 4 * sum(parts)
    return total, numels


def _packed_bytes(block: nn.Module, paths: list[str]) -> int:
    """2-bit codes of the ternary linears (runtime layout)."""
    return sum(
        block.get_submodule(p).out_features * packed_2bit_cols(block.get_submodule(p).in_features)
        for p in paths
    )


def _model_counts(config, policy: str) -> tuple[int, int]:
    cls = model_class(config)
    with torch.device("meta"):
        model = cls(config, dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    tern = sum(
        model.get_submodule(p).weight.numel()
        for p in ternary_linear_paths(model, "", config.architecture, policy)
    )
    return total, tern


def resolve_preset(name: str) -> tuple[FluxConfig | Flux2Config, int]:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def plan_distill(
    config: FluxConfig | Flux2Config | str,
    *,
    policy: str | None = None,
    group_size: int = 0,
    settings: PlanSettings | None = None,
    name: str | None = None,
) -> DistillPlan:
    """The memory plan of distilling ``config`` (a config or a preset name, see
    :data:`PRESETS`) under ``policy`` (default: the architecture's) and ``settings``."""
    s = settings or PlanSettings()
    default_txt = 512
    if isinstance(config, str):
        name = name or config
        config, default_txt = resolve_preset(config)
    s.check()
    arch = architecture(config.architecture)
    policy = policy or arch.default_policy
    txt = s.txt_len or default_txt
    if s.txt_len is None:
        s = replace(s, txt_len=txt)
    n_img = s.image_tokens
    L = n_img + txt
    h = config.hidden_size
    cd, kd, sd = DTYPES[s.compute_dtype], DTYPES[s.cache_dtype], DTYPES[s.source_dtype]
    cb, kb, sb = (torch.empty((), dtype=d).element_size() for d in (cd, kd, sd))
    on_gpu = s.device == "cuda"
    W = s.world_size
    n_local = s.batch // W  # samples per process and step
    params_total, params_ternary = _model_counts(config, policy)
    cls = model_class(config)
    with torch.device("meta"):
        model_meta = cls(config, dtype=torch.float32)
    paths = ternary_linear_paths(model_meta, "", config.architecture, policy)
    sts = stages(config)
    n_blocks = len(sts)
    depth = {"double": config.depth, "single": config.depth_single_blocks}
    kinds = [k for k in ("double", "single") if depth[k]]
    kw = dict(policy=policy, group_size=group_size, n_img=n_img, n_txt=txt)

    # ---- counts per block kind (meta) ---------------------------------------------------------
    counts = {
        k: count_block_step(config, k, compute_dtype=cd, optimizer=s.optimizer if on_gpu else None, **kw)
        for k in kinds
    }
    recompute = {k: count_block_step(config, k, compute_dtype=cd, loss="grad", **kw) for k in kinds}
    teacher_fwd = {
        k: count_block_step(config, k, compute_dtype=torch.float32, linear="float", grad=False, **kw)
        for k in kinds
    }
    packed_fwd = {
        k: count_block_step(config, k, compute_dtype=cd, linear="packed", grad=False, **kw) for k in kinds
    }
    blk_state = {}  # kind -> (latent+scale+bias bytes, optimizer bytes, largest tensor numel)
    for k in kinds:
        blk = model_meta.get_submodule(f"{k}_blocks.0")
        bp = ternary_linear_paths(blk, f"{k}_blocks.0.", config.architecture, policy)
        tr, numels = _block_linear_numels(blk, bp, group_size)
        blk_state[k] = (
            tr,
            optimizer_state_bytes(numels, s.optimizer),
            max(p.numel() for p in blk.parameters()),
        )
    all_blocks = sum(depth[k] * (blk_state[k][0] + blk_state[k][1]) for k in kinds)

    # ---- teacher cache (quant/teacher_cache.py: build_teacher_cache) ---------------------------
    st1 = meta_stream(config, n_img, txt, kd)
    st32 = meta_stream(config, n_img, txt, torch.float32)
    const_b = _nbytes(v for k, v in st32.items() if k not in STREAM_FIELDS)
    n_bound = n_blocks + 1
    boundary = L * h * kb
    velocity = n_img * config.out_channels * 4
    cache_files = {"const": const_b, "boundaries": n_bound * boundary, "velocity": velocity}
    per_sample = sum(cache_files.values())
    _ = st1
    teacher_block = {
        k: sum(p.numel() * 4 for p in model_meta.get_submodule(f"{k}_blocks.0").parameters()) for k in kinds
    }
    largest = max(blk_state[k][2] for k in kinds)
    N_s = s.num_samples
    phases: dict[str, PhasePlan] = {}

    def cache_phase(k: str) -> PhasePlan:
        dev = {
            "frozen_float": teacher_block[k] + _outside_params_bytes(config),
            "stream": teacher_fwd[k].stream,
            "transient": teacher_fwd[k].peak,
        }
        host = {
            # every sample's stream, input (float32 at the first block) and output (cache dtype)
            "streams": N_s * (L * h * (4 + kb) + const_b),
            "write_buffer": N_s * boundary,  # safetensors serialises a boundary file in memory
            "read_buffer": largest * (sb + (4 if on_gpu else 0)),  # one tensor read, as float32
        }
        return PhasePlan(
            "cache",
            "teacher cache build",
            dev,
            host,
            [
                f"worst block: {k} (fp32 teacher block + embedders/final layer on the device, one sample at a time)",
                f"host: the streams of all {N_s} samples at one boundary (input and output)",
            ],
        )

    cphases = {k: cache_phase(k) for k in kinds}
    phases["cache"] = cphases[max(kinds, key=lambda k: cphases[k].device_bytes)]

    # ---- block phase (quant/distill_streamed.py: _block_phase), worst block -------------------
    def block_phase(kind: str) -> PhasePlan:
        c = counts[kind]
        tr, opt, _ = blk_state[kind]
        act = c.saved + c.dense + c.transient
        dev = {
            "trainable": tr,
            "gradients": tr,
            "optimizer": opt,
            "frozen_float": c.params["frozen_float"],
            "dense": c.dense,
            # the cache is read as float32: the block's inputs (teacher_fwd) + the target
            "stream": teacher_fwd[kind].stream + L * h * 4,
            "activations": c.saved,
            "transient": c.transient,
        }
        notes = []
        if s.shard == "fsdp" and W > 1:
            dev["trainable"] = math.ceil(tr / W)
            dev["gradients"] = math.ceil(tr / W)
            dev["optimizer"] = math.ceil(opt / W)
            dev["unsharded"] = (
                2 * tr
            )  # all-gathered params in forward/backward + full grads before reduce-scatter
            notes.append(
                f"fsdp over {W}: latents/grads/optimizer state sharded, but one block's params are all-gathered "
                "for compute and its full gradient exists before reduce-scatter"
            )
        extra = max(0, c.opt_step - act)
        if extra:
            dev["optimizer_step"] = extra
        host = {"finished_blocks": all_blocks - tr - opt}
        if on_gpu:
            host["staging"] = tr + opt  # the finished block's state copied to the host
            host["read_buffer"] = largest * (sb + 4)
        else:  # the copy is made after the backward: counts only beyond the activations
            host["staging"] = max(0, tr + opt - act)
        notes.append(
            "host: latents + optimizer state of the finished blocks (all but this one at the last block)"
        )
        return PhasePlan("block", f"block phase ({kind} block)", dev, host, notes)

    bphases = {k: block_phase(k) for k in kinds}
    worst = max(kinds, key=lambda k: bphases[k].device_bytes)
    phases["block"] = bphases[worst]

    # ---- end-to-end phase (quant/distill_streamed.py: _e2e_phase), paged -----------------------
    st_cd = meta_stream(config, n_img, txt, cd)
    const_cd = _nbytes(v for k, v in st_cd.items() if k not in STREAM_FIELDS)
    bound_cd = L * h * cb  # one block input / boundary gradient of one sample (double: img + txt)
    packed_all = _packed_bytes(model_meta, paths)
    tern_w = sum(model_meta.get_submodule(p).weight.numel() for p in paths)
    tern_b = sum(
        model_meta.get_submodule(p).bias.numel()
        for p in paths
        if model_meta.get_submodule(p).bias is not None
    )
    gs = _effective_group_size(group_size)
    scales = sum(
        model_meta.get_submodule(p).out_features
        * num_groups(model_meta.get_submodule(p).in_features, gs(model_meta.get_submodule(p).in_features))
        for p in paths
    )
    floats = 4 * (params_total - tern_w) + 4 * scales  # non-ternary weights (fp32), scales, biases
    _ = tern_b
    final_peak = _final_layer_peak(config, n_img, txt, cd)

    def e2e_phase(kind: str) -> PhasePlan:
        # the backward of the last block of this kind: the inputs of every block up to it are kept
        last = config.depth if kind == "double" else n_blocks
        r = recompute[kind]
        tr, opt, _ = blk_state[kind]
        act = r.saved + r.dense + r.transient
        fwd = max(packed_fwd[k].peak for k in kinds)
        dev = {
            "trainable": tr,
            "gradients": tr,
            "optimizer": opt,  # bitsandbytes' load_state_dict deep-copies the host state
            "frozen_packed": packed_all,
            "frozen_float": floats + r.params["frozen_float"],
            "dense": r.dense,
            # every block's input of each local sample (up to this block) + constants, the boundary
            # gradient of each sample and of the one being recomputed
            "stream": n_local * (last * bound_cd + const_cd) + (n_local + 1) * bound_cd,
            "activations": r.saved,
            "transient": max(r.transient, fwd, final_peak),
        }
        host = {"latents_optimizer": all_blocks, "staging": tr + opt if on_gpu else max(0, tr + opt - act)}
        return PhasePlan(
            "e2e",
            "end-to-end phase (paged)",
            dev,
            host,
            [
                f"worst: backward of the last {kind} block; device: packed student + one block's training state",
                "host: latent weights + optimizer state of all blocks (paged to the device one block at a time)",
            ],
        )

    ephases = {k: e2e_phase(k) for k in kinds}
    phases["e2e"] = ephases[max(kinds, key=lambda k: ephases[k].device_bytes)]

    # ---- resident (quant/distill.py) --------------------------------------------------------
    teacher_all = params_total * 4
    all_tr_bytes, all_numels = _block_linear_numels(model_meta, paths, group_size)
    frozen_student = params_total * 4 - 4 * tern_w - 4 * tern_b
    res_saved = sum(depth[k] * (counts[k].saved + counts[k].dense) for k in kinds)
    res_capture = sum(
        depth[k] * counts[k].stream for k in kinds
    )  # BlockCapture: every block's inputs + outputs
    res_transient = max(counts[k].transient for k in kinds)
    res_opt = optimizer_state_bytes(all_numels, s.optimizer)
    base = {
        "trainable": all_tr_bytes,
        "gradients": all_tr_bytes,
        "optimizer": res_opt,
        "frozen_float": teacher_all + frozen_student,
    }
    res_host = {"whole_files": params_total * sb + params_ternary // 4 if on_gpu else 0}
    phases["resident_block"] = PhasePlan(
        "resident_block",
        "resident: block phase (all blocks jointly)",
        {**base, "stream": res_capture, "activations": res_saved, "transient": res_transient},
        dict(res_host),
        ["quant/distill.py: teacher fp32 + student latents whole; every block's activations of one sample"],
    )
    phases["resident_e2e"] = PhasePlan(
        "resident_e2e",
        "resident: end-to-end phase",
        {
            **base,
            "stream": n_local * (n_blocks * bound_cd + const_cd),
            "activations": res_saved,
            "transient": res_transient,
        },
        dict(res_host),
        ["no checkpointing: the student's activations of every block"],
    )
    return DistillPlan(
        model=name or f"{config.architecture} hidden {h}",
        config=config,
        policy=policy,
        group_size=group_size,
        settings=s,
        txt_len=txt,
        params_total=params_total,
        params_ternary=params_ternary,
        phases=phases,
        cache_bytes_per_sample=per_sample,
        cache_files=cache_files,
        worst_block=worst,
    )


# --------------------------------------------------------------------------- formatting


def format_plan(plan: DistillPlan, max_gpu_memory: int | None = None) -> str:
    """The plan as text: one table per phase (device / host bytes per component), the peak per
    strategy against ``max_gpu_memory`` (bytes), and the teacher-cache disk budget."""
    s = plan.settings
    c = plan.config
    lines = [
        f"distill memory plan: {plan.model} ({c.architecture}, hidden {c.hidden_size}, "
        f"{c.depth}+{c.depth_single_blocks} blocks, {plan.params_total / 1e9:.2f}B params, "
        f"{plan.params_ternary / 1e9:.2f}B ternary, policy {plan.policy}, group size {plan.group_size or 'per-channel'})",
        f"settings: {s.resolution}px ({s.image_tokens} image + {plan.txt_len} text tokens), batch {s.batch} "
        f"(one sample at a time), compute {s.compute_dtype}, cache {s.cache_dtype}, optimizer {s.optimizer}, "
        f"world size {s.world_size}, shard {s.shard}",
        "",
    ]
    for ph in plan.phases.values():
        lines.append(f"[{ph.title}]")
        w = max(len(v) for v in COMPONENTS.values())
        lines.append(f"  {'component':<{w}}  {'device':>10}  {'host':>10}")
        for key, label in COMPONENTS.items():
            d, hb = ph.device.get(key, 0), ph.host.get(key, 0)
            if d or hb:
                lines.append(
                    f"  {label:<{w}}  {fmt_bytes(d) if d else '':>10}  {fmt_bytes(hb) if hb else '':>10}"
                )
        lines.append(f"  {'total':<{w}}  {fmt_bytes(ph.device_bytes):>10}  {fmt_bytes(ph.host_bytes):>10}")
        for n in ph.notes:
            lines.append(f"  note: {n}")
        lines.append("")
    for strat in ("streamed", "resident"):
        peak = plan.peak_device_bytes(strat)
        verdict = ""
        if max_gpu_memory:
            ok = peak <= max_gpu_memory
            verdict = f"  {'fits' if ok else 'DOES NOT FIT'} {fmt_bytes(max_gpu_memory)}" + (
                "" if ok else f" (over by {fmt_bytes(peak - max_gpu_memory)})"
            )
        lines.append(f"device peak, {strat}: {fmt_bytes(peak)} ({peak / GiB:.2f} GiB){verdict}")
    f = plan.cache_files
    lines.append(
        f"teacher cache on disk: {fmt_bytes(plan.cache_bytes_per_sample)} per sample "
        f"({fmt_bytes(f['boundaries'])} boundaries, {fmt_bytes(f['const'])} const, {fmt_bytes(f['velocity'])} velocity) "
        f"x {s.num_samples} samples = {fmt_bytes(plan.cache_disk_bytes)}"
    )
    return "\n".join(lines)


def plan_rows(plan: DistillPlan) -> list[dict]:
    """Machine-readable plan: one dict per phase (for JSON reports)."""
    return [
        {
            "phase": p.name,
            "title": p.title,
            "device": dict(p.device),
            "host": dict(p.host),
            "device_bytes": p.device_bytes,
            "host_bytes": p.host_bytes,
        }
        for p in plan.phases.values()
    ]


__all__ = [
    "PRESETS",
    "DistillPlan",
    "PhasePlan",
    "PlanSettings",
    "count_block_step",
    "format_plan",
    "parse_memory",
    "plan_distill",
    "saved_tensor_bytes",
]
