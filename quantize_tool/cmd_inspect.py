"""``ternaryflux inspect``: what is in a checkpoint, without loading it.

Reads only the safetensors header (plus the tiny ``weight_shape`` tensors of a ternary file) and
tells you: float FLUX, TernaryFLUX checkpoint or calibration file; the architecture (hidden size,
blocks, heads) and variant (dev = has a guidance embedder, schnell = none); the key layout (BFL,
diffusers, or a ComfyUI checkpoint with the 'model.diffusion_model.' prefix); dtypes; parameter
counts and how many would be / are ternary; and a ternary file's metadata (method, parameters,
calibration summary, source SHA-256, packing, group size).

Examples:
  ternaryflux inspect flux1-dev.safetensors
  ternaryflux inspect flux1-dev-ternary.safetensors --json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..core.calibration_data import CALIBRATION_KEY
from ..core.checkpoint import METADATA_KEY, TernaryMetadata, describe_file
from ..core.defaults import DEFAULT_METHOD, method_needs_calibration
from ..core.flux_layout import ARCHITECTURES, config_from_shapes, is_ternary_layer
from ..quant.sources import COMFY_PREFIX, DTYPE_NAMES, SafetensorsReader, open_source, resolve_files
from .args import FORMATTER, ToolError
from .report import format_table, human_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="describe a FLUX / TernaryFLUX / calibration file (header only)",
        description=__doc__,
        formatter_class=FORMATTER,
    )
    p.add_argument("file", type=Path, help=".safetensors file, shard index, or diffusers transformer folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def inspect_file(path: Path) -> dict[str, Any]:
    files = resolve_files(path)
    first = SafetensorsReader(files[0])
    size = sum(f.stat().st_size for f in files)
    info: dict[str, Any] = {"files": [str(f) for f in files], "bytes": size}
    if CALIBRATION_KEY in first.metadata:
        from ..core.calibration_data import read_calibration_info

        cal = read_calibration_info(files[0])
        shapes = {k: first.shape(k) for k in first.keys()}
        xs = [v for k, v in shapes.items() if k.endswith(".x")]
        info.update(
            kind="calibration",
            calibration=cal,
            latent_shapes=sorted({tuple(s) for s in xs}),
            num_samples=cal.get("num_samples"),
        )
        return info
    if METADATA_KEY in first.metadata:
        meta = TernaryMetadata.from_json(first.metadata[METADATA_KEY], files[0])
        keys = first.keys()
        shapes = {k: first.shape(k) for k in keys}
        dtypes: dict[str, int] = {}
        ternary_params = other = 0
        for k in keys:
            if k.endswith(".weight_shape"):
                n, kk = (int(v) for v in first.get(k).tolist())
                shapes[k[: -len("_shape")]] = (n, kk)
                ternary_params += n * kk
        for k in keys:
            if k.endswith((".weight_shape", ".weight_scale")) or (
                k.endswith(".weight") and f"{k}_scale" in shapes
            ):
                continue
            other += math.prod(shapes[k])
            dt = DTYPE_NAMES.get(first.dtype_name(k), first.dtype_name(k))
            dtypes[dt] = dtypes.get(dt, 0) + math.prod(shapes[k])
        cfg = config_from_shapes({k: v for k, v in shapes.items()})
        info.update(
            kind="ternaryflux",
            architecture=ARCHITECTURES[cfg.architecture].title,
            ternary_policy=meta.policy,
            variant=cfg.variant,
            layout="BFL",
            config=cfg.to_dict(),
            params_total=ternary_params + other,
            params_ternary=ternary_params,
            ternary_layers=sum(1 for k in keys if k.endswith(".weight_scale")),
            dtypes_of_float_params=dtypes,
            metadata=json.loads(meta.to_json()),
        )
        return info
    try:
        src = open_source(path)
    except ToolError as e:
        what = describe_file(files[0])
        if "plain FLUX transformer" in what:  # a FLUX whose layout was recognised: say what is wrong with it
            raise
        raise ToolError(f"{path}: {what} ({e})") from None
    cfg = src.config
    dtypes = {}
    total = ternary = 0
    for k, shp in src.shapes.items():
        n = math.prod(shp)
        total += n
        dt = DTYPE_NAMES.get(src.dtypes[k], src.dtypes[k])
        dtypes[dt] = dtypes.get(dt, 0) + n
        if k.endswith(".weight") and is_ternary_layer(k[: -len(".weight")], cfg.architecture):
            ternary += n
    info.update(
        kind="float",
        architecture=ARCHITECTURES[cfg.architecture].title,
        default_ternary_policy=ARCHITECTURES[cfg.architecture].default_policy,
        variant=src.variant,
        layout=src.layout,
        key_prefix=src.prefix or None,
        comfyui_checkpoint=src.prefix == COMFY_PREFIX,
        config=cfg.to_dict(),
        params_total=total,
        params_ternary=0,
        params_ternarizable=ternary,
        dtypes=dtypes,
    )
    return info


def next_step_hint(path) -> str:
    """The quantize command for this file with the shared default method (core/defaults.py)."""
    calib = " --calibration CALIBRATION_FILES" if method_needs_calibration(DEFAULT_METHOD) else ""
    return f"ternaryflux quantize {path} --method {DEFAULT_METHOD}{calib} -o OUT.safetensors"


def run(args: argparse.Namespace) -> int:
    info = inspect_file(args.file)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    rows: list[list[Any]] = [
        ["file", ", ".join(info["files"]) if len(info["files"]) < 3 else f"{len(info['files'])} shards"],
        ["size", human_bytes(info["bytes"])],
    ]
    if info["kind"] == "calibration":
        cal = info["calibration"]
        rows += [
            ["kind", "TernaryFLUX calibration file"],
            ["samples", cal.get("num_samples")],
            ["latent shapes", info["latent_shapes"]],
        ]
        rows += [[k, v] for k, v in cal.items() if k not in ("format", "version", "num_samples")]
        print(format_table(["ternaryflux inspect", ""], rows))
        return 0
    c = info["config"]
    arch = f"{info['architecture']}-{info['variant']}: hidden {c['hidden_size']}, {c['num_heads']} heads, {c['depth']} double + {c['depth_single_blocks']} single blocks"
    if info["kind"] == "ternaryflux":
        m = info["metadata"]
        frac = info["params_ternary"] / max(info["params_total"], 1)
        rows += [
            ["kind", "TernaryFLUX checkpoint (ternary)"],
            ["architecture", arch],
            [
                "parameters",
                f"{info['params_total']:,} ({info['params_ternary']:,} ternary = {100 * frac:.1f}%)",
            ],
            ["ternary layers", f"{info['ternary_layers']} (policy {info['ternary_policy']})"],
            [
                "float params by dtype",
                ", ".join(f"{k} {v:,}" for k, v in info["dtypes_of_float_params"].items()),
            ],
            ["packing", m["packing"]],
            ["group size", m["group_size"] or "0 (per output channel)"],
            ["method", m["method"]],
            ["method params", json.dumps(m["method_params"], sort_keys=True)[:200]],
            ["calibration", json.dumps(m["calibration"])[:200] if m["calibration"] else "none"],
            ["source", f"{m['source_name']} (sha256 {m['source_sha256'] or 'not recorded'})"],
            ["tool / format", f"{m['tool_version']} / {m['format']} v{m['format_version']}"],
        ]
    else:
        layout = {"bfl": "BFL", "diffusers": "diffusers"}[info["layout"]]
        if info["comfyui_checkpoint"]:
            layout += " under 'model.diffusion_model.' (ComfyUI checkpoint)"
        elif info["key_prefix"]:
            layout += f" under {info['key_prefix']!r}"
        frac = info["params_ternarizable"] / max(info["params_total"], 1)
        rows += [
            ["kind", "float FLUX transformer (not ternary)"],
            ["architecture", arch],
            ["key layout", layout],
            ["dtypes", ", ".join(f"{k} {v:,}" for k, v in info["dtypes"].items())],
            ["parameters", f"{info['params_total']:,}"],
            [
                "would be ternary",
                f"{info['params_ternarizable']:,} ({100 * frac:.1f}%, policy {info['default_ternary_policy']})",
            ],
            ["next step", next_step_hint(args.file)],
        ]
    print(format_table(["ternaryflux inspect", ""], rows))
    return 0
