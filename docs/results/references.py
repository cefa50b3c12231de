"""Write ``src/fedsqueeze/configs/references.json``: the recorded benchmark tasks a run is compared with.

For each benchmark task below it reads the study's ``results.json`` (the columns' final metrics per seed and
their traffic) and one finished cell's ``summary.json`` per column (its resolved config). A run whose config
equals the task's except for the codec, the downlink, the seed and the target reports the dense column (and
its own column, if recorded) in ``summary.json`` → ``reference`` (``fedsqueeze.fl.reference``)::

    python docs/results/references.py          # after a study's cells land and its results are aggregated

``tests/test_reference.py`` fails when the packaged file disagrees with what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedsqueeze.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "src" / "fedsqueeze" / "configs" / "references.json"
STRIP = {"fl": ("seed", "target_metric")}  # keys a compared run may change (besides codec and downlink)

# (study folder under docs/results, task, partition, dense column, the command that makes its cells)
TASKS = (
    (
        "lora-bench",
        "minilm-rt-lora-adamw",
        "iid",
        "identity",
        "fedsqueeze study lora-bench --only 'minilm-rt-lora-adamw/iid/*'",
    ),
    (
        "smollm2-bench",
        "smollm2-rt-verbalizer",
        "iid",
        "identity",
        "fedsqueeze study smollm2-bench --only 'smollm2-rt-verbalizer/iid/*'",
    ),
)


def _mean(stat: dict | None) -> float | None:
    return None if not stat or not stat.get("n") else stat["mean"]


def _task_config(cfg: dict, *, codecs: bool = True) -> dict:
    """A cell's config without the keys a compared run may change (without the codecs if not ``codecs``)."""
    drop = {**STRIP, **({} if codecs else {"codec": None, "downlink": None})}
    return {
        s: {k: v for k, v in t.items() if k not in (drop.get(s) or ())}
        for s, t in cfg.items()
        if not (s in drop and drop[s] is None)
    }


def _changes(task: dict, cell: dict) -> dict:
    """``section.key -> value`` of ``cell`` wherever it differs from ``task``."""
    return {
        f"{s}.{k}": v
        for s in sorted(set(task) | set(cell))
        for k, v in sorted((cell.get(s) or {}).items())
        if (task.get(s) or {}).get(k) != v
    }


def _cell_config(folder: Path, seeds: dict) -> dict | None:
    """A finished cell's full config (keys its file lacks filled as when it was made), as JSON values."""
    for seed in sorted(seeds):
        path = folder / f"seed{seed}" / "summary.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))["config"]
            return json.loads(json.dumps(RunConfig.from_saved(saved).to_dict(), default=str))
    return None


def task_record(study: str, task: str, partition: str, dense: str, command: str, root: Path = ROOT) -> dict:
    """One task's record: its config (from the dense column's cell) and every column with a finished seed."""
    base = root / "docs" / "results" / study
    results = json.loads((base / "results.json").read_text(encoding="utf-8"))
    group = next(g for g in results["groups"] if g["task"] == task and g["partition"] == partition)
    cells, columns, config = [], [], None
    for col in group["codecs"]:
        stat = col["final_metric"]
        if not stat or not stat.get("n"):
            continue
        cfg = _cell_config(base / task / partition / col["codec"], col["per_seed"])
        if cfg is None:
            continue
        if col["codec"] == dense:
            config = _task_config(cfg)
        cells.append((col, cfg))
    if config is None:
        raise SystemExit(f"{study} {task}/{partition}: no finished cell of the dense column {dense!r}")
    for col, cfg in cells:
        # keys outside the codecs where this column's recipe differs from the task's (e.g. the downlink's
        # catch-up, FFA-LoRA's model.lora_train, a schedule): empty for the task's own codec columns
        changes = _changes(_task_config(config, codecs=False), _task_config(cfg, codecs=False))
        stat = col["final_metric"]
        columns.append(
            {
                "label": col["codec"],
                "codec": cfg["codec"],
                "downlink": cfg["downlink"],
                **({"changes": changes} if changes else {}),
                "final_metric": {"mean": stat["mean"], "std": stat["std"], "n": stat["n"]},
                "per_seed": {s: v["final"] for s, v in sorted(col["per_seed"].items())},
                "uplink_mb": _mean(col["uplink_mb"]),
                "downlink_mb": _mean(col["downlink_mb"]),
                "total_mb": _mean(col["total_mb"]),
            }
        )
    return {
        "study": study,
        "task": task,
        "partition": partition,
        "command": command,
        "machine": results.get("machine"),
        "metric_name": group["metric_name"],
        "dense": dense,
        "config": config,
        "columns": columns,
    }


def build(root: Path = ROOT) -> dict:
    """The whole ``references.json`` document."""
    return {
        "generated_by": "python docs/results/references.py",
        "tasks": [task_record(*t, root=root) for t in TASKS],
    }


def render(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build()), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
