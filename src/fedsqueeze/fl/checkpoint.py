"""Atomic files (temp file + ``os.replace``): checkpoints (``torch.save``), JSON, JSON lines, safetensors.

A checkpoint file is the ``torch.save`` bytes followed by a 48-byte trailer: ``CHECKSUM_MAGIC`` and the
SHA-256 of those bytes. :func:`load_checkpoint` checks it, so a truncated, overwritten or bit-flipped file is
refused with a message instead of resuming with other numbers. Files from before the trailer existed load
unchecked (logged).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, UsageError
from ..strict_json import finite_or_none

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKSUM_MAGIC",
    "append_jsonl",
    "atomic_write",
    "load_checkpoint",
    "pack_state",
    "save_captures",
    "save_checkpoint",
    "unpack_state",
    "write_json",
    "write_jsonl",
]

CHECKPOINT_NAME = "checkpoint/state.pt"
CHECKSUM_MAGIC = b"FSQ-CKPT-SHA256\x00"  # 16 bytes, then the 32-byte digest, at the end of state.pt
_TRAILER = len(CHECKSUM_MAGIC) + 32
_CHUNK = 1 << 20
log = logging.getLogger(__name__)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
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


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(finite_or_none(obj), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(finite_or_none(r)) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line (the whole file is rewritten from the checkpoint on resume)."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(finite_or_none(row)) + "\n")


_NPY = "__npy__"


def pack_state(obj: Any) -> Any:
    """``obj`` (a state dict) with NumPy values as ``.npy`` bytes: loadable with ``weights_only=True``."""
    # NumPy values (e.g. in codec state) become .npy bytes, so the file loads with weights_only=True
    # (no pickle code execution) and comes back with the exact dtype and value.
    if isinstance(obj, np.ndarray | np.generic):
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            raise UsageError("cannot checkpoint a NumPy object array")
        buf = io.BytesIO()
        np.save(buf, np.asarray(obj), allow_pickle=False)
        return {_NPY: buf.getvalue(), "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        return {k: pack_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(pack_state(v) for v in obj)
    return obj


def unpack_state(obj: Any) -> Any:
    """The inverse of :func:`pack_state`."""
    if isinstance(obj, dict):
        if _NPY in obj and set(obj) == {_NPY, "scalar"}:
            arr = np.load(io.BytesIO(obj[_NPY]), allow_pickle=False)
            return arr[()] if obj["scalar"] else arr
        return {k: unpack_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(unpack_state(v) for v in obj)
    return obj


def _save_with_checksum(obj: Any, tmp: str) -> None:
    torch.save(obj, tmp)
    h = hashlib.sha256()
    with open(tmp, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    with open(tmp, "ab") as fh:
        fh.write(CHECKSUM_MAGIC + h.digest())


def save_checkpoint(out_dir: Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (tensors, bytes, plain Python and NumPy values) to ``out_dir/checkpoint/state.pt``
    atomically, with its SHA-256 (see the module docstring)."""
    path = out_dir / CHECKPOINT_NAME
    packed = pack_state(dict(state))
    atomic_write(path, lambda tmp: _save_with_checksum(packed, tmp))
    return path


def _damaged(path: Path, why: str) -> ConfigError:
    run = path.parent.parent
    return ConfigError(
        f"checkpoint {path} is damaged ({why}); start fresh with another --out, or delete {path.parent} "
        f"to run into {run} again without --resume"
    )


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of ``out_dir``, or ``None`` when there is none (loaded with ``weights_only=True``).

    Raises
    ------
    ConfigError
        The file is empty, truncated, not a checkpoint or fails its checksum; the message says how to go on.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data:
        raise _damaged(path, "empty file")
    body = memoryview(data)
    if len(data) >= _TRAILER and data[-_TRAILER:-32] == CHECKSUM_MAGIC:
        body = body[:-_TRAILER]
        if hashlib.sha256(body).digest() != data[-32:]:
            raise _damaged(
                path, "its SHA-256 does not match: the file was changed or corrupted after writing"
            )
    else:
        log.info("checkpoint %s has no checksum (written by an older fedsqueeze); loading it unchecked", path)
    try:
        state = torch.load(io.BytesIO(body), weights_only=True)
    except Exception as exc:  # truncated zip, garbage, a pickle with forbidden globals, ...
        raise _damaged(
            path, f"truncated or not a checkpoint: torch.load raised {type(exc).__name__}"
        ) from None
    if not isinstance(state, dict):
        raise _damaged(path, f"holds a {type(state).__name__}, not a fedsqueeze checkpoint")
    return unpack_state(state)


def save_captures(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write raw client updates as safetensors named ``r{round}/c{client}/{tensor}`` (atomically): the
    format ``--capture-updates``, ``bench rd --source file:`` and TGAP share."""
    from safetensors.torch import save_file

    atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={"layout": "r{round}/c{client}/{tensor}"})
    )
