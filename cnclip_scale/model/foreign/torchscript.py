"""Tensors of a TorchScript archive (OpenAI CLIP's released ``.pt`` files), read without executing anything.

``torch.load(weights_only=True)`` refuses TorchScript archives and ``torch.jit.load`` runs the archive's code. An
archive is a zip of ``<name>/data.pkl`` (the module tree: ``__torch__.*`` objects whose attributes are tensors, sub-
modules and plain values) and ``<name>/data/<key>`` (raw storage bytes). The unpickler below allows only the few
globals such a tree uses: every ``__torch__.*`` class becomes an inert attribute record, storage types name a dtype,
and tensors are rebuilt from the raw bytes by us. Anything else in the pickle is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

__all__ = ["is_torchscript", "read_torchscript"]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _Record:
    """Stands in for a ``__torch__`` class instance: holds its attributes, runs nothing."""

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def _identity(value, *_ignored):
    return value


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): dict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_Record,), {})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not a tensor or module record")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _data_pkl(archive: zipfile.ZipFile) -> str | None:
    names = archive.namelist()
    if not any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return None
    return next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)


def is_torchscript(path: str | Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return _data_pkl(archive) is not None
    except (zipfile.BadZipFile, OSError):
        return False


def read_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archived module tree, keyed by its dotted path (``visual.conv1.weight``)."""
    with zipfile.ZipFile(path) as archive:
        name = _data_pkl(archive)
        if name is None:
            raise ValueError(f"{path}: not a TorchScript archive (no constants.pkl/code/)")
        prefix = name[: -len("data.pkl")]
        root = _Unpickler(archive.read(name), archive, prefix).load()
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def walk(obj, key: str) -> None:
        if isinstance(obj, torch.Tensor):
            out[key] = obj
        elif isinstance(obj, _Record) and id(obj) not in seen:
            seen.add(id(obj))
            walk(getattr(obj, "state", None), key)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(k, str):
                    walk(v, f"{key}.{k}" if key else k)

    walk(root, "")
    return out
