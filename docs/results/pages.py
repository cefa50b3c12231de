"""Write the results pages of the docs site: one page per benchmark, ``docs/bench/<page>.md``.

    python docs/results/pages.py             # rewrites docs/bench/*.md
    python docs/results/pages.py --out DIR   # writes them into DIR instead (the test compares the two)

Each page is generated from the study's committed ``docs/results/<folder>/results.json`` (the runner's
aggregate: grid, machine, groups, cells; its fields are listed in docs/study.md, "Fields of results.json"),
its ``bd_rate.json`` when there is one, the plots already in ``docs/results/<folder>/plots/``, and, for the
LoRA-carried benchmarks, the ``summary.json`` of the LoRA-frozen control runs. Nothing here imports
fedsqueeze and no figure is typed in: change the JSON (``fedsqueeze study NAME --aggregate-only --out
docs/results/<folder>``), rerun this script, commit both. A column with fewer finished seeds than the grid
says so (``n`` in its seeds column); a group with no finished cell is listed as not run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "bench"


@dataclass(frozen=True)
class Bench:
    page: str  # docs/bench/<page>.md
    folder: str  # docs/results/<folder>/
    grid: str  # src/fedsqueeze/configs/study/<grid>.toml
    title: str
    about: str  # what the benchmark is for: prose only, no figures
    # (task, folder under docs/results/, infix): LoRA-frozen controls <partition>-<infix>seed<k>/summary.json
    controls: tuple[tuple[str, str, str], ...] = ()
    lead: tuple[str, str] | None = None  # the group (task, partition) shown first: the benchmark itself


BENCHES = (
    Bench(
        "lora-bench",
        "lora-bench",
        "lora-bench",
        "lora-bench: MiniLM × rotten_tomatoes, LoRA carries the accuracy",
        'The classifier head trains in round 1 only (`model.head = "first_round"`, the FLM-TopK authors\' '
        "protocol), then stays fixed and costs no bytes, so every later point of accuracy comes through the "
        "compressed LoRA update. The benchmark is the task `minilm-rt-lora-adamw` on the `iid` partition; "
        "`minilm-rt-lora` (Adam with L2 decay, which starves magnitude sparsifiers of LoRA B) and the "
        "Dirichlet 0.5 partition are the earlier settings, kept as recorded "
        "([journal](../journal/2026-12-03-lora-bench.md)).",
        (
            ("minilm-rt-lora", "lora-gap", "frozenlora-"),
            ("minilm-rt-lora-adamw", "lora-gap", "adamw-frozenlora-"),
        ),
        ("minilm-rt-lora-adamw", "iid"),
    ),
    Bench(
        "smollm2-bench",
        "smollm2-bench",
        "smollm2-bench",
        "smollm2-bench: SmolLM2-135M by verbalizer, no head",
        "The full pretrained SmolLM2-135M (all 30 layers run) classifies rotten_tomatoes by the next token "
        "among "
        'one label word per class (`model.classifier = "verbalizer"`). There is no head at all, so every '
        "point "
        "of accuracy, from round 1 on, comes through the compressed LoRA update. On the CPU, LoRA sits on "
        "the "
        "top 8 layers and the frozen layers below run once per example (`model.lora_layers = 8`, "
        "`fedsqueeze.models.layer_cache`); the task `smollm2-rt-verbalizer-gpu` is the same grid with LoRA "
        "on "
        "every layer, for a GPU. Why this setting: [journal](../journal/2026-12-07-smollm2-bench.md).",
        (
            ("smollm2-rt-verbalizer", "smollm2-gap", "frozenlora-"),
            ("smollm2-bbc-verbalizer", "smollm2-gap", "bbc-frozenlora-"),
            ("smollm2-gsm8k-sft", "smollm2-gap", "gsm8k-frozenlora-"),
        ),
        ("smollm2-rt-verbalizer", "iid"),
    ),
    Bench(
        "downlink-default",
        "downlink-default",
        "downlink-default",
        "downlink-default: the broadcast on the skewed-head preset",
        "The `skewed-head` preset (the default run until this version) with only `[downlink]` changed, "
        "seed-paired: the "
        "columns differ in the broadcast alone, over the same FLM-TopK uplink. The baseline is the dense "
        "fp32 "
        "broadcast (`down_identity`), so the traffic ratios on this page are against that column, not "
        "against "
        "dense fp32 both ways. In this setting the densely sent head carries most of the accuracy "
        "([the head-only control](../skewed-head.md#how-much-of-this-is-lora-a-head-only-control)).",
    ),
    Bench(
        "default",
        "study-default",
        "default",
        "default: the CPU grid, 13 codecs on a short schedule",
        "MiniLM × rotten_tomatoes with the `skewed-head` recipe on a short schedule, every codec at its "
        "defaults "
        "(`make reproduce`), on three partitions. In runs this short the densely sent classifier head "
        "carries "
        "most of the accuracy, so the grid compares codecs mainly by traffic. Its `results.json` predates "
        "the "
        "downlink and total-traffic fields: those columns are absent.",
    ),
    Bench(
        "e2e-default",
        "study-e2e-default",
        "e2e-default",
        "e2e-default: the default setup end to end",
        "The `skewed-head` setup (11 rounds, 5 of 20 clients, Dirichlet 0.5) with dense fp32, FLM-TopK and "
        "wf_ecq (scalar and trellis-coded quantizer) on the uplink, over the dense fp32 broadcast. One "
        "seed. Its "
        "`results.json` predates the downlink and total-traffic fields.",
    ),
)

# Config keys stated on every page (their value in the first finished cell of each task), in this order;
# any other key whose value differs between the tasks is added after them.
KEYS = (
    "model.name",
    "model.classifier",
    "model.head",
    "model.lora_r",
    "model.lora_layers",
    "model.max_length",
    "model.pooling",
    "data.dataset",
    "data.num_clients",
    "data.test_examples",
    "train.optimizer",
    "train.lr",
    "train.head_lr",
    "train.weight_decay",
    "train.batch_size",
    "train.max_steps",
    "train.logit_adjust",
    "fl.rounds",
    "fl.clients_per_round",
    "fl.server_lr",
    "fl.server_momentum",
    "fl.error_feedback",
    "fl.eval_every",
    "downlink.name",
)
# Keys that differ by design between cells of one task, not between tasks.
VARYING = ("fl.seed", "data.partition", "data.alpha", "codec.", "downlink.options", "model.device")

PLOTS = (
    ("", "the held-out metric against cumulative traffic, round by round (seed mean)"),
    ("__rate", "final metric against total bits per parameter per client-round, one curve per codec family"),
    ("__rate_uplink", "the same against uplink bits per parameter"),
)


# -- formatting -------------------------------------------------------------------------------------------
def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _stat(s: dict | None, digits: int = 3) -> str:
    """``mean ± std`` of a results.json statistic; the mean alone for one seed; ``–`` when absent."""
    if not s or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:.{digits}f}"
    if s.get("n", 1) > 1 and s.get("std") is not None:
        text += f" ± {s['std']:.{digits}f}"
    return text


def _mean(s: dict | None, digits: int) -> str:
    """The seed mean alone (traffic hardly varies with the seed)."""
    return "–" if not s or s.get("mean") is None else f"{s['mean']:.{digits}f}"


def _value(v: Any) -> str:
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, str):
        return f"`{v}`"
    return f"`{v:g}`" if isinstance(v, float) else f"`{v}`"


def _seeds(seeds: list[str]) -> str:
    return f"{len(seeds)} ({', '.join(seeds)})" if seeds else "0"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "options":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _pct_bd(row: dict | None) -> str:
    """A bd_rate.json row as text: ``-79.5 %``, ``-51.5 % (point)``, a bound ``≤ -49.7 %`` / ``≥ +12.0 %``,
    or ``–``."""
    if row is None:
        return "–"
    v = row.get("bd_rate_percent")
    if v is not None:
        return f"{v:+.1f} %" + (" (point)" if row.get("mode") == "point" else "")
    if row.get("bound_percent") is not None:
        return f"{'≤' if row.get('bound') == 'at most' else '≥'} {row['bound_percent']:+.1f} %"
    return "–"


def _range(row: dict | None) -> str:
    if row is None or not row.get("accuracy_range"):
        return "–"
    lo, hi = row["accuracy_range"]
    return f"{lo:.3f}" if abs(hi - lo) < 1e-9 else f"{lo:.3f}–{hi:.3f}"


# -- the page ---------------------------------------------------------------------------------------------
def render(bench: Bench, root: Path = ROOT) -> str:
    folder = root / "docs" / "results" / bench.folder
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    bd_file = folder / "bd_rate.json"
    bd_rows = (
        json.loads(bd_file.read_text(encoding="utf-8")) if bd_file.is_file() else results.get("bd_rate", [])
    )
    grid_file = root / "src" / "fedsqueeze" / "configs" / "study" / f"{bench.grid}.toml"
    grid = tomllib.loads(grid_file.read_text(encoding="utf-8")) if grid_file.is_file() else {}
    cells = results.get("cells", [])
    done = [c for c in cells if c.get("status") == "done"]
    src = f"docs/results/{bench.folder}"

    out = [
        f"# {bench.title}",
        "",
        f"<!-- generated by docs/results/pages.py from {src}/results.json: do not edit; rerun the script -->",
        "",
        bench.about,
        "",
        "Every figure on this page is read from the study's committed files by `python "
        "docs/results/pages.py`: "
        f"`{src}/results.json`" + (f" and `{src}/bd_rate.json`" if bd_rows else "") + ". Their fields are "
        "listed in [Studies](../study.md#fields-of-resultsjson).",
        "",
        "How to read the tables: a column is one codec at one rate (`<codec>@r<rate>`: bits per parameter "
        "of the "
        'uplink frame); the traffic figures are whole-run seed means; "× less total" divides the baseline '
        "column's total MB by the column's. A BD-rate is the average rate difference at equal accuracy "
        "between "
        "a codec family's front of seed means and the reference's (negative: less rate); `(point)`: one "
        "side is "
        "a single point, the rate ratio at its accuracy; `≤` / `≥`: the fronts share no accuracy and the "
        "rate "
        "ratio at the edge bounds it ([Studies](../study.md#bd-rate) defines them).",
        "",
    ]
    out += _setup(bench, results, grid, done)
    out += _machine(results, done)
    out += _commands(bench, results)
    status = results.get("status", {})
    out += [
        "## Cells",
        "",
        f"{status.get('done', 0)} cells done, {status.get('failed', 0)} failed, {status.get('missing', 0)} "
        "not run "
        "(of the whole grid). Groups (task × partition) with no finished cell: "
        + (
            ", ".join(f"`{g['task']}/{g['partition']}`" for g in results["groups"] if not _done_codecs(g))
            or "none"
        )
        + ".",
        "",
    ]
    groups = sorted(results["groups"], key=lambda g: (g["task"], g["partition"]) != bench.lead)  # stable
    for g in groups:
        if _done_codecs(g):
            out += _group(bench, root, results, g, bd_rows, folder)
    return "\n".join(out).rstrip() + "\n"


def _done_codecs(g: dict) -> list[dict]:
    return [c for c in g["codecs"] if c.get("seeds_done", 0) > 0]


def _setup(bench: Bench, results: dict, grid: dict, done: list[dict]) -> list[str]:
    study = grid.get("study", {})
    out = [
        "## Setup",
        "",
        f"- Grid: [`src/fedsqueeze/configs/study/{bench.grid}.toml`](../../src/fedsqueeze/configs/study/"
        f"{bench.grid}.toml) (`fedsqueeze study {results['study']} --dry-run` lists its cells).",
        f"- Seeds: {', '.join(str(s) for s in results.get('seeds', []))} (`fl.seed`; the data split stays "
        "fixed).",
    ]
    if results.get("rates"):
        out.append(
            "- Swept rates: " + ", ".join(f"{r:g}" for r in results["rates"]) + " bits per parameter of the "
            "uplink frame (a column `<codec>@r<rate>`); codecs with a `rates` list of their own use it."
        )
    out.append(f"- Traffic baseline column: `{results.get('baseline')}`.")
    if results.get("bd_references"):
        out.append("- BD-rate references: " + ", ".join(f"`{r}`" for r in results["bd_references"]) + ".")
    if study.get("set"):
        out.append("- Set on every cell: " + ", ".join(f"`{s}`" for s in study["set"]) + ".")
    tasks = grid.get("tasks", [])
    if tasks:
        out += [
            "",
            "Tasks, as the grid defines them (`--set` on top of `base`, or of the task they extend):",
            "",
        ]
        rows = []
        for t in tasks:
            parent = f"extends `{t['extends']}`" if "extends" in t else f"preset `{t.get('base', 'default')}`"
            sets = ", ".join(f"`{s}`" for s in t.get("set", [])) or "–"
            target = f"{t['target']:g}" if "target" in t else "weakest column's best"
            rows.append([f"`{t['name']}`", parent, sets, target])
        out += _table(["task", "on top of", "set", "target"], rows)
    parts = grid.get("partitions", [])
    if parts:
        labels = []
        for p in parts:
            extra = f", α {p['alpha']:g}" if "alpha" in p else ""
            labels.append(f"`{p['label']}` ({p['partition']}{extra})")
        out += ["", "Partitions: " + ", ".join(labels) + "."]
    # the resolved config of each task's finished cells: one value, or "varies by cell"
    values: dict[str, dict[str, set[str]]] = {}
    for c in done:
        for k, v in _flat(c.get("config", {})).items():
            values.setdefault(c["task"], {}).setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    if values:
        names = list(values)
        keys = [k for k in KEYS if any(k in f for f in values.values())]
        rest = sorted({k for f in values.values() for k in f} - set(keys))
        keys += [
            k
            for k in rest
            if not k.startswith(VARYING) and len({frozenset(f.get(k, ())) for f in values.values()}) > 1
        ]

        def show(task: str, key: str) -> str:
            vs = values[task].get(key)
            if not vs:
                return "–"
            return _value(json.loads(next(iter(vs)))) if len(vs) == 1 else "varies by column"

        out += [
            "",
            "The resolved config of the finished cells (`cells[].config` in `results.json`), by task; the "
            "partition, the seed and the codec vary by cell:",
            "",
        ]
        out += _table(
            ["key", *(f"`{n}`" for n in names)], [[f"`{k}`", *(show(n, k) for n in names)] for k in keys]
        )
    return [*out, ""]


def _machine(results: dict, done: list[dict]) -> list[str]:
    m = results.get("machine", {})
    gpu = m.get("gpu") or "no GPU"
    platforms = results.get("run_platforms", [])
    gpus = [d for d in results.get("run_devices", ["cpu"]) if d != "cpu"]
    walls = sorted(c["wall_s"] for c in done if c.get("wall_s") is not None)
    out = [
        "## Machine",
        "",
        f"The runner records the machine it aggregated on: {m.get('processor', '?')}, "
        f"{m.get('cpus_usable', '?')} "
        f"usable CPUs of {m.get('cpu_count', '?')}, {gpu}, Python {m.get('python', '?')}, torch "
        f"{m.get('torch', '?')}. The cells ran on {len(platforms)} platform"
        f"{'s' if len(platforms) != 1 else ''} (`run_platforms`), "
        + (
            f"local training on the CPU or on {', '.join(gpus)} "
            "(`run_devices`; a cell's `device` says which). "
            if gpus
            else "local training on the CPU: the project's development machine, a shared CPU, so wall times "
            "are upper bounds. "
        )
        + "Floats differ between CPU types from round 1 on; the same command on the same machine reproduces "
        "a cell bit for bit.",
    ]
    if walls:
        out += [
            "",
            f"Wall time of a cell (`wall_s`): median {statistics.median(walls) / 60:.1f} min, "
            f"range {walls[0] / 60:.1f}–{walls[-1] / 60:.1f} min over {len(walls)} cells.",
        ]
    return [*out, ""]


def _commands(bench: Bench, results: dict) -> list[str]:
    name, dest = results["study"], f"docs/results/{bench.folder}"
    dirs = {c.get("dir", "") for c in results.get("cells", []) if c.get("status") == "done"}
    committed = bool(dirs) and all(d.startswith(dest + "/") for d in dirs)
    out = [
        "## Commands",
        "",
        "The cells (the study resumes: it runs only the cells that are missing):",
        "",
        "```bash",
        results.get("command") or f"fedsqueeze study {name}",
        "```",
        "",
    ]
    if committed:
        out += [
            f"The cells' folders are committed under `{dest}/`. The aggregate (`results.json`, "
            "`bd_rate.json`, "
            "`results.md`, `plots/`) from the cells there, then this page:",
            "",
            "```bash",
            f"fedsqueeze study {name} --aggregate-only --out {dest}",
        ]
    else:
        out += [
            "The cells' folders are not committed: the study writes them and its aggregate into the `--out` "
            "folder, and `results.json`, `results.md`, `results.csv` and `plots/` were copied into "
            f"`{dest}/`. "
            "Then this page:",
            "",
            "```bash",
        ]
    return [*out, "python docs/results/pages.py", "```", ""]


def _controls(bench: Bench, root: Path, task: str, partition: str) -> list[dict]:
    runs = []
    for t, folder, infix in bench.controls:
        if t == task:
            for f in sorted(
                (root / "docs" / "results" / folder).glob(f"{partition}-{infix}seed*/summary.json")
            ):
                s = json.loads(f.read_text(encoding="utf-8"))
                s["_path"] = f.parent.relative_to(root).as_posix()
                runs.append(s)
    return runs


def _group(bench: Bench, root: Path, results: dict, g: dict, bd_rows: list[dict], folder: Path) -> list[str]:
    task, part = g["task"], g["partition"]
    codecs = _done_codecs(g)
    metric = g.get("metric_name") or "metric"
    lower = g.get("metric_higher_is_better") is False
    base = next((c for c in g["codecs"] if c["codec"] == g.get("baseline")), None)
    dense_both = (
        base is not None
        and base.get("codec_name", base["codec"]) == "identity"
        and g.get("baseline_downlink", "identity") == "identity"
    )
    base_total = (base or {}).get("total_mb") or {}
    has_total = any(c.get("total_mb") for c in codecs)
    target = g.get("target")
    out = [
        f"## `{task}` / `{part}`",
        "",
        f"Held-out {metric} ({'lower' if lower else 'higher'} is better), seed mean ± sample std over the "
        f"finished seeds; the seeds column gives n and which seeds. Target {_num(target)}: "
        f"{g.get('target_source', '?')}.",
        "",
        f"### {f'`{metric}`' if lower else 'Accuracy'} and traffic",
        "",
    ]
    ratio_head = "× less total than dense fp32" if dense_both else f"× less total than `{g.get('baseline')}`"
    head = ["column", "seeds", f"final {metric}", f"best {metric}", "uplink MB"]
    if has_total:
        head += ["downlink MB", "total MB", "total bits/param", ratio_head]
    else:
        head += ["uplink bits/param"]
    head += ["seeds reaching target", "MB to target" + (" (total)" if has_total else " (uplink)")]
    rows = []
    controls = _controls(bench, root, task, part)
    if controls:
        fin = [r["final_metric"] for r in controls]
        best = [r["best_metric"] for r in controls]
        up = statistics.mean(r["total_uplink_bytes"] for r in controls) / 1e6
        down = statistics.mean(r["total_downlink_bytes"] for r in controls) / 1e6
        row = [
            "LoRA frozen (control, 1 round)",
            _seeds([str(r["seed"]) for r in controls]),
            _ms(fin),
            _ms(best),
            f"{up:.3f}",
        ]
        row += [f"{down:.2f}", f"{up + down:.2f}", "–", "–"] if has_total else ["–"]
        rows.append([*row, "–", "–"])
    done_seeds: dict[str, list[int]] = {}
    for cell in results.get("cells", []):
        if cell.get("status") == "done" and (cell["task"], cell["partition"]) == (task, part):
            done_seeds.setdefault(cell["codec"], []).append(cell["seed"])
    for c in codecs:
        seeds = [str(k) for k in sorted(done_seeds.get(c["codec"], []))] or sorted(
            c.get("per_seed", {}), key=int
        )
        row = [f"`{c['codec']}`", _seeds(seeds), _stat(c.get("final_metric")), _stat(c.get("best_metric"))]
        row.append(_mean(c.get("uplink_mb"), 3))
        if has_total:
            tot = (c.get("total_mb") or {}).get("mean")
            ratio = "–" if not tot or base_total.get("mean") is None else f"{base_total['mean'] / tot:.1f}"
            row += [
                _mean(c.get("downlink_mb"), 2),
                _mean(c.get("total_mb"), 2),
                _mean(c.get("total_bits_per_param"), 2),
                ratio,
            ]
        else:
            row.append(_mean(c.get("uplink_bits_per_param"), 3))
        reached = c.get("seeds_reached")
        row.append("–" if reached is None else f"{reached}/{c.get('seeds_done', 0)}")
        row.append(_stat(c.get("mb_to_target_total") if has_total else c.get("uplink_mb_to_target"), 2))
        rows.append(row)
    out += _table(head, rows)
    if any(len(done_seeds.get(c["codec"], [])) < len(results.get("seeds", [])) for c in codecs):
        out += ["", "Columns with fewer seeds than the grid's have not finished the others."]
    if controls:
        unit = f"in {metric} (lower is better)" if lower else "in points"
        out += [
            "",
            "The control is the same task with LoRA frozen (`train.lr = 1e-9`), one round, from "
            + ", ".join(f"`{r['_path']}`" for r in controls)
            + ". The LoRA gap, seed-paired: what dense fp32 (`identity`) gains over the control of the same "
            f"seed, {unit}.",
            "",
        ]
        dense = next((c for c in codecs if c["codec"] == "identity"), None)
        gap_rows = []
        for r in controls:
            s = (dense or {}).get("per_seed", {}).get(str(r["seed"]))
            if s:
                gap_rows.append(
                    [
                        str(r["seed"]),
                        _gain(s["final"], r["final_metric"], lower),
                        _gain(s["best"], r["best_metric"], lower),
                    ]
                )
        head = ["control − final", "control − best"] if lower else ["final − control", "best − control"]
        out += _table(["seed", *head], gap_rows) if gap_rows else ["(no paired seed)"]
    out += _paired(g, lower)
    out += _bd(results, g, bd_rows)
    out += _plots(bench, folder, task, part)
    return [*out, ""]


def _ms(xs: list[float]) -> str:
    return f"{xs[0]:.3f}" if len(xs) == 1 else f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def _gain(value: float, control: float, lower: bool) -> str:
    """How far ``value`` is better than ``control``: points of a higher-is-better metric in [0, 1], the
    metric's own units (3 decimals) for a lower-is-better one (a loss)."""
    return f"{control - value:+.3f}" if lower else f"{100 * (value - control):+.1f}"


