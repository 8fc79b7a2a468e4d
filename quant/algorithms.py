"""Ternarization algorithms for any ``torch.nn.Module``'s ``nn.Linear`` layers.

Entry point, in the spirit of torchao's ``quantize_``::

    from ternaryflux.quant.algorithms import TernaryConfig, quantize_
    quantize_(model, TernaryConfig(method="calibrated", group_size=0),
              calibration=[(x1,), (x2,), ...],            # positional args (or dicts of kwargs)
              filter_fn=lambda module, name: "blocks" in name,
              blocks=["blocks.0", "blocks.1"])           # optional: calibrate block by block

Every selected Linear becomes a :class:`~ternaryflux.core.ternary_linear.TernaryLinear`, i.e. the
result is always representable in the checkpoint format: ternary codes, one scale per output
channel (or per group of ``group_size`` inputs), and the layer's float bias.

Methods
-------
``absmean``   BitNet b1.58, data-free (baseline).
``twn``       TWN thresholds (delta = 0.7 mean|W|), data-free.
``calibrated`` *Block-wise greedy selection judged by the block's output error.* A block (a
    FLUX double/single block, or the whole model) is run on its float inputs; for each of its
    Linears, in execution order, the layer's input statistics (E[x], E[x x^T]) are collected with
    the layers before it already ternary, then every candidate below is tried (with and without
    bias correction) and the one giving the smallest error of the *block output* against the
    float block output is kept. The per-layer error is never the criterion: weight- or
    layer-error-optimal choices (GPTQ, least-squares scales) are only kept when they also help
    the block, which guards against "layer error down, model error up".

    Candidates (all per output row, or per group):
      absmean, twn                   data-free
      twn_grid                       threshold factor searched on a grid, L2-optimal scale
      aw_sqrt, aw                    the same search weighted by E[x_k^2]^0.5 / E[x_k^2] per input
                                     channel (activation-aware: outlier channels count more; the
                                     0.5 power tempers channels 100x larger than the rest)
      gptq                           GPTQ error feedback (damped inverse Hessian E[x x^T]) with the
                                     aw scales, then least-squares scales
    Default candidates: twn, aw_sqrt, gptq (the others via ``TernaryConfig.candidates``); gptq is
    skipped for layers whose calibration gives fewer input rows than input channels (adaLN
    modulation: one token per image), where E[x x^T] is rank-deficient and GPTQ over-fits.
    Bias correction: ``b += (W - W_q) E[x]`` removes the mean output shift (exactly
    representable: the bias stays float).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.ternarize import absmean, grouped, ternarize, twn
from ..core.ternary_linear import TernaryLinear, set_submodule
from ..core.ternary_weight import TernaryWeight, check_group_size
from .capture import BlockCapture, flatten_outputs, move

log = logging.getLogger(__name__)

METHODS = ("absmean", "twn", "calibrated")
ALL_CANDIDATES = ("absmean", "twn", "twn_grid", "aw_sqrt", "aw", "gptq")
DEFAULT_CANDIDATES = ("twn", "aw_sqrt", "gptq")
BLOCK_INPUTS = ("float", "sequential")
EPS = 1e-12


@dataclass
class TernaryConfig:
    """What :func:`quantize_` does. Defaults are the recommended ``calibrated`` recipe."""

    method: str = "calibrated"
    group_size: int = 0
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    bias_correction: str = "auto"  # "auto" (let the block error decide) | "on" | "off"
    gptq_damp: float = 0.1
    act_order: bool = True
    gptq_min_tokens: float = 1.0  # gptq only when calibration gives >= this many input rows per input channel
    grid: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)
    # "float": each block calibrated on the float model's block inputs | "sequential": on the inputs
    # that the already-ternary earlier blocks produce (GPTQ's convention); target: the float output
    block_inputs: str = "float"
    max_gram_k: int = 16384  # larger inputs use the diagonal only (no gptq candidate)
    device: str | None = None

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {METHODS}")
        bad = [c for c in self.candidates if c not in ALL_CANDIDATES]
        if bad:
            raise ValueError(f"unknown candidates {bad}: use any of {ALL_CANDIDATES}")
        if self.block_inputs not in BLOCK_INPUTS:
            raise ValueError(f"block_inputs must be one of {BLOCK_INPUTS}, got {self.block_inputs!r}")
        if self.bias_correction not in ("auto", "on", "off"):
            raise ValueError("bias_correction must be 'auto', 'on' or 'off'")

    def params(self) -> dict[str, Any]:
        d = {"group_size": self.group_size}
        if self.method == "calibrated":
            d.update(
                candidates=list(self.candidates),
                bias_correction=self.bias_correction,
                gptq_damp=self.gptq_damp,
                act_order=self.act_order,
                gptq_min_tokens=self.gptq_min_tokens,
                block_inputs=self.block_inputs,
                grid=list(self.grid),
                selection="block output error, greedy per layer in execution order",
            )
        return d


# ----------------------------------------------------------------------------- statistics


class LayerStats:
    """Running E[x], E[x^2] and (when K is small enough) E[x x^T] of a Linear's input."""

    def __init__(self, k: int, device, with_gram: bool):
        self.n = 0
        self.sum = torch.zeros(k, dtype=torch.float64, device=device)
        self.sq = torch.zeros(k, dtype=torch.float64, device=device)
        self.gram = torch.zeros(k, k, dtype=torch.float32, device=device) if with_gram else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.n += x.shape[0]
        self.sum += x.sum(0, dtype=torch.float64)
        self.sq += x.pow(2).sum(0, dtype=torch.float64)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / max(self.n, 1)).float()

    @property
    def diag(self) -> torch.Tensor:
        return (self.sq / max(self.n, 1)).float()

    @property
    def hessian(self) -> torch.Tensor | None:
        return None if self.gram is None else self.gram / max(self.n, 1)


