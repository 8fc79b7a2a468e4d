#!/usr/bin/env python3
"""End-to-end FLUX benchmark (FLUX.1-dev, or FLUX.2 [klein] 4B): bf16 vs ternary, side by side, on one GPU.

Builds the full FLUX.1-dev transformer (hidden 3072, 19 double + 38 single blocks) directly on
the GPU with seeded random weights, twice: a dense bf16 model and a ternary model made straight
from random packed codes and scales (no dense weight is ever allocated for it; see
``bench/flux_builders.py``). No download, no 24 GB of host RAM. Then, for 512² and 1024²
images (64² / 128² latents = 1024 / 4096 image tokens, + 512 text tokens), batch 1 and 2:

* weight bytes resident on the GPU, and the checkpoint file size (2-bit and base3 at rest),
  computed exactly from the shapes;
* peak VRAM of one denoising step (``torch.cuda.max_memory_allocated`` / ``_reserved``, reset
  between configurations, only one model resident at a time);
* median step latency (CUDA events, after warm-up);

for bf16 and for the ternary model with every available kernel backend at A16 and A8, plus the
PyTorch reference path for contrast (slow; ``--skip-torch-ref``). One step = one
``forward_latent`` + the Euler update, eager mode (no CUDA graphs, no torch.compile).

Goals (H100, figures not asserts; printed in the "goal" column):
  * peak VRAM of a 1024² step >= 6x lower than bf16;
  * step latency <= 0.85x bf16 with A8, <= 1.1x bf16 with A16;
  * checkpoint <= 3.1 GB at 2 bits, <= 2.55 GB at rest (base3).

``--model flux2-klein-4b`` does the same for FLUX.2 [klein] 4B (hidden 3072, 5 double + 20
single blocks, SwiGLU, global modulation): the ternary model holds the ``blocks`` policy (block
Linears ternary, the three global modulation Linears, embedders and final layer bf16: Bonsai
Image's layout) with one scale per 128 input weights (group size 128), again made straight from
random packed codes. Default shape: 1024² batch 1 (the 128-channel latent at 1/16 resolution =
4096 image tokens, patch 1; 512 text tokens of width ``context_in_dim`` 7680). Bonsai Image 4B's
published figures (H100: 1.45 s for 4 steps at 1024², i.e. at most ~0.36 s a step for the
transformer; 6.4 GiB peak; 1.21 GB file) are printed and recorded beside ours, labelled
"published, whole pipeline, not measured here". No goals apply to FLUX.2 except the issue's file
size (<= 1.15 GB, which ``blocks`` g128 does not meet: see ``bench/flux2_sizes.py``).

Usage::

    python bench/flux_e2e.py                       # GPU: bench/results/flux_e2e-<gpu>.json
    python bench/flux_e2e.py --smoke --out x.json  # CPU, tiny model, a few seconds
    python bench/flux_e2e.py --sizes-only          # exact FLUX.1-dev file sizes, no GPU
    python bench/flux_e2e.py --model flux2-klein-4b               # GPU: flux_e2e-flux2-klein-4b-<gpu>.json
    python bench/flux_e2e.py --model flux2-klein-4b --sizes-only  # exact klein 4B g128 file sizes
    python bench/flux_e2e.py --model flux2-klein-4b --smoke --out x.json  # CPU, tiny FLUX.2

``python bench/report.py bench/results/flux_e2e-*.json`` draws the charts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# flux_builders (bench/) makes `ternaryflux` importable from a bare checkout: import it first
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from flux2_sizes import BONSAI_4B_PUBLISHED_GB, GOAL_KLEIN_4B_GB  # noqa: E402
from flux_builders import (  # noqa: E402
    REPO_ROOT,
    checkpoint_file_size,
    config_dict,
    dense_file_size,
    model_bytes,
    param_counts,
    random_bf16_flux,
    random_ternary_flux,
    resident_weight_bytes,
)
from ternaryflux.core.fixtures import tiny_flux2_config, tiny_flux_config  # noqa: E402
from ternaryflux.core.flux_layout import FLUX2_VARIANTS, POLICY_BLOCKS, Flux2Config, FluxConfig  # noqa: E402
from ternaryflux.core.ternary_linear import TernaryLinear, set_backend  # noqa: E402
from ternaryflux.kernels import available_backends, disabled_routes, dispatch, resolve_backend  # noqa: E402
from ternaryflux.quantize_tool.report import format_table  # noqa: E402
from ternaryflux.version import __version__  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

SCHEMA = "ternaryflux.bench.flux_e2e/1"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
GB = 1e9
GIB = 2**30

GOALS = {
    "peak_vram_1024_x_lower": 6.0,  # bf16 peak / ternary peak, 1024² step
    "latency_a8_vs_bf16": 0.85,
    "latency_a16_vs_bf16": 1.10,
    "file_2bit_bytes": 3.1e9,
    "file_base3_bytes": 2.55e9,
}


# Bonsai Image 4B (PrismML's model card / whitepaper, May 2026): FLUX.2 [klein] 4B, block Linears
# ternary with one fp16 scale per 128 inputs. Figures of the *whole pipeline* (text encoder
# offloaded, VAE included), as published; never measured here.
BONSAI_PUBLISHED: dict[str, Any] = {
    "what": "Bonsai Image 4B (PrismML), published, whole pipeline, not measured here",
    "source": "PrismML Bonsai Image 4B model card / whitepaper (May 2026); docs/BENCHMARKS.md",
    "gpu": "H100",
    "image_px": 1024,
    "steps": 4,
    "pipeline_s": 1.45,
    "step_s_upper_bound": 1.45 / 4,  # the transformer's share of one step is at most this
    "peak_vram_gib": 6.4,
    "peak_vram_note": "whole pipeline, text encoder offloaded",
    "file_gb": BONSAI_4B_PUBLISHED_GB,
}
PUBLISHED_LABEL = "published, whole pipeline, not measured here"


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model``: the full-size config, its tiny ``--smoke`` stand-in and the ternary layout."""

    key: str
    title: str  # JSON "model_name" of the full-size run
    config: FluxConfig | Flux2Config
    smoke_config: FluxConfig | Flux2Config
    group_size: int  # ternary scales: 0 = one per output channel
    policy: str | None  # ternary layers (None: the architecture's default)
    latent_down: int  # image px per latent px (FLUX.1: 8, 16-channel latent; FLUX.2: 16, 128 channels)
    resolutions: tuple[int, ...]
    batches: tuple[int, ...]
    sizes_group_sizes: tuple[int, ...]  # group sizes of the --sizes-only file table
    sizes_out: str  # --sizes-only JSON name
    out_prefix: str  # GPU JSON: bench/results/<out_prefix><gpu>.json
    published: dict[str, Any] | None = None

    @property
    def patch(self) -> int:
        return self.config.patch_size

    @property
    def file_keys(self) -> tuple[str, str]:
        """``file_sizes`` keys of the run's own layout (2-bit, base3)."""
        g = self.group_size
        return ("2bit", "base3") if g == 0 else (f"2bit-g{g}", f"base3-g{g}")


