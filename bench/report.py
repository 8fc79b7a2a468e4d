#!/usr/bin/env python3
"""Bar charts (PNG) from ``bench/flux_e2e.py`` JSON files: latency, peak VRAM and file size,
each against bf16.

For every input ``<dir>/<stem>.json`` it writes, into ``--out-dir`` (default
``bench/results``):

* ``<stem>-latency.png``  median step latency / bf16, per shape and configuration;
* ``<stem>-vram.png``     peak VRAM of one step (GB), with the "x lower than bf16" factor;
* ``<stem>-filesize.png`` checkpoint size: bf16, 2-bit, base3 at rest.

A sizes-only file (``flux_e2e-sizes.json``) has no timings and gives only the file-size chart.

Usage::

    python bench/report.py bench/results/flux_e2e-*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GB = 1e9

_COLORS = {
    ("bf16", None, False): "#7f7f7f",
    ("a16", False): "#1f77b4",
    ("a8", False): "#2ca02c",
    ("a16", True): "#aec7e8",
    ("a8", True): "#98df8a",
}


def _color(r: dict[str, Any]) -> str:
    if r["model"] == "bf16":
        return _COLORS[("bf16", None, False)]
    return _COLORS.get((r["act"], bool(r["reference"])), "#ff7f0e")


def _title(data: dict[str, Any], what: str) -> str:
    dev = data.get("device", {}).get("name", "?")
    mode = data.get("mode", "")
    extra = " — SMOKE (tiny model on CPU, not FLUX figures)" if mode == "smoke" else ""
    return f"{data.get('model_name', 'FLUX')}: {what}\n{dev}{extra}"


def _ok_results(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data.get("results") or [] if r.get("status") == "ok"]


def _grouped(
    results: list[dict[str, Any]],
) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    shapes: list[str] = []
    labels: list[str] = []
    cell: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r["shape"] not in shapes:
            shapes.append(r["shape"])
        if r["label"] not in labels:
            labels.append(r["label"])
        cell[(r["shape"], r["label"])] = r
    return shapes, labels, cell


def _bars(ax, shapes, labels, cell, value, annotate) -> dict[str, tuple[float, float]]:
    """Grouped bars; returns each shape group's x-extent."""
    width = 0.8 / max(1, len(labels))
    extent = {}
    for j, label in enumerate(labels):
        xs, ys, colors, rs = [], [], [], []
        for i, shape in enumerate(shapes):
            r = cell.get((shape, label))
            if r is None or value(r) is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(value(r))
            colors.append(_color(r))
            rs.append(r)
        if not xs:
            continue
        ref = rs[0]["reference"]
        bars = ax.bar(
            xs, ys, width * 0.92, color=colors, label=label, hatch="//" if ref else None, edgecolor="white"
        )
        for b, r in zip(bars, rs):
            ax.annotate(
                annotate(r),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if len(labels) > 4 else 0,
                xytext=(0, 2),
                textcoords="offset points",
            )
    for i, shape in enumerate(shapes):
        extent[shape] = (i - 0.4, i + 0.4)
    ax.set_xticks(range(len(shapes)), shapes)
    return extent