# ----------------------------------------------------------------------------- per-layer candidates


def weighted_threshold(
    w: torch.Tensor, importance: torch.Tensor | None, group_size: int, grid: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row/group: ``T = sign(W)[|W| > f mean|W|]`` with ``f`` from ``grid`` and the scale
    ``alpha = sum(d |W| T) / sum(d T^2)`` minimising ``sum_k d_k (W_k - alpha T_k)^2``, where
    ``d`` is the per-input-channel importance (ones = plain L2)."""
    g = grouped(w.float(), group_size)
    a = g.abs()
    d = torch.ones_like(a) if importance is None else grouped(importance.float().expand_as(w), group_size)
    m = a.mean(-1, keepdim=True)
    best_err = torch.full(a.shape[:-1], math.inf, device=w.device)
    best_f = torch.zeros(a.shape[:-1], device=w.device)
    best_alpha = torch.zeros(a.shape[:-1], device=w.device)
    total = (d * a * a).sum(-1)
    for f in grid:
        mask = (a > f * m).float()
        dm = d * mask
        num = (dm * a).sum(-1)
        den = dm.sum(-1)
        alpha = num / den.clamp_min(EPS)
        # sum d (a - alpha mask)^2 = sum d a^2 - 2 alpha num + alpha^2 den = total - num^2/den
        err = total - alpha * num
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_f = torch.where(better, torch.full_like(best_f, f), best_f)
        best_alpha = torch.where(better, alpha, best_alpha)
    mask = a > best_f.unsqueeze(-1) * m
    t = torch.sign(g) * mask
    alpha = torch.where(best_alpha > 0, best_alpha, m.squeeze(-1))
    codes = (t + 1).to(torch.uint8).reshape(w.shape)
    return codes, alpha.reshape(w.shape[0], -1).contiguous()


def _expand(scale: torch.Tensor, k: int) -> torch.Tensor:
    return scale if scale.shape[1] == 1 else scale.repeat_interleave(k // scale.shape[1], dim=1)


def ls_scales(w: torch.Tensor, codes: torch.Tensor, h: torch.Tensor, group_size: int) -> torch.Tensor:
    """Least-squares scales for fixed codes under the input second moment ``h``: per row
    ``alpha = (t^T H w) / (t^T H t)`` (per-channel); diagonal-weighted per group."""
    t = codes.float() - 1
    if group_size == 0:
        th = t @ h
        num = (th * w).sum(1)
        den = (th * t).sum(1)
        return (num / den.clamp_min(EPS)).clamp_min(0).unsqueeze(1)
    d = torch.diagonal(h).expand_as(w)
    num = grouped(d * w * t, group_size).sum(-1)
    den = grouped(d * t * t, group_size).sum(-1)
    return (num / den.clamp_min(EPS)).clamp_min(0)


def gptq_ternary(
    w: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
) -> torch.Tensor:
    """GPTQ (Frantar et al. 2022) with a ternary grid ``{-a, 0, a}`` per row/group: columns are
    rounded in order and each rounding error is pushed onto the not-yet-rounded columns through
    the Cholesky factor of the damped inverse of ``h = E[x x^T]``. With ``act_order`` the columns
    with the largest E[x_k^2] (outlier channels) go first, while the most freedom is left to
    compensate them. Returns uint8 codes."""
    w = w.float().clone()
    n, k = w.shape
    h = h.float().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    alpha = _expand(scale.float(), k).expand(n, k).clamp_min(EPS)
    perm = (
        torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(k, device=w.device)
    )
    w, h, alpha = w[:, perm], h[perm][:, perm], alpha[:, perm]
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch._C._LinAlgError:
        h.diagonal().add_(torch.diagonal(h).mean())
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    t = torch.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            a = alpha[:, i1 + i]
            ti = torch.clamp(torch.round(col / a), -1, 1)
            t[:, i1 + i] = ti
            e = (col - ti * a) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    out = torch.empty_like(t)
    out[:, perm] = t
    return (out + 1).to(torch.uint8)


def candidate(
    name: str, w: torch.Tensor, stats: LayerStats | None, cfg: TernaryConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)`` of one candidate for weight ``w`` ``[N, K]``."""
    gs = cfg.group_size
    if name == "absmean":
        return absmean(w, "group" if gs else "channel", gs)
    if name == "twn":
        return twn(w, gs)
    if name == "twn_grid":
        return weighted_threshold(w, None, gs, cfg.grid)
    if stats is None:
        raise ValueError(f"candidate {name!r} needs calibration statistics")
    d = stats.diag.clamp_min(EPS)
    d = d / d.mean()
    if name == "aw_sqrt":
        return weighted_threshold(w, d.sqrt(), gs, cfg.grid)
    if name == "aw":
        return weighted_threshold(w, d, gs, cfg.grid)
    if name == "gptq":
        h = stats.hessian
        if h is None:
            raise ValueError("gptq needs the full input second moment (K too large)")
        _, s0 = weighted_threshold(w, d.sqrt(), gs, cfg.grid)
        codes = gptq_ternary(w, h, s0, cfg.gptq_damp, act_order=cfg.act_order)
        hd = h.clone()
        hd.diagonal().add_(cfg.gptq_damp * torch.diagonal(h).mean())
        return codes, ls_scales(w.float(), codes, hd, gs)
    raise ValueError(f"unknown candidate {name!r}")


def dequant(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (codes.float() - 1) * _expand(scale.float(), codes.shape[1])


# ----------------------------------------------------------------------------- block calibration


def output_error(outs: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> float:
    """Relative squared error ``sum ||o - t||^2 / sum ||t||^2`` over all outputs."""
    num = sum(float((o.float() - t.float()).pow(2).sum()) for o, t in zip(outs, target))
    den = sum(float(t.float().pow(2).sum()) for t in target)
    return num / max(den, EPS)


@dataclass
class LayerResult:
    name: str
    weight: TernaryWeight
    bias: torch.Tensor | None
    choice: str
    bias_corrected: bool
    weight_rel_err: float
    block_err: float
    candidate_errs: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "layer": self.name,
            "choice": self.choice,
            "bias_corrected": self.bias_corrected,
            "weight_rel_err": self.weight_rel_err,
            "block_out_rel_err": self.block_err,
            "candidates": self.candidate_errs,
        }


def execution_order(block: nn.Module, run: Callable[[nn.Module], Any], names: Sequence[str]) -> list[str]:
    """``names`` sorted by first call during ``run(block)``."""
    order: list[str] = []
    hooks = []
    for n in names:
        hooks.append(
            block.get_submodule(n).register_forward_pre_hook(
                lambda m, a, n=n: order.append(n) if n not in order else None
            )
        )
    try:
        with torch.no_grad():
            run(block)
    finally:
        for h in hooks:
            h.remove()
    return order + [n for n in names if n not in order]


@torch.no_grad()
def calibrate_block(
    block: nn.Module,
    run: Callable[[nn.Module], list[torch.Tensor]],
    target: Sequence[torch.Tensor],
    names: Sequence[str],
    cfg: TernaryConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, LayerResult]:
    """Ternarize the Linears ``names`` of ``block`` (in place: their weights/biases become the
    dequantized ternary values) by greedy block-output-error selection; see module docstring.

    ``run(block)`` must run the block on the calibration inputs and return its outputs as a flat
    list of tensors; ``target`` is the float block's output for the same inputs.
    """
    cfg.validate()
    results: dict[str, LayerResult] = {}
    for name in execution_order(block, run, names):
        lin = block.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"{name} is not an nn.Linear")
        w = lin.weight.detach().float().clone()
        b0 = lin.bias.detach().float().clone() if lin.bias is not None else None
        check_group_size(w.shape[1], cfg.group_size)
        stats = LayerStats(w.shape[1], w.device, with_gram=w.shape[1] <= cfg.max_gram_k)
        hook = lin.register_forward_pre_hook(lambda m, a, stats=stats: stats.add(a[0]))
        try:
            run(block)
        finally:
            hook.remove()
        best: tuple[float, str, bool, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        errs: dict[str, float] = {}
        mu = stats.mean
        for cname in cfg.candidates:
            if cname == "gptq" and (stats.gram is None or stats.n < cfg.gptq_min_tokens * w.shape[1]):
                # too few input rows for E[x x^T] (e.g. adaLN modulation: one token per image):
                # GPTQ would fit the calibration inputs, not the layer
                continue
            codes, scale = candidate(cname, w, stats, cfg)
            wq = dequant(codes, scale)
            bc_options = {"auto": (False, True), "on": (True,), "off": (False,)}[cfg.bias_correction]
            if b0 is None:
                bc_options = (False,)
            for bc in bc_options:
                bias = b0 + (w - wq) @ mu if bc else b0
                lin.weight.data.copy_(wq.to(lin.weight.dtype))
                if bias is not None:
                    lin.bias.data.copy_(bias.to(lin.bias.dtype))
                err = output_error(run(block), target)
                errs[cname + ("+bc" if bc else "")] = err
                if best is None or err < best[0]:
                    best = (err, cname, bc, codes, scale, bias)
        assert best is not None
        err, cname, bc, codes, scale, bias = best
        wq = dequant(codes, scale)
        lin.weight.data.copy_(wq.to(lin.weight.dtype))
        if bias is not None:
            lin.bias.data.copy_(bias.to(lin.bias.dtype))
        tw = TernaryWeight.from_codes(codes.cpu(), scale.cpu(), cfg.group_size)
        results[name] = LayerResult(
            name,
            tw,
            None if bias is None else bias.cpu(),
            cname,
            bc,
            float((w - wq).norm() / w.norm().clamp_min(EPS)),
            err,
            errs,
        )
        log.debug("%s: %s%s block err %.4g", name, cname, "+bc" if bc else "", err)
        if progress is not None:
            progress(name)
    return results


# ----------------------------------------------------------------------------- generic front end


def _call(model: nn.Module, inp: Any) -> Any:
    if isinstance(inp, dict):
        return model(**inp)
    if isinstance(inp, (list, tuple)):
        return model(*inp)
    return model(inp)


def _swap(model: nn.Module, name: str, tw: TernaryWeight, bias: torch.Tensor | None, like: nn.Linear) -> None:
    dev = like.weight.device
    b = None if bias is None else bias.to(device=dev, dtype=like.bias.dtype)
    set_submodule(model, name, TernaryLinear.from_weight(tw.to(dev), b))


@torch.no_grad()
def quantize_(
    model: nn.Module,
    config: TernaryConfig | None = None,
    calibration: Iterable[Any] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    blocks: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    targets: Sequence[torch.Tensor] | None = None,
    replace: bool = True,
) -> dict[str, LayerResult | TernaryWeight]:
    """Replace ``model``'s selected ``nn.Linear`` layers by ternary ones, in place.

    The one entry point of every ternarization in the project: the streaming FLUX driver
    (:mod:`.flux`) calls it block by block, the demo and tests on whole models.

    Args:
        config: method and options (:class:`TernaryConfig`).
        calibration: inputs to ``model`` (each a tuple of positional args, a dict of kwargs, or a
            tensor); required by ``method="calibrated"``.
        filter_fn: ``(module, fully_qualified_name) -> bool``; default: every Linear.
        blocks: module paths calibrated one after another, each on the float model's inputs to
            it and judged by its own output error. Default: the whole model is one block (its
            output error decides), fine for small models.
        targets: without ``blocks``: the outputs to match (flattened, in input order) instead of
            the model's own outputs on ``calibration`` (the FLUX driver's sequential mode feeds
            the ternary stream's inputs but matches the float model's block outputs).
        replace: ``False`` keeps the ``nn.Linear`` modules, holding the dequantized ternary
            weights (and corrected biases), instead of swapping in :class:`TernaryLinear`.
    Returns: layer name -> :class:`LayerResult` (calibrated) or :class:`TernaryWeight`.
    """
    cfg = config or TernaryConfig()
    cfg.validate()
    if blocks and targets is not None:
        raise ValueError("targets apply to a single block: pass either blocks or targets")
    sel = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, n))
    ]
    if cfg.method != "calibrated":
        out: dict[str, Any] = {}
        for n in sel:
            lin = model.get_submodule(n)
            w = lin.weight if cfg.device is None else lin.weight.to(cfg.device)
            tw = ternarize(w, cfg.method, cfg.group_size)
            if replace:
                _swap(model, n, tw, lin.bias, lin)
            else:
                lin.weight.data.copy_(tw.dequantize().to(lin.weight))
            out[n] = tw
            if progress:
                progress(n)
        return out
    if calibration is None:
        raise ValueError("method='calibrated' needs calibration inputs")
    inputs = list(calibration)
    if not inputs:
        raise ValueError("calibration is empty")
    dev = cfg.device or next(model.parameters()).device
    home = next(model.parameters()).device
    model.to(dev)
    inputs = [move(i, dev) for i in inputs]
    results: dict[str, LayerResult] = {}
    if not blocks:
        if targets is None:
            target = [t.clone() for i in inputs for t in flatten_outputs(_call(model, i))]
        else:
            target = [t.to(dev) for t in targets]
        results = calibrate_block(
            model,
            lambda m: [t for i in inputs for t in flatten_outputs(_call(m, i))],
            target,
            sel,
            cfg,
            progress,
        )
    else:
        # every block's float inputs and outputs, in one float pass
        with BlockCapture(model, blocks, device=dev, clone_outputs=True) as floats:
            for i in inputs:
                _call(model, i)
        for b in blocks:
            mod = model.get_submodule(b)
            names = [n for n in sel if n.startswith(b + ".")]
            if not names:
                continue
            cap = floats.inputs[b]
            if cfg.block_inputs == "sequential":
                # inputs from the model whose earlier blocks are already ternary (in place)
                with BlockCapture(model, [b], outputs=False, device=dev) as tern:
                    for i in inputs:
                        _call(model, i)
                cap = tern.inputs[b]

            def run(m, cap=cap):
                return [t for a, k in cap for t in flatten_outputs(m(*a, **k))]

            target = [t for outs in floats.outputs[b] for t in outs]
            res = calibrate_block(mod, run, target, [n[len(b) + 1 :] for n in names], cfg, progress)
            results.update({f"{b}.{n}": r for n, r in res.items()})
        rest = [n for n in sel if n not in results]
        if rest:
            raise ValueError(f"layers outside every block: {rest[:3]}; add their blocks or filter them out")
    for n, r in results.items() if replace else ():
        _swap(model, n, r.weight, r.bias, model.get_submodule(n))
    model.to(home)
    return results
