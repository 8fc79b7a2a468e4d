"""The module import graph of the ``ternaryflux`` package: no cycles, and the layers hold.

Read from the source (``ast``), so imports inside functions count too:
* no cycle between ``ternaryflux`` modules;
* the library (``core``, ``kernels``, ``quant``, ``proxy`` where present) imports neither
  ``argparse`` nor ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``nodes``);
* ``kernels`` takes from ``core`` only the packing layout (``core.packing``);
* nothing below the front ends imports them (``quantize_tool`` = CLI, ``nodes`` = ComfyUI).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "kernels", "quant", "proxy", "quantize_tool", "nodes")
LIBRARY = ("core", "kernels", "quant", "proxy")
FRONT_ENDS = ("quantize_tool", "nodes")
FORBIDDEN_IN_LIBRARY = ("argparse", "comfy", "comfy_api", "folder_paths", "comfy_extras")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            out[_module_name(p)] = p
    out["version"] = ROOT / "version.py"
    return out


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(internal modules imported, external top-level names imported) by module ``name``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    internal, external = set(), set()

    def add_internal(mod: str, names: list[str]) -> None:
        subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in known]  # `from .pkg import module`
        internal.update(subs)
        if mod in known and (len(subs) < len(names) or not names):  # names defined in mod itself
            internal.add(mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top == "ternaryflux":
                    add_internal(a.name.removeprefix("ternaryflux").lstrip("."), [])
                else:
                    external.add(top)
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                up = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(up + ([node.module] if node.module else []))
                add_internal(mod, names)
            elif node.module and node.module.split(".")[0] == "ternaryflux":
                add_internal(node.module.removeprefix("ternaryflux").lstrip("."), names)
            elif node.module:
                external.add(node.module.split(".")[0])
    internal.discard(name)
    return internal, external


def _graph():
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_source():
    g = _graph()
    assert "quant.flux" in g and "core.checkpoint" in g["quant.flux"][0]
    assert "argparse" in g["quantize_tool.cli"][1] and "comfy" in g["nodes.ops"][1]


def test_cycle_detector_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    edges = {m: internal for m, (internal, _) in _graph().items()}
    assert _cycles(edges) == []


def test_library_knows_neither_argparse_nor_comfyui():
    bad = {
        m: sorted(ext & set(FORBIDDEN_IN_LIBRARY))
        for m, (internal, ext) in _graph().items()
        if m.split(".")[0] in LIBRARY and ext & set(FORBIDDEN_IN_LIBRARY)
    }
    assert bad == {}


def test_layers():
    g = _graph()
    for m, (internal, _) in g.items():
        top = m.split(".")[0]
        if top in LIBRARY:
            assert not [i for i in internal if i.split(".")[0] in FRONT_ENDS], f"{m} imports a front end"
        if top == "kernels":
            from_core = {i for i in internal if i.startswith("core")}
            assert from_core <= {"core", "core.packing"}, f"{m} imports {from_core}"
        if top == "quantize_tool":
            assert not [i for i in internal if i.startswith("nodes")], f"{m} imports the nodes"