def _paired(g: dict, lower: bool = False) -> list[str]:
    """The seed-paired differences of ``groups[].paired_differences`` with two seeds or more (in points, or
    in the metric's units for a lower-is-better metric)."""
    scale, digits, unit = (1.0, 3, "") if lower else (100.0, 1, " (points)")
    rows = []
    for p in g.get("paired_differences", []):
        if p.get("delta") is None or p.get("threshold") is None or (p.get("n") or 0) < 2:
            continue
        rows.append(
            [
                f"`{p['a']}`",
                f"`{p['b']}`",
                p["metric"],
                str(p["n"]),
                f"{scale * p['delta']:+.{digits}f}",
                f"{scale * p['threshold']:.{digits}f}",
                "yes" if p.get("exceeds") else "no",
            ]
        )
    if not rows:
        return []
    return [
        "",
        "### Seed-paired differences",
        "",
        "Pairs of columns at the same rate with two or more seeds in common (`paired_differences`): Δ is "
        "the mean "
        "over those seeds of a − b, "
        + ("in the metric's units (lower is better)" if lower else "in points")
        + "; it exceeds the seed spread when |Δ| is above 2 · std / √n of "
        "the per-seed differences ([Studies](../study.md#differences-that-exceed-the-seed-spread)).",
        "",
        *_table(["a", "b", "metric", "n", f"Δ{unit}", "threshold", "exceeds"], rows),
    ]


