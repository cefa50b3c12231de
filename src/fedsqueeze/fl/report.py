"""Run outputs beside the loop: summary, package versions, the accuracy-vs-uplink plot, the progress bar."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .._extras import require

__all__ = [
    "TGAP_INCLUDED",
    "Progress",
    "StepProgress",
    "device_name",
    "eval_columns",
    "include_tgap",
    "package_versions",
    "plot_metric_vs_uplink",
    "summarize",
    "traffic_totals",
]

# The summary totals that count the TGAP phase's bytes and time when it ran (``totals_include_tgap``).
TGAP_INCLUDED = (
    "total_uplink_bytes",
    "total_downlink_bytes",
    "uplink_bytes_to_target",
    "downlink_bytes_to_target",
    "total_bytes_to_target",
    "wall_s",
)

_PACKAGES = (
    "fedsqueeze",
    "torch",
    "numpy",
    "transformers",
    "peft",
    "safetensors",
    "constriction",
    "matplotlib",
)


def device_name(device: Any) -> str:
    """``"cpu"``, or ``"cuda:N (<GPU name>)"`` for a CUDA device: where a run's local training ran."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on (``"absent"`` when not installed)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def eval_columns(ev: Mapping[str, float] | None, metric_name: str) -> dict[str, Any]:
    """The evaluation columns of a ``metrics.jsonl`` row (``ev`` is ``None`` in rounds not evaluated)."""
    return {
        "eval_metric": None if ev is None else float(ev[metric_name]),
        "eval_metric_name": metric_name,
        "eval": None if ev is None else {k: float(v) for k, v in ev.items()},
    }


