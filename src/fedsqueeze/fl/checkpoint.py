"""Atomic files (temp file + ``os.replace``): checkpoints (``torch.save``), JSON, JSON lines, safetensors."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "append_jsonl",
    "atomic_write",
    "jsonable",
    "load_checkpoint",
    "save_captures",
    "save_checkpoint",
    "write_json",
    "write_jsonl",
]

CHECKPOINT_NAME = "checkpoint/state.pt"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))  # same folder: os.replace stays atomic
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # like a plainly created file (some writers make 0600 files)
        _fsync(tmp)  # the data is on disk before the rename makes it visible (power loss, not only kill -9)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(str(path.parent), directory=True)  # and the rename itself is durable


def _fsync(path: str, *, directory: bool = False) -> None:
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on Windows: best effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def jsonable(value: Any) -> Any:
    """Plain JSON values (non-finite floats become ``None``, tuples lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(jsonable(r)) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line (the whole file is rewritten from the checkpoint on resume)."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(jsonable(row)) + "\n")


_NPY = "__npy__"


def _pack(obj: Any) -> Any:
    # NumPy values (e.g. in codec state) become .npy bytes, so the file loads with weights_only=True
    # (no pickle code execution) and comes back with the exact dtype and value.
    if isinstance(obj, np.ndarray | np.generic):
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            raise TypeError("cannot checkpoint a NumPy object array")
        buf = io.BytesIO()
        np.save(buf, np.asarray(obj), allow_pickle=False)
        return {_NPY: buf.getvalue(), "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_pack(v) for v in obj)
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _NPY in obj and set(obj) == {_NPY, "scalar"}:
            arr = np.load(io.BytesIO(obj[_NPY]), allow_pickle=False)
            return arr[()] if obj["scalar"] else arr
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_unpack(v) for v in obj)
    return obj


def save_checkpoint(out_dir: Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (tensors, bytes, plain Python and NumPy values) to ``out_dir/checkpoint/state.pt``
    atomically."""
    path = out_dir / CHECKPOINT_NAME
    packed = _pack(dict(state))
    atomic_write(path, lambda tmp: torch.save(packed, tmp))
    return path


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of ``out_dir``, or ``None`` when there is none (loaded with ``weights_only=True``)."""
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    return _unpack(torch.load(path, weights_only=True))


def save_captures(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write raw client updates as safetensors named ``r{round}/c{client}/{tensor}`` (atomically): the
    format ``--capture-updates``, ``bench rd --source file:`` and TGAP share."""
    from safetensors.torch import save_file

    atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={"layout": "r{round}/c{client}/{tensor}"})
    )
