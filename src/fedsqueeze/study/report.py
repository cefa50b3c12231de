"""Render an aggregated study: ``results.csv`` rows (:func:`csv_rows`), ``results.md`` (:func:`markdown`)
and the BD-rate cell text (:func:`bd_text`). Part of :mod:`.aggregate`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .grid import StudyGrid
from .stats import BASES, METRICS

__all__ = ["bd_text", "csv_rows", "markdown"]


def _pm(stat: dict[str, Any], fmt: str = ".4f", scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "–"
    text = format(stat["mean"] * scale, fmt)
    return text if stat["std"] is None else f"{text} ± {format(stat['std'] * scale, fmt)}"


_CSV_STATS = (
    "final_metric",
    "best_metric",
    "uplink_mb",
    "downlink_mb",
    "total_mb",
    "uplink_bits_per_param",
    "total_bits_per_param",
    "sim_time_s",
)
_CSV_TARGET_STATS = (
    "rounds_to_target",
    "uplink_mb_to_target",
    "downlink_mb_to_target",
    "mb_to_target_total",
    "sim_time_to_target_s",
)


def csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per task × partition × codec column (means and stds as separate columns)."""
    rows = []
    for g in results["groups"]:
        for c in g["codecs"]:
            row = {k: g[k] for k in ("task", "partition", "metric_name", "target")}
            row.update({k: c[k] for k in ("codec", "family", "rate", "codec_name")})
            row.update({k: c[k] for k in ("seeds_done", "seeds_failed", "seeds_missing")})
            for key in _CSV_STATS:
                row[f"{key}_mean"], row[f"{key}_std"] = c[key]["mean"], c[key]["std"]
            row["seeds_reached"] = c["seeds_reached"]
            for key in _CSV_TARGET_STATS:
                row[f"{key}_mean"], row[f"{key}_std"] = c[key]["mean"], c[key]["std"]
            for key in ("traffic_reduction", "traffic_reduction_total"):
                row[key] = c[key]
            row["metric_higher_is_better"] = g.get("metric_higher_is_better", True)
            rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def bd_text(row: Mapping[str, Any] | None) -> str:
    """One ``bd_rate.json`` row as table text: ``-79.5 %``, ``-51.5 % (point)``, a bound ``≤ -49.7 %`` /
    ``≥ +12.0 %`` where the curves share no accuracy, or ``–`` (no result, or no row)."""
    if row is None:
        return "–"
    v = row["bd_rate_percent"]
    if v is not None:
        return f"{v:+.1f} %" + (" (point)" if row["mode"] == "point" else "")
    if row.get("bound_percent") is not None:
        return f"{'≤' if row['bound'] == 'at most' else '≥'} {row['bound_percent']:+.1f} %"
    return "–"


def _bd_tables(results: dict[str, Any], g: dict[str, Any]) -> list[str]:
    mine = [
        r for r in results.get("bd_rate", []) if r["task"] == g["task"] and r["partition"] == g["partition"]
    ]
    out: list[str] = []
    combos = [(m, b) for b in BASES for m in METRICS]
    for ref in results.get("bd_references", []):
        rows = {(r["codec"], r["metric"], r["rate_basis"]): r for r in mine if r["reference"] == ref}
        names = list(dict.fromkeys(r["codec"] for r in mine if r["reference"] == ref))
        if not names:
            continue
        head = " | ".join(f"{m}, {b} bits" for m, b in combos)
        out += [
            "",
            f"BD-rate vs `{ref}` (negative: less rate for the same {g['metric_name'] or 'metric'}):",
            "",
        ]
        out += [f"| codec | {head} |", "|---|" + "---|" * len(combos)]
        for name in names:
            vals = [bd_text(rows.get((name, m, b))) for m, b in combos]
            out.append(f"| {name} | " + " | ".join(vals) + " |")
    if out:
        out += [
            "",
            "`–`: not computable (no overlap in accuracy, too few points, no finished cell); `bd_rate.json` "
            "gives the reason. `(point)`: one side is a single point, the rate ratio at its accuracy. "
            "`≤` / `≥`: the curves share no accuracy; the rate ratio at the edge bounds the BD-rate (the "
            "codec is ahead of the whole reference curve, or behind it).",
        ]
    return out