MODELS: dict[str, ModelSpec] = {
    "flux1-dev": ModelSpec(
        key="flux1-dev",
        title="FLUX.1-dev",
        config=FluxConfig(),
        smoke_config=tiny_flux_config(hidden=256, depth=1, depth_single=1),
        group_size=0,
        policy=None,
        latent_down=8,
        resolutions=(512, 1024),
        batches=(1, 2),
        sizes_group_sizes=(0, 256),
        sizes_out="flux_e2e-sizes.json",
        out_prefix="flux_e2e-",
    ),
    "flux2-klein-4b": ModelSpec(
        key="flux2-klein-4b",
        title="FLUX.2 [klein] 4B",
        config=FLUX2_VARIANTS["klein-4b"],
        smoke_config=tiny_flux2_config(hidden=256, depth=1, depth_single=1, context_in_dim=256),
        group_size=128,
        policy=POLICY_BLOCKS,
        latent_down=16,
        resolutions=(1024,),
        batches=(1,),
        sizes_group_sizes=(128,),
        sizes_out="flux_e2e-flux2-klein-4b-sizes.json",
        out_prefix="flux_e2e-flux2-klein-4b-",
        published=BONSAI_PUBLISHED,
    ),
}


# ----------------------------------------------------------------------------- settings


@dataclass
class Shape:
    image_px: int
    latent_hw: int
    batch: int
    txt_tokens: int
    patch: int = 2

    @property
    def img_tokens(self) -> int:
        return (self.latent_hw // self.patch) ** 2

    @property
    def label(self) -> str:
        return f"{self.image_px}² b{self.batch}"


@dataclass
class Settings:
    mode: str  # "gpu" or "smoke"
    device: torch.device
    config: FluxConfig
    shapes: list[Shape]
    warmup: int
    runs: int
    ref_warmup: int
    ref_runs: int
    seed: int = 0
    budget_s: float = 0.0
    skip_torch_ref: bool = False
    backends: list[str] | None = None
    acts: tuple[str, ...] = ("a16", "a8")
    spec: ModelSpec = MODELS["flux1-dev"]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _shapes(spec: ModelSpec, resolutions, batches, txt: int) -> list[Shape]:
    return [Shape(px, px // spec.latent_down, b, txt, spec.patch) for px in resolutions for b in batches]


def gpu_settings(args: argparse.Namespace) -> Settings:
    spec = MODELS[args.model]
    txt = args.txt_tokens or 512
    shapes = _shapes(spec, args.resolutions or spec.resolutions, args.batches or spec.batches, txt)
    return Settings(
        mode="gpu",
        device=torch.device(args.device or "cuda"),
        config=spec.config,
        shapes=shapes,
        warmup=args.warmup if args.warmup is not None else 3,
        runs=args.runs if args.runs is not None else 5,
        ref_warmup=1,
        ref_runs=2,
        seed=args.seed,
        budget_s=args.budget_s,
        skip_torch_ref=args.skip_torch_ref,
        backends=args.backends,
        spec=spec,
    )


def smoke_settings(args: argparse.Namespace) -> Settings:
    spec = MODELS[args.model]
    txt = args.txt_tokens or 16
    # 64 and 128 px "images" (FLUX.1: 8² / 16² latents, FLUX.2: 4² / 8²): tiny stand-ins for 512² and 1024²
    shapes = _shapes(spec, (64, 128), args.batches or (1, 2), txt)
    return Settings(
        mode="smoke",
        device=torch.device(args.device or "cpu"),
        config=spec.smoke_config,
        shapes=shapes,
        warmup=args.warmup if args.warmup is not None else 1,
        runs=args.runs if args.runs is not None else 2,
        ref_warmup=1,
        ref_runs=2,
        seed=args.seed,
        budget_s=args.budget_s,
        skip_torch_ref=args.skip_torch_ref,
        backends=args.backends,
        spec=spec,
    )


# ----------------------------------------------------------------------------- measuring


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensors created inside the mode and still alive (CPU memory stand-in for
    the CUDA allocator's peak). Views share their base's storage and are counted once."""

    def __init__(self, exclude: list[torch.Tensor]):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: set[int] = {t.untyped_storage().data_ptr() for t in exclude}

    def _free(self, key: int, n: int) -> None:
        self._storages.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in self._storages:
                continue
            n = st.nbytes()
            self._storages.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key, n)
        return out


def make_inputs(s: Settings, shape: Shape, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    g = torch.Generator(device=s.device).manual_seed(s.seed + 1)
    c = s.config
    b, hw = shape.batch, shape.latent_hw
    # FLUX.1: 16 latent channels, patchified 2x2 in the model; FLUX.2: 128 channels, patch 1, no pooled vector
    return {
        "x": torch.randn(b, c.latent_channels, hw, hw, device=s.device, generator=g).to(dtype),
        "timestep": torch.full((b,), 0.7, device=s.device),
        "context": torch.randn(b, shape.txt_tokens, c.context_in_dim, device=s.device, generator=g).to(dtype),
        "y": None
        if c.vec_in_dim is None
        else torch.randn(b, c.vec_in_dim, device=s.device, generator=g).to(dtype),
        "guidance": torch.full((b,), 3.5, device=s.device) if c.guidance_embed else None,
    }


def denoise_step(model: torch.nn.Module, inp: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """One Euler step of the flow-matching sampler: x + (sigma_next - sigma) * v."""
    x = inp["x"]
    v = model.forward_latent(x, inp["timestep"], inp["context"], inp["y"], inp["guidance"])
    return x + (-0.05) * v


def _sync(s: Settings) -> None:
    if s.cuda:
        torch.cuda.synchronize(s.device)


def measure(s: Settings, model: torch.nn.Module, shape: Shape, warmup: int, runs: int) -> dict[str, Any]:
    """Warm up, then one step for peak memory, then ``runs`` timed steps."""
    inp = make_inputs(s, shape, model.dtype)
    with torch.inference_mode():
        out = None
        for _ in range(warmup):
            out = denoise_step(model, inp)
        _sync(s)
        finite = bool(torch.isfinite(out).all()) if out is not None else None
        del out
        gc.collect()
        weights = model_bytes(model)
        if s.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(s.device)
            base = torch.cuda.memory_allocated(s.device)
            out = denoise_step(model, inp)
            _sync(s)
            peak_alloc = torch.cuda.max_memory_allocated(s.device)
            peak_reserved = torch.cuda.max_memory_reserved(s.device)
            mem = {
                "peak_allocated_bytes": peak_alloc,
                "peak_reserved_bytes": peak_reserved,
                "resident_before_bytes": base,
            }
        else:
            held = (
                list(model.parameters()) + list(model.buffers()) + [t for t in inp.values() if t is not None]
            )
            with LiveTensorBytes(held) as counter:
                out = denoise_step(model, inp)
            inputs = sum(t.numel() * t.element_size() for t in inp.values() if t is not None)
            peak = weights + inputs + counter.peak
            mem = {
                "peak_allocated_bytes": peak,
                "peak_reserved_bytes": peak,
                "resident_before_bytes": weights + inputs,
            }
        finite = bool(torch.isfinite(out).all()) and finite is not False
        del out
        times_ms: list[float] = []
        for _ in range(runs):
            if s.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = denoise_step(model, inp)
                end.record()
                end.synchronize()
                times_ms.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = denoise_step(model, inp)
                times_ms.append((time.perf_counter() - t0) * 1e3)
            del out
    return {
        "latency_ms_median": statistics.median(times_ms),
        "latency_ms_all": times_ms,
        "weight_bytes": weights,
        **mem,
        "activation_peak_bytes": mem["peak_allocated_bytes"] - mem["resident_before_bytes"],
        "output_finite": finite,
    }


# ----------------------------------------------------------------------------- configs


@dataclass
class RunConfig:
    model: str  # "bf16" | "ternary"
    backend: str | None
    act: str | None
    reference: bool = False

    @property
    def label(self) -> str:
        if self.model == "bf16":
            return "bf16"
        ref = " (reference)" if self.reference else ""
        return f"ternary {self.backend} {self.act.upper()}{ref}"


def backends_on_device(s: Settings) -> list[str]:
    """Non-reference backends to time on this device, asked with a tiny layer.

    By default: those ``backend="auto"`` may pick here (their ``supports`` predicate), so the
    Triton interpreter (``TRITON_INTERPRET=1``, CPU) is never timed by accident. Backends named
    with ``--backends`` are taken when they can run the call at all (forced, as dispatch would).
    """
    probe = TernaryLinear(256, 256, group_size=s.spec.group_size, device=s.device, bias_dtype=torch.bfloat16)
    x = torch.zeros(4, 256, device=s.device, dtype=torch.bfloat16)
    registry = getattr(dispatch, "_BACKENDS", {})
    out = []
    if s.backends is None:
        for name in available_backends():
            b = registry.get(name)
            if name != "torch" and b is not None and all(b.supports(x, probe.weight, a) for a in s.acts):
                out.append(name)
        return out
    logger = logging.getLogger(dispatch.__name__)
    old = logger.level
    logger.setLevel(logging.ERROR)  # "cannot run this call" is an answer here, not a warning
    try:
        for name in s.backends:
            if name == "torch":
                continue
            with contextlib.suppress(ValueError):
                if all(resolve_backend(name, x, probe.weight, a).name == name for a in s.acts):
                    out.append(name)
    finally:
        logger.setLevel(old)
    return out


def run_configs(s: Settings) -> list[RunConfig]:
    cfgs = [RunConfig("bf16", None, None)]
    for b in backends_on_device(s):
        cfgs += [RunConfig("ternary", b, a) for a in s.acts]
    if not s.skip_torch_ref:
        cfgs += [RunConfig("ternary", "torch", a, reference=True) for a in s.acts]
    return cfgs


# ----------------------------------------------------------------------------- report data


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def environment(s: Settings) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 (any import failure means "not available")
        triton_version = None
    if s.cuda:
        props = torch.cuda.get_device_properties(s.device)
        dev = {
            "type": "cuda",
            "name": props.name,
            "total_memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
    else:
        dev = {
            "type": s.device.type,
            "name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
    dev["slug"] = slug(dev["name"]) if s.cuda else f"{s.device.type}"
    return {
        "device": dev,
        "versions": {
            "ternaryflux": __version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
            "python": platform.python_version(),
        },
    }


def sizes_report(
    config: FluxConfig | Flux2Config,
    group_sizes: tuple[int, ...] = (0,),
    policy: str | None = None,
    resident_group_size: int = 0,
) -> dict[str, Any]:
    """Device-independent figures: parameter counts, resident weight bytes (ternary layers with
    ``resident_group_size`` scales), file sizes (one 2-bit and one base3 file per group size)."""
    params = param_counts(config, policy)
    dense = dense_file_size(config)
    files: dict[str, Any] = {"bf16": {**dense, "ratio_vs_bf16": 1.0}}
    for g in group_sizes:
        for packing in ("2bit", "base3"):
            f = checkpoint_file_size(config, packing, group_size=g, policy=policy)
            key = packing if g == 0 else f"{packing}-g{g}"
            f["ratio_vs_bf16"] = f["total"] / dense["total"]
            f["x_smaller"] = dense["total"] / f["total"]
            f["group_size"] = g
            files[key] = f
    w_bf16 = resident_weight_bytes(config, ternary=False)
    w_tern = resident_weight_bytes(config, ternary=True, group_size=resident_group_size, policy=policy)
    return {
        "params": {**params, "ternary_fraction": params["ternary"] / params["total"]},
        "weights": {"bf16_bytes": w_bf16, "ternary_bytes": w_tern, "ratio_vs_bf16": w_tern / w_bf16},
        "file_sizes": files,
    }


def is_flux_dev(config: FluxConfig | Flux2Config) -> bool:
    return config == FluxConfig()


def is_full_size(s: Settings) -> bool:
    return s.config == s.spec.config


def file_goals(sizes: dict[str, Any], applies: bool, spec: ModelSpec | None = None) -> list[dict[str, Any]]:
    spec = spec or MODELS["flux1-dev"]
    if spec.key == "flux1-dev":
        goals = (
            ("2bit", GOALS["file_2bit_bytes"], "<= 3.1 GB"),
            ("base3", GOALS["file_base3_bytes"], "<= 2.55 GB"),
        )
    else:  # issue 11: klein 4B ternary <= 1.15 GB at g128 (bench/flux2_sizes.py)
        text = f"<= {GOAL_KLEIN_4B_GB} GB"
        goals = tuple((key, GOAL_KLEIN_4B_GB * GB, text) for key in spec.file_keys)
    out = []
    for key, limit, text in goals:
        total = sizes["file_sizes"][key]["total"]
        out.append(
            {
                "what": f"file size {key}",
                "goal": text,
                "value": total,
                "met": (total <= limit) if applies else None,
            }
        )
    return out


def vs_published(data: dict[str, Any], spec: ModelSpec) -> list[dict[str, Any]]:
    """Our measured figures beside the published ones (same image size, batch 1): one row per
    configuration, plus the file sizes. Empty without published figures or for a reduced model."""
    pub = spec.published
    if not pub or data.get("model_name") != spec.title:
        return []
    rows = []
    k2, k3 = spec.file_keys
    files = data["file_sizes"]
    rows.append(
        {
            "figure": "checkpoint file",
            "published": f"{pub['file_gb']} GB",
            "ours": f"{files[k2]['total'] / GB:.3f} GB {k2} / {files[k3]['total'] / GB:.3f} GB {k3}",
            "config": "ternary (transformer file)",
        }
    )
    for r in data.get("results") or []:
        if r["status"] != "ok" or r["image_px"] != pub["image_px"] or r["batch"] != 1:
            continue
        steps = pub["steps"]
        rows.append(
            {
                "figure": f"{steps} steps at {pub['image_px']}², transformer",
                "published": f"{pub['pipeline_s']} s on {pub['gpu']} (<= {1e3 * pub['step_s_upper_bound']:.0f} ms/step)",
                "ours": f"{steps} x {r['latency_ms_median']:.1f} ms = {steps * r['latency_ms_median'] / 1e3:.3f} s",
                "config": r["label"],
                "ours_s": steps * r["latency_ms_median"] / 1e3,
            }
        )
        rows.append(
            {
                "figure": "peak VRAM of a step, transformer",
                "published": f"{pub['peak_vram_gib']} GiB ({pub['peak_vram_note']})",
                "ours": f"{r['peak_allocated_bytes'] / GIB:.2f} GiB allocated, {r['peak_reserved_bytes'] / GIB:.2f} GiB reserved",
                "config": r["label"],
                "ours_gib": r["peak_allocated_bytes"] / GIB,
            }
        )
    return rows


def print_published(data: dict[str, Any]) -> None:
    pub = data.get("published")
    if not pub:
        return
    rows = data.get("vs_published") or []
    where = (
        "exact, from shapes"
        if data["mode"] == "sizes"
        else f"transformer only, measured on {data['device']['name']}"
    )
    print(f"\n{pub['what']} — beside ours ({where})")
    if not rows:
        print(
            f"  published: {pub['pipeline_s']} s for {pub['steps']} steps at {pub['image_px']}² on {pub['gpu']}, "
            f"peak {pub['peak_vram_gib']} GiB, file {pub['file_gb']} GB ({PUBLISHED_LABEL}); "
            "nothing of ours to set beside it in this run"
        )
        return
    print(
        format_table(
            ["figure", f"Bonsai ({PUBLISHED_LABEL})", "ours (measured / exact)", "config"],
            [[r["figure"], r["published"], r["ours"], r["config"]] for r in rows],
        )
    )


def add_ratios(results: list[dict[str, Any]], flux_dev: bool) -> None:
    base = {(r["image_px"], r["batch"]): r for r in results if r["model"] == "bf16" and r["status"] == "ok"}
    for r in results:
        b = base.get((r["image_px"], r["batch"]))
        if r["status"] != "ok" or b is None:
            continue
        r["latency_vs_bf16"] = r["latency_ms_median"] / b["latency_ms_median"]
        r["peak_vs_bf16"] = r["peak_allocated_bytes"] / b["peak_allocated_bytes"]
        r["peak_x_lower"] = b["peak_allocated_bytes"] / r["peak_allocated_bytes"]
        r["reserved_vs_bf16"] = r["peak_reserved_bytes"] / b["peak_reserved_bytes"]
        goals = []
        if r["model"] == "ternary" and not r["reference"]:
            target = GOALS["latency_a8_vs_bf16"] if r["act"] == "a8" else GOALS["latency_a16_vs_bf16"]
            goals.append({"goal": f"lat<={target}x", "met": r["latency_vs_bf16"] <= target})
        if r["model"] == "ternary" and r["image_px"] == 1024:
            target = GOALS["peak_vram_1024_x_lower"]
            goals.append({"goal": f"VRAM>={target:g}x lower", "met": r["peak_x_lower"] >= target})
        r["goals"] = [{**g, "met": g["met"] if flux_dev else None} for g in goals]


def print_tables(data: dict[str, Any]) -> None:
    sizes = data
    c = data["config"]
    where = "sizes from shapes (any device)" if data["mode"] == "sizes" else f"on {data['device']['name']}"
    print(
        f"\n{data['model_name']} (hidden {c['hidden_size']}, {c['depth']}+{c['depth_single_blocks']} blocks), "
        f"{where} — torch {data['versions']['torch']}, triton {data['versions']['triton']}"
    )
    p = sizes["params"]
    print(f"parameters: {p['total']:,} ({100 * p['ternary_fraction']:.2f}% ternary)")
    rows = [
        ["weights on device, bf16", f"{sizes['weights']['bf16_bytes'] / GB:.3f} GB", "1.00x", ""],
        [
            "weights on device, ternary",
            f"{sizes['weights']['ternary_bytes'] / GB:.3f} GB",
            f"{sizes['weights']['ratio_vs_bf16']:.3f}x",
            "",
        ],
    ]
    goals = {g["what"]: g for g in data.get("file_goals", [])}
    for key, f in sizes["file_sizes"].items():
        g = goals.get(f"file size {key}")
        goal = "" if g is None else f"{g['goal']} {_met(g['met'])}"
        rows.append(
            [
                f"file, {key}",
                f"{f['total'] / GB:.4f} GB ({f['total'] / GIB:.3f} GiB)",
                f"{f['ratio_vs_bf16']:.4f}x",
                goal,
            ]
        )
    print(format_table(["size", "bytes", "vs bf16", "goal"], rows))
    results = data.get("results") or []
    if not results:
        print_published(data)
        return
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append([r["label"], r["shape"], r["status"], "", "", "", "", "", r.get("error", "")[:60]])
            continue
        goal = "; ".join(f"{g['goal']} {_met(g['met'])}" for g in r.get("goals", []))
        rows.append(
            [
                r["label"],
                r["shape"],
                f"{r['latency_ms_median']:.1f}",
                f"{r.get('latency_vs_bf16', float('nan')):.3f}x",
                f"{r['peak_allocated_bytes'] / GB:.3f}",
                f"{r['peak_reserved_bytes'] / GB:.3f}",
                f"{r.get('peak_x_lower', float('nan')):.2f}x",
                "" if r["output_finite"] else "NON-FINITE",
                goal,
            ]
        )
    timer = data["settings"]["timer"]
    print()
    print(
        format_table(
            [
                "config",
                "shape",
                f"ms ({timer})",
                "vs bf16",
                "peak GB",
                "reserved GB",
                "VRAM x lower",
                "",
                "goal",
            ],
            rows,
        )
    )
    print_published(data)


def _met(m: bool | None) -> str:
    return "n/a" if m is None else ("MET" if m else "missed")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- main


def _failing(message: str) -> Callable[[], dict[str, Any]]:
    def fail() -> dict[str, Any]:
        raise RuntimeError(message)

    return fail


def run_bench(s: Settings, out: Path | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    env = environment(s)
    spec = s.spec
    flux_dev = is_flux_dev(s.config) and s.mode == "gpu"
    g = spec.group_size
    sizes = sizes_report(s.config, (g,), spec.policy, g)
    if is_full_size(s):
        name = spec.title
    else:
        name = "FLUX.2 (reduced size)" if s.config.architecture == "flux2" else "FLUX (reduced size)"
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": s.mode,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **env,
        "model_name": name,
        "config": config_dict(s.config),
        "settings": {
            "warmup": s.warmup,
            "runs": s.runs,
            "reference_warmup": s.ref_warmup,
            "reference_runs": s.ref_runs,
            "seed": s.seed,
            "dtype": "bfloat16",
            "timer": "cuda-events" if s.cuda else "perf_counter",
            "memory": "cuda-allocator" if s.cuda else "tensor-bytes",
            "step": "forward_latent + Euler update, eager, torch.inference_mode",
            "budget_s": s.budget_s,
        },
        "backends_available": available_backends(),
        "goals": GOALS,
        **sizes,
        "file_goals": file_goals(sizes, is_full_size(s), spec),
        "results": [],
    }
    if spec.key != "flux1-dev":  # FLUX.1-dev's JSON stays as it was
        data.update(
            model=spec.key,
            architecture=s.config.architecture,
            group_size=g,
            ternary_policy=spec.policy,
            published=spec.published,
            vs_published=[],
        )
    configs = run_configs(s)
    data["configs"] = [c.label for c in configs]
    if out:
        write_json(out, data)
    results: list[dict[str, Any]] = data["results"]

    def over_budget() -> bool:
        return bool(s.budget_s) and time.perf_counter() - t_start > s.budget_s

    def record(cfg: RunConfig, shape: Shape, fn: Callable[[], dict[str, Any]]) -> None:
        row: dict[str, Any] = {
            "label": cfg.label,
            "model": cfg.model,
            "backend": cfg.backend,
            "act": cfg.act,
            "reference": cfg.reference,
            "shape": shape.label,
            "image_px": shape.image_px,
            "latent_hw": shape.latent_hw,
            "batch": shape.batch,
            "img_tokens": shape.img_tokens,
            "txt_tokens": shape.txt_tokens,
        }
        if over_budget():
            row.update(status="skipped", error=f"time budget of {s.budget_s:.0f} s spent")
        else:
            t0 = time.perf_counter()
            try:
                row.update(fn())
                row["status"] = "ok"
            except Exception as e:  # noqa: BLE001 (an OOM or kernel failure is a result too)
                row.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
                if s.cuda:
                    torch.cuda.empty_cache()
            row["wall_s"] = time.perf_counter() - t0
        results.append(row)
        add_ratios(results, flux_dev)
        if "vs_published" in data:
            data["vs_published"] = vs_published(data, spec)
        msg = (
            row.get("error")
            or f"{row['latency_ms_median']:.1f} ms, peak {row['peak_allocated_bytes'] / GB:.3f} GB"
        )
        print(f"[{time.perf_counter() - t_start:6.1f}s] {cfg.label:32s} {shape.label:10s} {msg}", flush=True)
        if out:
            write_json(out, data)

    # bf16 first, alone on the device; then the ternary model, alone
    for cfg in [c for c in configs if c.model == "bf16"]:
        model = None
        try:
            if not over_budget():
                t0 = time.perf_counter()
                model = random_bf16_flux(s.config, s.device, torch.bfloat16, s.seed)
                _sync(s)
                data["build_s_bf16"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            data["build_error_bf16"] = f"{type(e).__name__}: {e}"[:500]
        for shape in s.shapes:
            if model is None:
                record(cfg, shape, _failing(data.get("build_error_bf16", "model not built")))
            else:
                record(cfg, shape, lambda m=model, sh=shape: measure(s, m, sh, s.warmup, s.runs))
        del model
        gc.collect()
        if s.cuda:
            torch.cuda.empty_cache()

    ternary_cfgs = [c for c in configs if c.model == "ternary"]
    if ternary_cfgs:
        model = None
        try:
            if not over_budget():
                t0 = time.perf_counter()
                model = random_ternary_flux(s.config, s.device, torch.bfloat16, s.seed, g, spec.policy)
                _sync(s)
                data["build_s_ternary"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            data["build_error_ternary"] = f"{type(e).__name__}: {e}"[:500]
        for cfg in ternary_cfgs:
            for shape in s.shapes:
                if model is None:
                    record(cfg, shape, _failing(data.get("build_error_ternary", "model not built")))
                    continue

                def one(m=model, cfg=cfg, sh=shape) -> dict[str, Any]:
                    set_backend(m, cfg.backend, cfg.act)
                    warm, runs = (s.ref_warmup, s.ref_runs) if cfg.reference else (s.warmup, s.runs)
                    res = measure(s, m, sh, warm, runs)
                    # a backend (or one of its routes) that raised was disabled and answered by torch
                    res["fell_back_to_torch"] = cfg.backend != "torch" and (
                        cfg.backend not in available_backends()
                        or any(b == cfg.backend for b, _ in disabled_routes())
                    )
                    return res

                record(cfg, shape, one)
        del model
        gc.collect()
    data["total_s"] = time.perf_counter() - t_start
    if out:
        write_json(out, data)
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        choices=list(MODELS),
        default="flux1-dev",
        help="flux1-dev (default) or flux2-klein-4b (ternary `blocks` policy, group-128 scales)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU (hidden 256, 1+1 blocks), < 60 s"
    )
    p.add_argument(
        "--sizes-only", action="store_true", help="only the exact file sizes of --model (no model is built)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/results/flux_e2e-<gpu>.json; flux_e2e-flux2-klein-4b-<gpu>.json)",
    )
    p.add_argument("--device", default=None, help="torch device (default cuda; cpu with --smoke)")
    p.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        default=None,
        help="image sizes in px (default 512 1024; flux2-klein-4b: 1024)",
    )
    p.add_argument(
        "--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 2; flux2-klein-4b: 1)"
    )
    p.add_argument("--txt-tokens", type=int, default=None, help="text tokens (default 512; 16 with --smoke)")
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps per configuration (default 3; 1 smoke)"
    )
    p.add_argument(
        "--runs", type=int, default=None, help="timed steps per configuration (default 5; 2 smoke)"
    )
    p.add_argument(
        "--backends", nargs="*", default=None, help="kernel backends to time (default: all available)"
    )
    p.add_argument(
        "--skip-torch-ref", action="store_true", help="leave out the (slow) PyTorch reference path"
    )
    p.add_argument(
        "--budget-s", type=float, default=0.0, help="skip the remaining configurations after this many s"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: 1 with --smoke, steadier)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = MODELS[args.model]
    if args.sizes_only:
        config = spec.config
        data = {
            "schema": SCHEMA,
            "mode": "sizes",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": {"type": "none", "name": "device-independent (computed from shapes)", "slug": "sizes"},
            "versions": {"ternaryflux": __version__, "torch": torch.__version__, "triton": None},
            "model_name": spec.title,
            "config": config_dict(config),
            "goals": GOALS,
            **sizes_report(config, spec.sizes_group_sizes, spec.policy, spec.group_size),
            "results": [],
        }
        if spec.key != "flux1-dev":
            data.update(
                model=spec.key,
                architecture=config.architecture,
                group_size=spec.group_size,
                ternary_policy=spec.policy,
                published=spec.published,
            )
            data["vs_published"] = vs_published(data, spec)
        data["file_goals"] = file_goals(data, True, spec)
        out = args.out or RESULTS_DIR / spec.sizes_out
        write_json(out, data)
        print_tables(data)
        print(f"\nwrote {out}")
        return 0
    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)
    if args.smoke:
        if args.out is None:
            print(
                "--smoke needs --out PATH (smoke figures must not land beside GPU results)", file=sys.stderr
            )
            return 2
        s = smoke_settings(args)
    else:
        if not torch.cuda.is_available() and (args.device or "cuda").startswith("cuda"):
            print("no CUDA device: run with --smoke (CPU) or --sizes-only", file=sys.stderr)
            return 2
        s = gpu_settings(args)
    out = args.out or RESULTS_DIR / f"{spec.out_prefix}{slug(torch.cuda.get_device_name(s.device))}.json"
    data = run_bench(s, out)
    print_tables(data)
    print(f"\nwrote {out} ({data['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