def _bd(results: dict, g: dict, bd_rows: list[dict]) -> list[str]:
    out: list[str] = []
    mine = [r for r in bd_rows if r["task"] == g["task"] and r["partition"] == g["partition"]]
    for ref in results.get("bd_references", []):
        cell = {(r["codec"], r["metric"], r["rate_basis"]): r for r in mine if r["reference"] == ref}
        names = list(dict.fromkeys(r["codec"] for r in mine if r["reference"] == ref))
        rows = []
        for name in names:
            fu, ft = cell.get((name, "final", "uplink")), cell.get((name, "final", "total"))
            bu, bt = cell.get((name, "best", "uplink")), cell.get((name, "best", "total"))
            points = (fu or ft or {}).get("points", 0)
            if not points:
                continue
            why = next((r.get("reason") for r in (fu, bu) if r and _pct_bd(r) == "–" and r.get("reason")), "")
            rows.append(
                [
                    f"`{name}`",
                    str(points),
                    _pct_bd(fu),
                    _pct_bd(ft),
                    _range(fu),
                    _pct_bd(bu),
                    _pct_bd(bt),
                    _range(bu),
                    why,
                ]
            )
        ref_points = next((r.get("reference_points") for r in mine if r["reference"] == ref), 0)
        if not rows or not ref_points:
            continue
        out += ["", f"### BD-rate against `{ref}`", ""]
        head = [
            "family",
            "points",
            "final, uplink",
            "final, total",
            "range (final)",
            "best, uplink",
            "best, total",
        ]
        head.append("range (best)")
        if any(r[-1] for r in rows):
            head.append("why none")
        else:
            rows = [r[:-1] for r in rows]
        out += _table(head, rows)
    return out


def _plots(bench: Bench, folder: Path, task: str, part: str) -> list[str]:
    out: list[str] = []
    for suffix, what in PLOTS:
        name = f"{task}__{part}{suffix}.png"
        if (folder / "plots" / name).is_file():
            out += ["", f"![{task} {part}: {what}](../results/{bench.folder}/plots/{name})", "", f"*{what}*"]
    return ["", "### Plots", *out] if out else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the pages (default docs/bench)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for bench in BENCHES:
        (args.out / f"{bench.page}.md").write_text(render(bench), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