_LOWER_DELTA = "lower is better: a negative Δ favours a"


def _note(intro: str, note: str) -> str:
    """``"...):"`` as ``"...; note):"`` (the wording of a lower-is-better metric)."""
    return f"{intro[:-2]}; {note}):"


def _differences(g: dict[str, Any]) -> list[str]:
    hits = [d for d in g["seed_differences"] if d["exceeds"]]
    assessed = sum(d["exceeds"] is not None for d in g["seed_differences"])
    out = [
        "",
        f"Differences that exceed the seed spread (|Δ mean final| > 2·sqrt(std_a²/n_a + std_b²/n_b), pairs "
        f"at the same rate; {len(hits)} of the {assessed} pairs with 2 or more seeds on both sides):",
        "",
    ]
    if not g.get("metric_higher_is_better", True):
        out[-2] = _note(out[-2], _LOWER_DELTA)
    if not hits:
        return [*out, "- none"]
    for d in sorted(hits, key=lambda d: -abs(d["delta"])):
        at = "unswept" if d["rate"] is None else f"rate {d['rate']:g}"
        out.append(
            f"- `{d['a']}` vs `{d['b']}` ({at}): Δ {d['delta']:+.4f} "
            f"({d['mean_a']:.4f} ± {d['std_a']:.4f} vs {d['mean_b']:.4f} ± {d['std_b']:.4f}, "
            f"n {d['n_a']}/{d['n_b']}; threshold {d['threshold']:.4f})"
        )
    return out


