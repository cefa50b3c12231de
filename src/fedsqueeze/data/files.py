"""Your own data as columns: a file, a folder of files or ``hf:NAME[:CONFIG]``, read with ``datasets``.

:func:`check_source` runs when a config is made and imports nothing; :func:`read_table` imports ``datasets``
lazily (the ``fedsqueeze[data]`` extra). Every failure is a one-line :class:`~fedsqueeze.ConfigError` that
names the file and what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._extras import require
from ..errors import ConfigError
from ..offline import OPT_OUT_VAR, offline_requested

__all__ = ["FORMATS", "HF_PREFIX", "Table", "check_source", "data_files", "is_hub", "read_table"]

#: File suffix -> the ``datasets`` builder that reads it (``load_dataset(builder, data_files=...)``).
FORMATS: dict[str, str] = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
#: Prefix of a Hugging Face hub dataset: ``hf:NAME`` or ``hf:NAME:CONFIG``.
HF_PREFIX = "hf:"
_SUFFIXES = "/".join(FORMATS)


@dataclass(frozen=True)
class Table:
    """One split of a dataset as Arrow columns.

    Attributes
    ----------
    source
        What ``data.*`` named (a path, or ``hf:NAME[:CONFIG]`` with the split), for messages.
    columns
        Column name -> ``pyarrow.ChunkedArray``, in file order.
    class_names
        Columns that ``datasets`` knows as class labels (``ClassLabel``) -> their names in id order.
    """

    source: str
    columns: dict[str, Any]
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def column(self, name: str, key: str) -> Any:
        """The column ``name``; :class:`~fedsqueeze.ConfigError` listing the columns there are if absent."""
        if name not in self.columns:
            raise ConfigError(
                f"{key} = {name!r} is not a column of {self.source}; it has: {', '.join(self.columns)}"
            )
        return self.columns[name]


def is_hub(value: str) -> bool:
    """Whether ``value`` names a Hugging Face hub dataset (``hf:NAME[:CONFIG]``)."""
    return value.startswith(HF_PREFIX)


def _hub_parts(value: str, key: str) -> tuple[str, str | None]:
    name, _, config = value[len(HF_PREFIX) :].partition(":")
    if not name.strip():
        raise ConfigError(f"{key} = {value!r} names no dataset; write hf:NAME or hf:NAME:CONFIG")
    return name, config or None


def data_files(path: Path, key: str) -> tuple[str, list[str]]:
    """The ``datasets`` builder and the files of ``path`` (a file, or a folder's files of one format).

    A folder's files are its own (not its subfolders'), hidden ones skipped, in sorted order.
    """
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix in FORMATS and not p.name.startswith(".")
        )
        if not files:
            raise ConfigError(f"{key}: folder {str(path)!r} has no {_SUFFIXES} files")
        builders = sorted({FORMATS[p.suffix] for p in files})
        if len(builders) > 1:
            raise ConfigError(
                f"{key}: folder {str(path)!r} mixes {' and '.join(builders)} files; keep one format there"
            )
        return builders[0], [str(p) for p in files]
    if path.suffix not in FORMATS:
        raise ConfigError(
            f"{key}: unsupported format {path.suffix or '(no suffix)'!r} of {str(path)!r}; use {_SUFFIXES}"
        )
    if not path.is_file():
        raise ConfigError(f"{key}: file {str(path)!r} does not exist")
    return FORMATS[path.suffix], [str(path)]


def check_source(value: str, key: str) -> None:
    """Config-time check of a data source: an existing file or folder of a supported format, or ``hf:NAME``.

    Imports nothing; whether the contents can be read is found out by :func:`read_table`.
    """
    if is_hub(value):
        _hub_parts(value, key)
        return
    path = Path(value)
    if path.exists() or path.suffix in FORMATS:
        data_files(path, key)
        return
    raise ConfigError(
        f"{key} = {value!r} is neither a built-in dataset, an existing {_SUFFIXES} file or folder, "
        "nor hf:NAME[:CONFIG]"
    )


def _reason(exc: BaseException) -> str:
    # ``datasets`` wraps the real cause ("JSON parse error ... in row 3") in generic errors: report the root.
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    # No progress bars or "Failed to load ..." log lines: a failure becomes our own one-line error instead.
    bars, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def read_table(value: str, key: str, *, split: str = "train") -> Table:
    """Read a data source (see :func:`check_source`) into a :class:`Table`.

    Parameters
    ----------
    value
        A ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, a folder of such files, or
        ``hf:NAME[:CONFIG]`` (only with ``FEDSQUEEZE_OFFLINE=0``: fedsqueeze keeps the hub off otherwise).
    key
        The config key that named it (``data.dataset``, ``data.test_dataset``), for messages.
    split
        The split of an ``hf:`` dataset (files have one split).

    Raises
    ------
    ConfigError
        A missing or unreadable file, an unsupported format, an empty dataset, the hub while offline.
    MissingExtraError
        ``datasets`` is not installed (``pip install 'fedsqueeze[data]'``).
    """
    if is_hub(value):
        name, config = _hub_parts(value, key)
        if offline_requested():
            raise ConfigError(
                f"{key} = {value!r} needs the Hugging Face hub, which fedsqueeze keeps offline: "
                f"set {OPT_OUT_VAR}=0 to allow it, or use a local file"
            )
        args: tuple[Any, ...] = (name, config)
        kwargs: dict[str, Any] = {"split": split}
        source = f"{value} (split {split!r})"
    else:
        builder, files = data_files(Path(value), key)
        if all(Path(f).stat().st_size == 0 for f in files):
            raise ConfigError(f"{key}: {value!r} is empty; it needs at least one row")
        args, kwargs, source = (builder,), {"data_files": files, "split": "train"}, repr(value)
    datasets = require("datasets", "data", "your own data files")
    with _quiet(datasets):
        try:
            ds = datasets.load_dataset(*args, **kwargs)
        except Exception as exc:  # any reader failure (Arrow, JSON, CSV, hub) becomes one line naming it
            reason = _reason(exc)
            if "corresponds to no data" in reason:  # datasets' words for a split of zero rows (a bare header)
                raise ConfigError(f"{key}: {source} has no rows") from None
            raise ConfigError(f"{key}: cannot read {source}: {reason}") from None
    arrow = ds.data
    columns = {name: arrow.column(name) for name in ds.column_names}
    if not columns or ds.num_rows == 0:
        raise ConfigError(f"{key}: {source} has no rows")
    classes = {
        name: tuple(feature.names)
        for name, feature in ds.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    return Table(source, columns, classes)
