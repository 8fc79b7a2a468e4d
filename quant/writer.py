"""Where the streaming quantizer's output goes: a safetensors file or memory.

:class:`StreamingSafetensorsWriter` writes the header first (from known names/shapes/dtypes),
then each tensor's bytes in order, into a temporary file in the target folder that is renamed
over the target only when every tensor has been written. ``safetensors.torch.save_file`` needs
every tensor in memory at once; this needs one. The file is byte-compatible with safetensors
(8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, tensors
packed back to back in header order).

:class:`MemoryWriter` takes the same calls and keeps the tensors in a dict (the Ternarize FLUX
node's sink: no temporary file).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.checkpoint import publish_temp_file

DTYPE_TO_ST = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _check_next(specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], i: int, name: str, tensor) -> None:
    """Both writers take tensors in header order, with the declared dtype and shape."""
    if i >= len(specs):
        raise ValueError(f"unexpected tensor {name!r}: every tensor has been written")
    want, dt, shp = specs[i]
    if name != want:
        raise ValueError(f"tensors must be written in header order: expected {want!r}, got {name!r}")
    if tensor.dtype != dt or tuple(tensor.shape) != shp:
        raise ValueError(f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, header says {dt} {shp}")


class StreamingSafetensorsWriter:
    """Write ``specs`` = ``[(name, dtype, shape), ...]`` tensors one by one, in that order.

    Use as a context manager; on an exception (or if not every tensor was written) the temporary
    file is removed and ``path`` is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Sequence[tuple[str, torch.dtype, Sequence[int]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.specs = [(n, dt, tuple(int(s) for s in shp)) for n, dt, shp in specs]
        names = [n for n, _, _ in self.specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names")
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        off = 0
        for n, dt, shp in self.specs:
            nb = math.prod(shp) * torch.empty((), dtype=dt).element_size()
            header[n] = {"dtype": DTYPE_TO_ST[dt], "shape": list(shp), "data_offsets": [off, off + nb]}
            off += nb
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._head = struct.pack("<Q", len(raw)) + raw
        self.total_bytes = len(self._head) + off
        self._next = 0
        self.header_patches: dict[bytes, bytes] = {}
        """Same-length byte replacements applied to the header at close (e.g. a hash computed
        while the tensors were written)."""
        self._fh = None
        self._tmp: str | None = None

    def __enter__(self) -> StreamingSafetensorsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._fh = os.fdopen(fd, "wb")
        self._fh.write(self._head)
        return self

    @property
    def next_name(self) -> str | None:
        return self.specs[self._next][0] if self._next < len(self.specs) else None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._fh is None:
            raise RuntimeError("writer is not open (use it as a context manager)")
        _check_next(self.specs, self._next, name, tensor)
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            self._fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        ok = self._next == len(self.specs)
        try:
            if ok and self.header_patches:
                head = self._head
                for old, new in self.header_patches.items():
                    if len(old) != len(new) or old not in head:
                        raise ValueError(f"bad header patch {old!r} -> {new!r}")
                    head = head.replace(old, new)
                fh.seek(0)
                fh.write(head)
            fh.flush()
            if ok:
                os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            self._discard()
            raise
        fh.close()
        if not ok:
            self._discard()
            raise ValueError(f"{self.path}: only {self._next} of {len(self.specs)} tensors were written")
        publish_temp_file(self._tmp, self.path)
        self._tmp = None

    def _discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tmp:
            Path(self._tmp).unlink(missing_ok=True)
            self._tmp = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
        else:
            self.close()


class MemoryWriter:
    """The in-memory twin of :class:`StreamingSafetensorsWriter`: the same checks and order,
    the tensors end up in :attr:`tensors` and the header metadata in :attr:`metadata`."""

    def __init__(self) -> None:
        self.specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        self.metadata: dict[str, str] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.header_patches: dict[bytes, bytes] = {}
        self._next = 0
        self._open = False

    def start(
        self, specs: Sequence[tuple[str, torch.dtype, Sequence[int]]], metadata: dict[str, str] | None = None
    ) -> MemoryWriter:
        self.specs = [(n, dt, tuple(int(s) for s in shp)) for n, dt, shp in specs]
        if len({n for n, _, _ in self.specs}) != len(self.specs):
            raise ValueError("duplicate tensor names")
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.tensors, self._next = {}, 0
        return self

    @property
    def total_bytes(self) -> int:
        return sum(math.prod(shp) * torch.empty((), dtype=dt).element_size() for _, dt, shp in self.specs)

    def __enter__(self) -> MemoryWriter:
        self._open = True
        return self

    @property
    def next_name(self) -> str | None:
        return self.specs[self._next][0] if self._next < len(self.specs) else None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if not self._open:
            raise RuntimeError("writer is not open (use it as a context manager)")
        _check_next(self.specs, self._next, name, tensor)
        self.tensors[name] = tensor.detach().to("cpu").contiguous()
        self._next += 1

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._next != len(self.specs):
            self.tensors = {}
            raise ValueError(f"only {self._next} of {len(self.specs)} tensors were written")
        for old, new in self.header_patches.items():
            self.metadata = {k: v.replace(old.decode(), new.decode()) for k, v in self.metadata.items()}

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._open = False
            self.tensors = {}
        else:
            self.close()