def _spread(g: dict[str, Any]) -> list[str]:
    rows = g.get("codec_spread", [])
    if not rows:
        return []
    out = [
        "",
        "Codec spread per rate (highest − lowest seed mean among the columns at the rate; seed std pooled "
        "over those columns with 2+ seeds, else the baseline's; separates: spread > 2 · seed std):",
        "",
        "| rate | columns | metric | lowest | highest | spread | seed std (from) | separates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if not g.get("metric_higher_is_better", True):
        out[1] = _note(out[1], "lower is better: the lowest column is the best")
    for e in rows:
        for metric in ("final", "best"):
            d = e[metric]
            std = "–" if d["seed_std"] is None else f"{d['seed_std']:.4f} ({d['std_source']})"
            sep = {None: "–", True: "yes", False: "no"}[d["separates"]]
            out.append(
                f"| {e['rate']:g} | {len(e['columns'])} | {metric} | {d['lowest'][0]} {d['lowest'][1]:.4f} "
                f"| {d['highest'][0]} {d['highest'][1]:.4f} | {d['spread']:.4f} | {std} | {sep} |"
            )
    return out


def _paired(g: dict[str, Any]) -> list[str]:
    pairs = [d for d in g.get("paired_differences", []) if d["exceeds"] is not None]
    if not pairs:
        return []
    out: list[str] = [
        "",
        "Seed-paired differences (the same seeds on both sides share sampling, partition and initial state; "
        "Δ = mean of the per-seed differences a − b, threshold 2·std/sqrt(n); ✓ exceeds it):",
        "",
        "| a | b | rate | metric | seeds | Δ | std | threshold | exceeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if not g.get("metric_higher_is_better", True):
        out[1] = _note(out[1], _LOWER_DELTA)
    for d in sorted(pairs, key=lambda d: (d["metric"], -abs(d["delta"]))):
        at = "–" if d["rate"] is None else f"{d['rate']:g}"
        out.append(
            f"| {d['a']} | {d['b']} | {at} | {d['metric']} | {d['n']} | {d['delta']:+.4f} | {d['std']:.4f} "
            f"| {d['threshold']:.4f} | {'✓' if d['exceeds'] else ''} |"
        )
    return out


def markdown(results: dict[str, Any], grid: StudyGrid) -> str:
    m = results["machine"]
    st = results["status"]
    out = [
        f"# Study `{results['study']}`",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['platform']}, {m['cpus_usable']} usable CPUs ({m['cpu_count']} on the host), "
        f"torch {m['torch']}, GPU: {m['gpu'] or 'none'}  ",
        f"Runs made on: {', '.join(results['run_platforms']) or '–'}  ",
        f"Local training on: {', '.join(results.get('run_devices', [])) or '–'}  ",
        f"Cells: {st['done']} done, {st['failed']} failed, {st['missing']} missing; seeds "
        f"{', '.join(map(str, results['seeds']))}. Values are mean ± std over the seeds that finished.",
        "",
        "Target = the best metric the weakest codec reaches (seed mean) unless the task fixes one; rounds, "
        "MB and simulated time to target are means over the seeds that reach it (`reached`). Traffic is "
        "uplink + downlink (`total`) unless a column says uplink or downlink; reduction = 1 − total MB to "
        f"target / total MB to target of `{results['baseline']}` (uplink reduction: the same on the uplink). "
        "bits/param: total = uplink + downlink bits per trained parameter per client-round; uplink = LoRA "
        "uplink bits per LoRA parameter (what a codec's `rate` targets). Time to target: simulated over the "
        "clients' links (`[network]`: compute + transfers, the slowest client per round).",
    ]
    for g in results["groups"]:
        target = "–" if g["target"] is None else f"{g['target']:.4f}"
        lower = not g.get("metric_higher_is_better", True)
        direction = (
            " (lower is better: best = lowest; a run reaches the target at or below it)" if lower else ""
        )
        out += [
            "",
            f"## {g['task']} / {g['partition']}",
            "",
            f"Metric: {g['metric_name'] or '–'}{direction}; target {target} ({g['target_source']}; weakest: "
            f"{g['weakest'] or '–'}); baseline `{g['baseline']}` with downlink "
            f"`{g['baseline_downlink'] or '–'}`.",
            "",
            "| codec | seeds | rate | final | best | uplink MB | downlink MB | total MB | bits/param total "
            "| bits/param uplink | rounds to target | MB to target (total) | time to target (s) | reached "
            "| reduction (total) | reduction (uplink) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in g["codecs"]:
            n = len(results["seeds"])
            seeds = f"{c['seeds_done']}/{n}" + (f" ({c['seeds_failed']} failed)" if c["seeds_failed"] else "")
            rate = "–" if c["rate"] is None else f"{c['rate']:g}"
            out.append(
                f"| {c['codec']} | {seeds} | {rate} | {_pm(c['final_metric'])} | {_pm(c['best_metric'])} "
                f"| {_pm(c['uplink_mb'], '.3f')} | {_pm(c['downlink_mb'], '.3f')} "
                f"| {_pm(c['total_mb'], '.3f')} "
                f"| {_pm(c['total_bits_per_param'], '.3f')} | {_pm(c['uplink_bits_per_param'], '.3f')} "
                f"| {_pm(c['rounds_to_target'], '.1f')} | {_pm(c['mb_to_target_total'], '.3f')} "
                f"| {_pm(c['sim_time_to_target_s'], '.1f')} | {c['seeds_reached']}/{c['seeds_done']} "
                f"| {_pct(c['traffic_reduction_total'])} | {_pct(c['traffic_reduction'])} |"
            )
        out += _bd_tables(results, g)
        out += _differences(g)
        out += _spread(g)
        out += _paired(g)
        stem = f"{g['task']}__{g['partition']}"
        out += ["", f"![{g['task']} {g['partition']}](plots/{stem}.png)"]
        out += ["", f"![{g['task']} {g['partition']} rate curves](plots/{stem}__rate.png)"]
    failed = [r for r in results["cells"] if r["status"] == "failed"]
    if failed:
        out += ["", "## Failed cells", ""] + [f"- `{r['id']}`: {r['error']}" for r in failed]
    out += ["", "## Resolved configs", ""]
    out.append(
        "The first cell of each task; the other cells differ only in `data.partition`/`data.alpha`, "
        "`codec`, the seed keys " + ", ".join(f"`{k}`" for k in grid.seed_keys) + " and the codecs' `set`."
    )
    for t in grid.tasks:
        first = next(r for r in results["cells"] if r["task"] == t.name)
        out += ["", f"`{first['id']}`:", "", "```json", json.dumps(first["config"], indent=1), "```"]
    return "\n".join(out) + "\n"
