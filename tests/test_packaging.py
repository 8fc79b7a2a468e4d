"""The pack layout: importable without ComfyUI, library free of ComfyUI imports, versions agree."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import ternaryflux
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ["core", "kernels", "quantize_tool"]


def test_version_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["version"] == ternaryflux.__version__
    assert meta["project"]["name"] == "comfyui-ternaryflux"
    assert meta["tool"]["comfy"]["requires-comfyui"].startswith(">=")
    assert {"test", "gpu", "distill"} <= set(meta["project"]["optional-dependencies"])
    assert meta["project"]["scripts"]["ternaryflux"] == "ternaryflux.quantize_tool.cli:main"


def test_requirements_never_pin_torch_or_triton():
    lines = [ln.split("#")[0].strip().lower() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not [ln for ln in lines if ln.startswith(("torch", "triton"))]


def test_library_never_imports_comfyui():
    offenders = []
    for part in LIBRARY:
        for f in (ROOT / part).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (
                    isinstance(node, ast.ImportFrom)
                    and node.level > 0
                    and (node.module or "").startswith("nodes")
                ):
                    names = ["(pack) nodes"]
                offenders += [
                    f"{f.relative_to(ROOT)}: {n}"
                    for n in names
                    if n.split(".")[0]
                    in {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "(pack) nodes"}
                ]
    assert offenders == []


def test_pack_imports_without_host_and_does_not_load_nodes():
    code = "import sys, ternaryflux; print(any(m.startswith('ternaryflux.nodes') for m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_pack_loads_under_another_folder_name(tmp_path):
    # ComfyUI imports <custom_nodes>/<any-name>/__init__.py by file path; relative imports must work
    link = tmp_path / "ComfyUI-TernaryFLUX-main"
    link.symlink_to(ROOT, target_is_directory=True)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('some_pack_name', r'{link}/__init__.py', "
        f"submodule_search_locations=[r'{link}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['some_pack_name'] = m; spec.loader.exec_module(m)\n"
        "from some_pack_name.core.checkpoint import FORMAT_NAME\n"
        "print(m.__version__, FORMAT_NAME)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [ternaryflux.__version__, "ternaryflux"]


def test_pytest_runs_from_a_checkout_folder_that_is_not_an_identifier(tmp_path):
    # CI clones into folders like ``tmp.Ab12``; pytest then imports the root __init__.py bare.
    # A real copy, not a symlink: pytest resolves symlinks to the original folder name.
    clone = tmp_path / "tmp.Ab12-clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ternarize.py"],
        capture_output=True,
        text=True,
        cwd=clone,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


def _req(text: str):
    from packaging.requirements import Requirement

    return Requirement(text)


PLATFORMS = {
    "linux-x86_64": {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"},
    "macos-arm64": {"platform_system": "Darwin", "platform_machine": "arm64", "sys_platform": "darwin"},
    "windows-amd64": {"platform_system": "Windows", "platform_machine": "AMD64", "sys_platform": "win32"},
}


def test_test_extra_is_light_and_portable_ci_extra_pins_kernels_where_wheels_exist():
    """`.[test]` (README command 1) installs on macOS/Windows and stays small: no triton or
    bitsandbytes; `.[ci]` pins them for CI, only on Linux (where their wheels exist)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for env in PLATFORMS.values():
        names = {_req(d).name for d in extras["test"] if not _req(d).marker or _req(d).marker.evaluate(env)}
        assert not names & {"triton", "bitsandbytes"}, names
    ci = {_req(d).name: _req(d) for d in extras["ci"]}
    assert str(ci["triton"].specifier) == "==3.7.1" and ci["bitsandbytes"].specifier
    for r in ci.values():
        assert r.marker.evaluate(PLATFORMS["linux-x86_64"])
        assert not r.marker.evaluate(PLATFORMS["macos-arm64"]) and not r.marker.evaluate(
            PLATFORMS["windows-amd64"]
        )


def test_ci_runs_readme_commands_and_the_real_host():
    """.ci/run: README command 1 verbatim, the CI extra, the host build outside the clone, and
    README command 2 with the host set so the integration suite cannot skip."""
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    cmd1 = readme.split("```bash\n", 1)[1].split("\n```", 1)[0]
    plain = ci.replace(" --disable-pip-version-check", "")
    for part in cmd1.split(" && "):
        assert part in plain, part
    assert "pip install --disable-pip-version-check -e '.[test,ci]'" in ci
    assert "set -euo pipefail" in ci and "comfyhost/setup.sh" in ci and "$HOME/.cache/" in ci
    assert "export COMFYUI_PATH=" in ci and "TERNARYFLUX_REQUIRE_COMFYUI=1" in ci
    assert ci.rstrip().splitlines()[-2].strip() == "python -m pytest -q"


def test_integration_suite_fails_instead_of_skipping_when_ci_requires_the_host(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFYUI_PYTHON")}
    env["TERNARYFLUX_REQUIRE_COMFYUI"] = "1"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/comfyui/test_comfyui_integration.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "TERNARYFLUX_REQUIRE_COMFYUI" in r.stdout, r.stdout[-2000:]
