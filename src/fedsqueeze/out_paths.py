"""Checks of output paths (``--out``, ``--json``, ``--plot``) made before any work starts.

A command that writes its results only at the end (a run, a sweep, a training) must not find out after minutes
of work, or after the model loaded, that its output folder is a file. These checks touch nothing on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_out_dir", "check_out_file"]


def _first_existing(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return None


def _check_ancestors(path: Path, flag: str, what: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we may write in."""
    found = _first_existing(path)
    if found is None or found == path:
        return
    if not found.is_dir():
        raise ConfigError(
            f"{flag} {path}: {found} is a file, so it cannot hold {what}; choose another {flag}"
        )
    if not os.access(found, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to create {what} in {found}; choose another {flag}")


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is, or can be created as, a writable folder.

    Raises
    ------
    ConfigError
        ``path`` or one of its parents is an existing file, or its nearest existing parent is not
        writable. The message names ``flag`` (the option that gave the path).
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise ConfigError(
            f"{flag} {path} is a file, not a folder; choose a folder path (it is created if missing)"
        )
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to write in this folder; choose another {flag}")
    _check_ancestors(path, flag, "a folder")
    return path


def check_out_file(path: str | Path, flag: str = "--out", *, example: str = "out.json") -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file can be written there (an existing file is replaced).

    ``example`` is the file name the message suggests inside a folder given by mistake.

    Raises
    ------
    ConfigError
        ``path`` is an existing folder, one of its parents is a file, or its nearest existing parent is not
        writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path, e.g. {path / example}")
    _check_ancestors(path, flag, "a file")
    return path
