"""Shared test setup. Tests import the package as ``ternaryflux`` (``pip install -e .``).

When the installed ``ternaryflux`` is another checkout (an editable install made from a different
git worktree), the tests import *this* checkout instead: a folder holding one link
``ternaryflux -> this checkout`` goes first on ``sys.path`` and on ``PYTHONPATH`` (so subprocesses,
``python -m ternaryflux`` and torchrun workers, import it too)."""

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

# Triton reads this when kernels are decorated: set before any kernel module is imported, so
# the Triton kernels run on CPU tensors through the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parents[1]


def _use_this_checkout() -> None:
    spec = importlib.util.find_spec("ternaryflux")
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == ROOT:
        return
    tag = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    shim = Path(tempfile.gettempdir()) / f"ternaryflux-checkout-{tag}"
    link = shim / "ternaryflux"
    shim.mkdir(exist_ok=True)
    if not link.is_symlink() or link.resolve() != ROOT:
        tmp = shim / f".link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(ROOT, target_is_directory=True)
        os.replace(tmp, link)
    sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    for name in [m for m in sys.modules if m == "ternaryflux" or m.startswith("ternaryflux.")]:
        del sys.modules[name]


_use_this_checkout()