def summarize(
    rows: Sequence[Mapping[str, Any]],
    metric_name: str,
    target: float | None,
    *,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Final/best metric and the rounds, bytes and simulated time to reach ``target`` (``None`` if never
    reached).

    With ``higher_is_better`` (accuracy) the best metric is the largest and the target is reached at the
    first evaluation ``>= target``; without it (a loss) the best is the smallest and the target is reached
    at the first evaluation ``<= target``. The summary records the direction as
    ``metric_higher_is_better`` (a summary without the field means ``True``).

    ``total_bytes_to_target`` is uplink + downlink to the target; ``sim_time_to_target_s`` and
    ``sim_time_s`` are the rows' simulated time over the clients' links (:mod:`.network`) at the target and
    at the end (``None`` for rows without it).
    """
    evals = [r for r in rows if r.get("eval_metric") is not None]
    pick = max if higher_is_better else min  # the first of equal bests either way
    best = pick(evals, key=lambda r: r["eval_metric"], default=None)

    def reached(value: float, target: float) -> bool:
        return value >= target if higher_is_better else value <= target

    hit = None if target is None else next((r for r in evals if reached(r["eval_metric"], target)), None)
    last = rows[-1] if rows else {}
    return {
        "metric_name": metric_name,
        "metric_higher_is_better": bool(higher_is_better),
        "final_metric": evals[-1]["eval_metric"] if evals else None,
        "best_metric": None if best is None else best["eval_metric"],
        "best_round": None if best is None else best["round"],
        "target_metric": target,
        "rounds_to_target": None if hit is None else hit["round"],
        "uplink_bytes_to_target": None if hit is None else hit["cum_uplink_bytes"],
        "downlink_bytes_to_target": None if hit is None else hit["cum_downlink_bytes"],
        "total_bytes_to_target": None if hit is None else hit["cum_uplink_bytes"] + hit["cum_downlink_bytes"],
        "sim_time_to_target_s": None if hit is None else hit.get("sim_time_s"),
        "sim_time_s": last.get("sim_time_s"),
        "rounds": len(rows),
        "total_uplink_bytes": last.get("cum_uplink_bytes", 0),
        "total_downlink_bytes": last.get("cum_downlink_bytes", 0),
        "wall_s": sum(r.get("wall_s", 0.0) for r in rows),
    }


def traffic_totals(
    ledger: Any, lora_numel: int, head_numel: int, total_uplink: int, total_downlink: int
) -> dict[str, Any]:
    """Run-level traffic figures of the summary, beside ``total_uplink_bytes`` / ``total_downlink_bytes``.

    ``ledger`` is the run's :class:`~.ledger.TrafficLedger` (main rounds); the totals are the summary's
    (TGAP included when it ran). A transfer is one client's upload (LoRA + head frames) or download of one
    round; "dense fp32" is 4 bytes per trained parameter (``lora_numel + head_numel``) per transfer.

    - ``total_bytes``: uplink + downlink;
    - ``uploads``, ``downloads``: transfers in the main rounds;
    - ``client_rounds``: the (round, client) pairs with a transfer either way in the main rounds;
    - ``total_bits_per_param``: 8 · ``total_bytes`` / (``client_rounds`` · trained parameters), the bits
      both ways per parameter per client-round (dense fp32 both ways: 64 plus headers);
    - ``lora_bits_per_param``: 8 · LoRA uplink bytes / (uploads · ``lora_numel``), the run-level form of the
      rows' column of that name;
    - ``bits_per_param_uplink``, ``bits_per_param_total``: 8 · bytes / (transfers · trained parameters),
      uplink only and both ways (32 is dense fp32);
    - ``dense_fp32_uplink_bytes``, ``dense_fp32_total_bytes``: what dense fp32 transfers would have cost;
    - ``dense_fp32_ratio_uplink``, ``dense_fp32_ratio_total``: those over the bytes actually sent (how many
      times less than dense fp32; above 1 is a saving).

    A figure with a zero denominator is ``None``.
    """
    rounds = list(ledger.rounds)
    uploads = sum(len(r.uplink_lora) for r in rounds)
    downloads = sum(len(r.downlink) for r in rounds)
    client_rounds = sum(len(set(r.uplink_lora) | set(r.uplink_head) | set(r.downlink)) for r in rounds)
    lora = sum(sum(r.uplink_lora.values()) for r in rounds)
    params = lora_numel + head_numel
    dense_up, dense_down = 4 * params * uploads, 4 * params * downloads
    total = total_uplink + total_downlink

    def div(a: float, b: float) -> float | None:
        return a / b if b else None

    return {
        "total_bytes": total,
        "uploads": uploads,
        "downloads": downloads,
        "lora_bits_per_param": div(8 * lora, uploads * lora_numel),
        "bits_per_param_uplink": div(8 * total_uplink, uploads * params),
        "bits_per_param_total": div(8 * total, (uploads + downloads) * params),
        "client_rounds": client_rounds,
        "total_bits_per_param": div(8 * total, client_rounds * params),
        "dense_fp32_uplink_bytes": dense_up,
        "dense_fp32_total_bytes": dense_up + dense_down,
        "dense_fp32_ratio_uplink": div(dense_up, total_uplink),
        "dense_fp32_ratio_total": div(dense_up + dense_down, total),
    }


def include_tgap(summary: dict[str, Any], tgap: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add the TGAP phase to a run summary (in place; also returned).

    ``summary["tgap_traffic"]`` becomes ``tgap`` (``None`` when TGAP did not run). When it ran, the totals
    named in :data:`TGAP_INCLUDED` (listed again in ``summary["totals_include_tgap"]``) become TGAP + main
    rounds, and the main rounds' own values stay available as ``faf_uplink_bytes``, ``faf_downlink_bytes``
    and ``faf_wall_s``. ``metrics.jsonl``'s per-round ``cum_*_bytes`` count the main rounds only.
    """
    summary["tgap_traffic"] = None if tgap is None else dict(tgap)
    summary["totals_include_tgap"] = [] if tgap is None else list(TGAP_INCLUDED)
    if tgap is None:
        return summary
    up, down = int(tgap["uplink_bytes"]), int(tgap["downlink_bytes"])
    summary["faf_uplink_bytes"] = summary["total_uplink_bytes"]
    summary["faf_downlink_bytes"] = summary["total_downlink_bytes"]
    summary["faf_wall_s"] = summary["wall_s"]
    summary["total_uplink_bytes"] += up
    summary["total_downlink_bytes"] += down
    for key, extra in (
        ("uplink_bytes_to_target", up),
        ("downlink_bytes_to_target", down),
        ("total_bytes_to_target", up + down),
    ):
        if summary.get(key) is not None:
            summary[key] += extra
    summary["wall_s"] += float(tgap.get("wall_s", 0.0))
    return summary


def plot_metric_vs_uplink(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    offset_bytes: int = 0,
    target: float | None = None,
    higher_is_better: bool = True,
) -> Any:
    """Evaluation metric against cumulative uplink MB (matplotlib's Agg canvas; no global backend change).

    ``offset_bytes`` is uplink spent before the first round (the TGAP phase): the curve starts there.
    ``target`` (``fl.target_metric``) is drawn as a grey dotted line. There is no round-0 point: the loop
    does not evaluate the initial model. With ``higher_is_better=False`` the y label says
    "(lower is better)". Returns the figure.
    """
    require("matplotlib", "plots", "the accuracy plot of a run")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = [r for r in rows if r.get("eval_metric") is not None]
    fig = Figure(figsize=(6, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    name = evals[0]["eval_metric_name"] if evals else "metric"
    ys = [r["eval_metric"] for r in evals]
    # Total traffic (uplink + downlink) is the cost; the uplink alone is the dashed line.
    total = [(offset_bytes + r["cum_uplink_bytes"] + r.get("cum_downlink_bytes", 0)) / 1e6 for r in evals]
    ax.plot(total, ys, marker="o", ms=3, label="total (uplink + downlink)")
    uplink = [(offset_bytes + r["cum_uplink_bytes"]) / 1e6 for r in evals]
    # hollow markers: a one-round run has one point per curve, and a line alone would draw nothing
    ax.plot(uplink, ys, ls="--", lw=1, marker="o", ms=3, mfc="none", label="uplink only")
    if target is not None:
        ax.axhline(target, color="0.45", ls=":", lw=1, label=f"target {target:g}")
    if offset_bytes:
        ax.axvline(offset_bytes / 1e6, color="0.5", ls="--", lw=1, label="TGAP uplink")
    ax.legend(fontsize=8)
    tgap = ", TGAP uplink included" if offset_bytes else ""
    ax.set_xlabel(f"cumulative traffic (MB, payload bytes){tgap}")
    ax.set_ylabel(f"held-out {name}" + ("" if higher_is_better else " (lower is better)"))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return fig


class Progress:
    """A rich progress bar showing round, metric and MB sent (and, within a round, the client being
    trained); one plain line per round when stderr is no terminal (logs, CI), plus a line per client when a
    round has run :attr:`HEARTBEAT_S` seconds without one; silent when ``enabled`` is false."""

    HEARTBEAT_S = 10.0  # plain mode: a client line only when this long has passed without any line

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.enabled, self.total = enabled, total
        self._bar: Any = None
        self._last = time.monotonic()
        if not enabled:
            return
        require("rich", "cli", "the progress bar")
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._console = Console(file=sys.stderr)
        if not self._console.is_terminal:
            return
        self._bar = RichProgress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self._console,
        )
        self._task = self._bar.add_task("run", total=total, completed=start, info="")
        self._bar.start()

    def client_hook(self, r: int) -> Any:
        """The ``on_client(i, k, client, seconds)`` callback of round ``r`` (``None`` when disabled)."""
        if not self.enabled:
            return None
        return lambda i, k, client, seconds: self.client(r, i, k, client, seconds)

    def client(self, r: int, i: int, k: int, client: int, seconds: float) -> None:
        """Client ``i`` of ``k`` of round ``r`` has its reply ready (``seconds`` of training and encoding)."""
        if not self.enabled:
            return
        from .console import duration

        text = f"round {r}/{self.total}  client {i}/{k} (id {client}) done in {duration(seconds)}"
        if self._bar is not None:
            self._bar.update(self._task, info=text.split("  ", 1)[1])
        elif i < k and time.monotonic() - self._last >= self.HEARTBEAT_S:
            self._print(text)

    def update(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from .console import round_line

        line = round_line(row, self.total)  # the same line as `fedsqueeze flower simulate` prints
        if self._bar is None:
            self._print(line)
        else:
            info = line.split("  ", 1)[1].rsplit("  ", 1)[0]  # without "round r/T" and the time
            self._bar.update(self._task, completed=row["round"], info=info)

    def _print(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self._last = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class StepProgress:
    """Progress of a long loop of steps (TGAP pre-training): a rich bar with the loss on a terminal; else a
    plain line at the first and last step and whenever :attr:`HEARTBEAT_S` seconds passed; silent when
    ``enabled`` is false. ``update(step, loss)`` is the ``progress`` hook of
    :func:`fedsqueeze.cg_fedllm.tgap.tgap_pretrain`."""

    HEARTBEAT_S = 10.0

    def __init__(self, label: str, total: int, *, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self._bar: Any = None
        self._last = time.monotonic()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        console = Console(file=sys.stderr)
        if console.is_terminal:
            self._bar = RichProgress(
                TextColumn(label), MofNCompleteColumn(), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(), console=console,
            )  # fmt: skip
            self._task = self._bar.add_task(label, total=total, loss="")
            self._bar.start()

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4g}")
            return
        now = time.monotonic()
        if step in (1, self.total) or now - self._last >= self.HEARTBEAT_S:
            print(f"{self.label} step {step}/{self.total}  loss {loss:.4g}", file=sys.stderr, flush=True)
            self._last = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