def latency_chart(data: dict[str, Any], path: Path) -> bool:
    results = [r for r in _ok_results(data) if r.get("latency_vs_bf16") is not None]
    if not results:
        return False
    shapes, labels, cell = _grouped(results)
    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(shapes) + 3), 4.8))
    _bars(ax, shapes, labels, cell, lambda r: r["latency_vs_bf16"], lambda r: f"{r['latency_vs_bf16']:.2f}x")
    top = max(r["latency_vs_bf16"] for r in results)
    if top > 8:  # the PyTorch reference path can be far slower than the kernels
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylim(top=top * 2)
    else:
        ax.set_ylim(0, max(top, 1.2) * 1.15)
    goals = data.get("goals", {})
    ax.axhline(1.0, color="black", lw=0.8)
    for key, text, color in (
        ("latency_a16_vs_bf16", "A16 goal", _COLORS[("a16", False)]),
        ("latency_a8_vs_bf16", "A8 goal", _COLORS[("a8", False)]),
    ):
        if key in goals:
            ax.axhline(goals[key], color=color, ls="--", lw=1)
            ax.annotate(
                f"{text} ≤{goals[key]}x", (len(shapes) - 0.5, goals[key]), ha="right", va="bottom", fontsize=8
            )
    timer = data.get("settings", {}).get("timer", "")
    ax.set_ylabel(f"median step latency / bf16 ({timer}; lower is better)")
    ax.set_title(_title(data, "denoising-step latency vs bf16"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def vram_chart(data: dict[str, Any], path: Path) -> bool:
    results = _ok_results(data)
    if not results:
        return False
    shapes, labels, cell = _grouped(results)
    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(shapes) + 3), 4.8))

    def note(r: dict[str, Any]) -> str:
        x = r.get("peak_x_lower")
        return f"{r['peak_allocated_bytes'] / GB:.3g}" + (
            "" if x is None or r["model"] == "bf16" else f" ({x:.1f}x)"
        )

    extent = _bars(ax, shapes, labels, cell, lambda r: r["peak_allocated_bytes"] / GB, note)
    goal = data.get("goals", {}).get("peak_vram_1024_x_lower")
    if goal and data.get("mode") == "gpu":
        for shape in shapes:
            base = cell.get((shape, "bf16"))
            if base and base["image_px"] == 1024:
                y = base["peak_allocated_bytes"] / GB / goal
                ax.hlines(y, *extent[shape], colors="red", linestyles="--", lw=1)
                ax.annotate(
                    f"goal: bf16/{goal:g}",
                    (extent[shape][1], y),
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color="red",
                )
    memory = data.get("settings", {}).get("memory", "")
    ax.set_ylabel(f"peak memory of one step, GB ({memory})")
    ax.set_title(_title(data, "peak VRAM of one denoising step (weights + activations)"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def filesize_chart(data: dict[str, Any], path: Path) -> bool:
    files = data.get("file_sizes") or {}
    if "bf16" not in files:
        return False
    names = {"bf16": "bf16 safetensors", "2bit": "ternary, 2-bit", "base3": "ternary, base3 at rest"}
    keys = [k for k in ("bf16", "2bit", "base3") if k in files]
    keys += [k for k in files if k not in keys]
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(keys) + 2), 4.5))
    colors = ["#7f7f7f" if k == "bf16" else ("#1f77b4" if k.startswith("2bit") else "#2ca02c") for k in keys]
    ys = [files[k]["total"] / GB for k in keys]
    bars = ax.bar(range(len(keys)), ys, 0.6, color=colors)
    goals = data.get("goals", {}) if data.get("model_name") == "FLUX.1-dev" else {}
    for i, (b, k) in enumerate(zip(bars, keys)):
        f = files[k]
        txt = f"{f['total'] / GB:.3f} GB"
        if k != "bf16":
            txt += f"\n{files['bf16']['total'] / f['total']:.2f}x smaller"
        goal = goals.get("file_2bit_bytes" if k.startswith("2bit") else "file_base3_bytes")
        if k != "bf16" and goal and not f.get("group_size"):
            ax.hlines(goal / GB, i - 0.4, i + 0.4, colors="red", linestyles="--", lw=1)
            txt += f"\ngoal ≤{goal / GB:g} GB: {'met' if f['total'] <= goal else 'missed'}"
        ax.annotate(
            txt,
            (b.get_x() + b.get_width() / 2, b.get_height() * 1.0),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_xticks(range(len(keys)), [names.get(k, k.replace("-g", ", group ")) for k in keys], fontsize=8)
    ax.set_ylabel("file size, GB (10^9 bytes)")
    ax.set_ylim(0, max(ys) * 1.15)
    ax.set_title(_title(data, "transformer checkpoint size"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def render(json_path: Path, out_dir: Path) -> list[Path]:
    data = json.loads(json_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, fn in (("latency", latency_chart), ("vram", vram_chart), ("filesize", filesize_chart)):
        path = out_dir / f"{json_path.stem}-{suffix}.png"
        if fn(data, path):
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "inputs", nargs="*", type=Path, help="flux_e2e JSON files (default: bench/results/flux_e2e-*.json)"
    )
    p.add_argument(
        "--out-dir", type=Path, default=RESULTS_DIR, help="where the PNGs go (default bench/results)"
    )
    args = p.parse_args(argv)
    inputs = args.inputs or sorted(RESULTS_DIR.glob("flux_e2e-*.json"))
    if not inputs:
        print("no flux_e2e JSON files given or found in bench/results", file=sys.stderr)
        return 1
    for path in inputs:
        for png in render(path, args.out_dir):
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
