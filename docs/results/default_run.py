"""The default run's recorded figures, generated into the pages that state them.

The default config (``fedsqueeze run`` with no arguments) is one column of a benchmark task; its recorded
cells, and the task's dense fp32 column, are in ``src/fedsqueeze/configs/references.json``
(``docs/results/references.py``). This prints the table the README, ``docs/getting-started.md`` and
``docs/default-run.md`` show between ``<!-- default-run -->`` markers, the default's task's columns by total
MB, and those of every other recorded task (``docs/results.md``); ``--write`` puts them there::

    python docs/results/default_run.py --write

``tests/test_reference.py`` fails when a page's table differs from what this prints.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from fedsqueeze.config import load_config
from fedsqueeze.fl.reference import load_references, reference_for

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/getting-started.md", "docs/default-run.md")
START, END = "<!-- default-run -->\n", "<!-- /default-run -->"
CHOICES_PAGE = "docs/default-run.md"
CHOICES = ("<!-- default-run-choices -->\n", "<!-- /default-run-choices -->")
OTHER_PAGE = "docs/results.md"  # the other recorded tasks' columns by total MB (other_markers)


def _describe(codec: dict) -> str:
    name, options = codec["name"], codec.get("options") or {}
    if name == "identity":
        return "dense fp32"
    if name == "predictive":
        inner = {"name": options.get("inner", "?"), "options": options.get("inner_options") or {}}
        return f"predictive {_describe(inner)}"
    rate = options.get("rate")
    return f"{name} at {rate:g} bits/param" if rate is not None else name


# How a column's recipe changes read (``changes`` in references.json); anything else reads ``key = value``.
CHANGES = {
    ("fl.downlink_catch_up", "reencode"): "one re-encoded catch-up frame",
    ("fl.downlink_catch_up_rate", "by_staleness"): "its rate by staleness",
    ("model.lora_train", "b"): "FFA-LoRA (A frozen, only B trained and sent)",
}


def _changes(changes: dict) -> list[str]:
    rest = dict(changes)
    out = [CHANGES[k, rest.pop(k)] for k, v in changes.items() if isinstance(v, str) and (k, v) in CHANGES]
    if "fl.rounds" in rest and "train.max_steps" in rest:
        out.append(f"{rest.pop('fl.rounds')} rounds × {rest.pop('train.max_steps')} local steps")
    if "fl.clients_per_round" in rest:
        steps = rest.pop("train.max_steps", None)
        per = f" × {steps} local steps" if steps is not None else ""
        out.append(f"{rest.pop('fl.clients_per_round')} clients a round{per}")
    if "model.lora_r" in rest:  # lora_alpha moves with it (alpha = 2 r keeps the LoRA scaling)
        rest.pop("model.lora_alpha", None)
        out.append(f"LoRA rank {rest.pop('model.lora_r')}")
    rest.pop("fl.uplink_rates", None)  # in the uplink's own description (_label)
    return out + [f"{k} = {v}" for k, v in rest.items()]


def _label(col: dict) -> str:
    changes = col.get("changes", {})
    extra = "".join(f"; {c}" for c in _changes(changes))
    up = _describe(col["codec"])
    if changes.get("fl.uplink_rates"):
        rates = ", ".join(f"{r:g}" for r in changes["fl.uplink_rates"])
        up = f"{col['codec']['name']} at {rates} bits/param over the rounds (the last from then on)"
    return f"{up} up, {_describe(col['downlink'])} down{extra}"


def _paired(col: dict, dense: dict) -> tuple[list[str], float, str]:
    """The seeds ``col`` shares with ``dense``, its seed-paired mean difference from it in points, and the
    ``" ± std"`` of those differences (empty for one seed)."""
    seeds = sorted(set(dense["per_seed"]) & set(col["per_seed"]), key=int)
    diffs = [100 * (col["per_seed"][s] - dense["per_seed"][s]) for s in seeds]
    spread = f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
    return seeds, sum(diffs) / len(diffs), spread


def table() -> str:
    ref = reference_for(load_config())
    if ref is None or ref["same_config"] is None:
        raise SystemExit("the default config is not a recorded column of a benchmark task (references.json)")
    dense, mine = ref["dense"], ref["same_config"]
    seeds, mean, spread = _paired(mine, dense)

    def row(label: str, col: dict) -> str:
        m = col["final_metric"]
        ratio = dense["total_mb"] / col["total_mb"]
        return (
            f"| {label} | {m['mean']:.3f} ± {m['std']:.3f} | {col['uplink_mb']:.2f} MB | "
            f"{col['downlink_mb']:.2f} MB | {col['total_mb']:.2f} MB | {ratio:.1f}× |"
        )

    return "\n".join(
        [
            f"| run ({ref['task']}, {ref['partition']}) | final {ref['metric_name']}, mean ± std over "
            f"{len(seeds)} seeds | uplink | downlink | total | less than dense fp32 |",
            "|---|---|---|---|---|---|",
            row(f"`make run`: {_label(mine)}", mine),
            row("dense fp32 both ways", dense),
            "",
            f"Seed-paired, the default run ends {mean:+.1f}{spread} points from dense fp32 "
            f"(seeds {', '.join(seeds)}). Recorded on a 2-core CPU by `{ref['command']}` "
            f"(`python docs/results/default_run.py --write` rewrites this table).",
        ]
    )


def choices(task: dict | None = None) -> str:
    """Every recorded column of ``task`` (a record of references.json; default: the default's task) by
    total MB, with its seed-paired distance from the task's dense column. The default's own column (its
    label in the default's task) is marked."""
    ref = reference_for(load_config())
    if ref is None or ref["same_config"] is None:
        raise SystemExit("the default config is not a recorded benchmark task (references.json)")
    task = task if task is not None else default_task(ref)
    dense = next(c for c in task["columns"] if c["label"] == task["dense"])
    lines = [
        "| column | uplink, downlink | seeds | final (mean ± std) | − dense, seed-paired (points) "
        "| total MB | less than dense fp32 | within 1 point |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for col in sorted(task["columns"], key=lambda c: c["total_mb"]):
        seeds, mean, spread = _paired(col, dense)
        m = col["final_metric"]
        std = f" ± {m['std']:.3f}" if m["n"] > 1 else ""
        # the criterion is over 3 seeds; a column within 1 point on fewer says so
        n = len(seeds)
        near = "no" if mean < -1.0 else "yes" if n >= 3 else f"on {n} seed{'s' if n > 1 else ''} only"
        default = " (default)" if col["label"] == ref["same_config"]["label"] else ""
        lines.append(
            f"| `{col['label']}`{default} | {_label(col)} | {len(seeds)} | {m['mean']:.3f}{std} | "
            f"{mean:+.1f}{spread} | {col['total_mb']:.2f} | {dense['total_mb'] / col['total_mb']:.1f}× "
            f"| {near} |"
        )
    return "\n".join(lines)


def default_task(ref: dict) -> dict:
    """The recorded task (references.json) the default config is a column of."""
    return next(t for t in load_references() if (t["study"], t["task"]) == (ref["study"], ref["task"]))


def block(text: str, markers: tuple[str, str] = (START, END)) -> str | None:
    """The text between ``markers`` in a page, or ``None`` if it has none."""
    start, end = markers
    if start not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].rstrip("\n")


def _put(page: str, markers: tuple[str, str], new: str) -> None:
    path = ROOT / page
    start, end = markers
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + start + new + "\n" + end + tail, encoding="utf-8")


def other_tasks() -> list[dict]:
    """The recorded tasks besides the default's: their tables go in :data:`OTHER_PAGE`."""
    ref = reference_for(load_config())
    assert ref is not None
    return [t for t in load_references() if (t["study"], t["task"]) != (ref["study"], ref["task"])]


def other_markers(task: dict) -> tuple[str, str]:
    """The markers of ``task``'s table of columns by total MB in :data:`OTHER_PAGE`."""
    return f"<!-- equal-accuracy {task['study']} -->\n", f"<!-- /equal-accuracy {task['study']} -->"


def write() -> None:
    new = table()
    for page in PAGES:
        _put(page, (START, END), new)
    _put(CHOICES_PAGE, CHOICES, choices())
    for task in other_tasks():
        _put(OTHER_PAGE, other_markers(task), choices(task))


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write()
    else:
        print(table() + "\n\n" + choices())
