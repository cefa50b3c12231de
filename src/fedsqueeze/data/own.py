"""Your own data as a :class:`~fedsqueeze.data.sources.RawDataset`: the ``data.*_field`` column mapping.

Three mappings, chosen by which keys are set:

- ``data.text_field`` + ``data.label_field``: classification. Labels may be strings or numbers; the label
  names are the sorted distinct values as strings (numbers keep their numeric order).
- ``data.prompt_field`` + ``data.response_field``: instruction tuning, the loss on the response only.
- neither, with a ``messages`` column (a list of ``{"role", "content"}`` per row): instruction tuning of
  chats; the last assistant message is the response, the turns before it the prompt.

``data.test_dataset`` (a file or folder, ``hf:NAME[:CONFIG]`` for its ``test`` split, or a split name of
the ``hf:`` dataset) is appended as the last rows and
marked as the held-out set (:attr:`RawDataset.test_rows`); ``data.group_field`` gives the values a
Dirichlet partition skews. :func:`fedsqueeze.config.data.check_data_config` is the config-time half (no
file is read).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config.data import DataConfig, mapping_kind
from ..errors import ConfigError
from .files import FORMATS, Table, is_hub, read_table
from .sources import BUILTIN_DATASETS, RawDataset

__all__ = ["CHAT_COLUMN", "load_data"]

CHAT_COLUMN = "messages"


# -- reading and mapping -----------------------------------------------------------------------------------
def _read_test(data: DataConfig) -> Table | None:
    test = data.test_dataset
    if test is None:
        return None
    if is_hub(data.dataset) and not (Path(test).exists() or Path(test).suffix in FORMATS or is_hub(test)):
        return read_table(data.dataset, "data.test_dataset", split=test)  # a split of the same hub dataset
    return read_table(test, "data.test_dataset", split="test")  # the split only matters for hf:


def _no_nulls(col: Any, key: str, source: str) -> None:
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError(f"{key}: {col.null_count} empty values in {source} (the first in row {first})")


def _strings(table: Table, key: str, name: str) -> tuple[str, ...]:
    col = table.column(name, key)
    _no_nulls(col, key, table.source)
    return tuple(map(str, col.to_pylist()))


def _label_values(table: Table, key: str, name: str) -> np.ndarray:
    """The label column as an array whose sort order is the label order (numbers numeric, else text)."""
    col = table.column(name, key)
    _no_nulls(col, key, table.source)
    values = col.to_pylist()
    if name in table.class_names:  # a ``ClassLabel``: its own names, in id order
        names = np.asarray(table.class_names[name])
        return names[np.asarray(values, dtype=np.int64)]
    arr = np.asarray(values)
    return arr if arr.dtype.kind in "iuf" else arr.astype(str)


def _encode_labels(
    train: np.ndarray, test: np.ndarray | None, key: str, source: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    uniq, codes = np.unique(train, return_inverse=True)
    names = uniq.astype(str)
    if len(uniq) < 2:
        raise ConfigError(
            f"{key}: {source} has one class ({str(names[0])!r}); classification needs two or more"
        )
    if test is None:
        return codes, tuple(names.tolist())
    order = np.argsort(names)
    wanted = test.astype(str)
    pos = np.minimum(np.searchsorted(names[order], wanted), len(names) - 1)
    unknown = names[order][pos] != wanted
    if unknown.any():
        raise ConfigError(
            f"data.test_dataset has labels the training data lacks: {', '.join(sorted(set(wanted[unknown])))}"
        )
    return np.concatenate([codes, order[pos]]), tuple(names.tolist())


def _both(a: str | None, b: str | None) -> tuple[str, str]:
    """The two columns of the mapping :func:`~fedsqueeze.config.data.mapping_kind` chose (it chooses one
    only when both are set)."""
    if a is None or b is None:
        raise ConfigError(
            "a column mapping needs both of its fields (data.text_field + data.label_field, or "
            "data.prompt_field + data.response_field)"
        )
    return a, b


def _classification(data: DataConfig, train: Table, test: Table | None) -> dict[str, Any]:
    text_key, label_key = "data.text_field", "data.label_field"
    text_field, label_field = _both(data.text_field, data.label_field)
    texts = _strings(train, text_key, text_field)
    values = _label_values(train, label_key, label_field)
    test_values = None
    if test is not None:
        texts += _strings(test, text_key, text_field)
        test_values = _label_values(test, label_key, label_field)
    labels, names = _encode_labels(values, test_values, label_key, train.source)
    return {"texts": texts, "labels": tuple(labels.tolist()), "label_names": names, "kind": "classification"}


def _instruction(data: DataConfig, train: Table, test: Table | None) -> dict[str, Any]:
    tables = [train] if test is None else [train, test]
    prompt_field, response_field = _both(data.prompt_field, data.response_field)
    prompts = sum((_strings(t, "data.prompt_field", prompt_field) for t in tables), ())
    answers = sum((_strings(t, "data.response_field", response_field) for t in tables), ())
    return {"texts": prompts, "answers": answers, "kind": "sft"}


def _turns(row: Any, i: int, source: str) -> tuple[tuple[str, str], ...]:
    """One chat up to and including its last assistant message, as ``(role, content)`` pairs."""
    if not isinstance(row, list) or not row:
        raise ConfigError(f"{CHAT_COLUMN!r} in row {i} of {source} is not a list of messages")
    turns = []
    for m in row:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ConfigError(
                f"{CHAT_COLUMN!r} in row {i} of {source}: each message needs a 'role' and a 'content' string"
            )
        turns.append((m["role"], m["content"]))
    roles = [r for r, _ in turns]
    if "assistant" not in roles:
        raise ConfigError(f"{CHAT_COLUMN!r} in row {i} of {source} has no assistant message (the response)")
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if last == 0:
        raise ConfigError(f"{CHAT_COLUMN!r} in row {i} of {source} has no message before the assistant's")
    return tuple(turns[: last + 1])


def _chat(data: DataConfig, train: Table, test: Table | None) -> dict[str, Any]:
    chats: list[tuple[tuple[str, str], ...]] = []
    for table in [train] if test is None else [train, test]:
        col = table.column(CHAT_COLUMN, "data.dataset")
        _no_nulls(col, f"column {CHAT_COLUMN!r}", table.source)
        chats += [_turns(row, i, table.source) for i, row in enumerate(col.to_pylist())]
    return {"texts": (), "messages": tuple(chats), "kind": "sft"}


_MAPPERS: dict[str, Callable[[Any, Table, Table | None], dict[str, Any]]] = {
    "classification": _classification,
    "sft": _instruction,
    "chat": _chat,
}


def _choose(data: DataConfig, table: Table) -> str:
    kind = mapping_kind(data)
    if kind is not None:
        return kind
    if CHAT_COLUMN in table.columns:
        return "chat"
    raise ConfigError(
        f"say which columns of {table.source} to use: data.text_field + data.label_field (classification), "
        f"data.prompt_field + data.response_field (instruction tuning), or a {CHAT_COLUMN!r} chat column; "
        f"it has: {', '.join(table.columns)}"
    )


def load_data(data: DataConfig) -> RawDataset:
    """The dataset ``data`` names: a built-in one from its registry, or your own file / folder / ``hf:`` data.

    Your own data's held-out rows (``data.test_dataset``) come last, counted by :attr:`RawDataset.test_rows`.

    Raises
    ------
    ConfigError
        A missing column (the message lists the columns there are), empty values, one class only, a chat
        row without an assistant message, and everything :func:`~fedsqueeze.data.files.read_table` refuses.
    """
    entry = BUILTIN_DATASETS.get(data.dataset)
    if entry is not None:
        return entry.loader()
    train = read_table(data.dataset, "data.dataset")
    test = _read_test(data)
    fields = _MAPPERS[_choose(data, train)](data, train, test)
    if data.group_field is not None:
        tables = [train] if test is None else [train, test]
        fields["groups"] = sum((_strings(t, "data.group_field", data.group_field) for t in tables), ())
    return RawDataset(
        data.dataset,
        labels=fields.pop("labels", None),
        test_rows=0 if test is None else test.num_rows,
        **fields,
    )
