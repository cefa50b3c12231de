"""Recorded results a run is compared with: the benchmark task it runs, with its dense fp32 counterpart.

The packaged ``configs/references.json`` (written by ``python docs/results/references.py`` from a study's
committed cells, and checked against them by a test) holds, per benchmark task, the config of the task's
cells and the recorded final metric and traffic of each of its columns (a codec and a downlink, over the
study's seeds). A run whose config equals a task's in every key except the uplink codec, the downlink, the
seed and the target gets that task's record in ``summary.json`` (``reference``): the dense fp32 column, and
the column of the run's own codec and downlink if the study recorded it. So the default run says how far
it is from dense on its own task, from a recorded run rather than a second one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from ..config import RunConfig

__all__ = ["FREE_KEYS", "load_references", "reference_for", "reference_line"]

#: Keys a run may differ in from a recorded task and still be compared with it.
FREE_KEYS = frozenset(
    {
        "codec.name",
        "codec.options",
        "downlink.name",
        "downlink.options",
        "fl.downlink_catch_up",  # part of the downlink protocol: a column records it in its changes
        "fl.downlink_catch_up_rate",
        "fl.seed",
        "fl.uplink_rates",  # the uplink's rate schedule: part of the uplink, recorded in a column's changes
        "fl.target_metric",
    }
)
#: Of those, the keys a recorded column may set apart from its task's value (its ``changes``).
PROTOCOL_KEYS = ("fl.downlink_catch_up", "fl.downlink_catch_up_rate", "fl.uplink_rates")


@cache
def load_references() -> tuple[dict[str, Any], ...]:
    """The recorded benchmark tasks of the packaged ``configs/references.json``."""
    text = (resources.files("fedsqueeze") / "configs" / "references.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["tasks"])


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return config[section][key]


def _same(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def reference_for(config: RunConfig) -> dict[str, Any] | None:
    """The recorded task ``config`` runs (``None`` if it runs none): the ``reference`` of ``summary.json``.

    Returns
    -------
    dict or None
        ``study``, ``task``, ``partition``, ``command``, ``machine``, ``metric_name``, ``dense`` (the dense
        fp32 column: ``label``, ``final_metric`` as ``mean``/``std``/``n``, ``per_seed`` final metrics,
        ``uplink_mb``/``downlink_mb``/``total_mb`` means) and ``same_config`` (the column with this run's
        codec and downlink, in the same form, or ``None`` if the study did not record it).
    """
    now = config.to_dict()
    for task in load_references():
        differs = set(config.differences(task["config"], except_rounds=False))
        if not differs <= FREE_KEYS:
            continue
        protocol = {k: _get(now, k) for k in PROTOCOL_KEYS if k in differs}
        columns = task["columns"]
        dense = next(c for c in columns if c["label"] == task["dense"])
        same = next(
            (
                c
                for c in columns
                if _same(c["codec"], now["codec"])
                and _same(c["downlink"], now["downlink"])
                and _same(c.get("changes", {}), protocol)
            ),
            None,
        )
        meta = {k: task[k] for k in ("study", "task", "partition", "command", "machine", "metric_name")}
        return {**meta, "dense": dense, "same_config": same}
    return None


def _stat(column: Mapping[str, Any]) -> str:
    m = column["final_metric"]
    spread = f" ± {m['std']:.3f}" if m.get("std") is not None and m["n"] > 1 else ""
    seeds = f"{m['n']} seed{'s' if m['n'] != 1 else ''}"
    return f"{m['mean']:.3f}{spread} ({seeds}) at {column['total_mb']:.2f} MB"


def reference_line(summary: Mapping[str, Any]) -> str | None:
    """One line comparing a run with its recorded task (``summary["reference"]``), or ``None``."""
    ref = summary.get("reference")
    if not ref:
        return None
    where = f"{ref['study']} {ref['task']}/{ref['partition']}"
    parts = [f"dense fp32 {_stat(ref['dense'])}"]
    if ref.get("same_config"):
        parts.append(f"this codec and downlink {_stat(ref['same_config'])}")
    seed = str(summary.get("seed"))
    dense_seed = ref["dense"]["per_seed"].get(seed)
    if dense_seed is not None:
        parts.append(f"dense with seed {seed}: {dense_seed:.3f}")
    return f"recorded on this task ({where}): " + "; ".join(parts)
