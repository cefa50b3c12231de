"""The end of a run, for every driver: ``summary.json``, the final model and the accuracy plot.

Both drivers of :class:`~.federation.Federation` (``fedsqueeze run`` and the Flower ServerApp) call
:func:`write_run_outputs`, so their summaries carry the same fields; a driver adds its own under ``extra``
(the Flower driver: ``flower``) and names itself in ``engine``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import write_json
from .federation import Federation
from .final import save_final
from .reference import reference_for
from .report import include_tgap, package_versions, plot_metric_vs_uplink, summarize, traffic_totals

__all__ = ["write_run_outputs"]


def write_run_outputs(
    fed: Federation,
    out: Path,
    *,
    engine: str,
    t_start: float,
    load_s: float,
    title: str,
    pre_traffic: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``final_params.safetensors`` (+ ``final_adapter/``), ``summary.json`` and the plot; return
    the summary.

    Parameters
    ----------
    fed
        The finished federation.
    out
        The run folder.
    engine
        ``"local"`` or ``"flower"`` (the summary's ``engine``).
    t_start, load_s
        ``time.perf_counter()`` when this invocation started, and the seconds it spent loading the workload
        (``elapsed_s`` and ``load_s`` of the summary).
    title
        The plot's title.
    pre_traffic
        The traffic of a phase that ran before the rounds (``tgap_traffic``; its bytes count in the totals
        named in ``totals_include_tgap``), or ``None``.
    extra
        Driver-specific summary fields.
    versions
        Package versions beyond :func:`~.report.package_versions`.
    """
    cfg, wl = fed.config, fed.workload
    higher = bool(getattr(wl, "metric_higher_is_better", True))  # absent: higher is better (accuracy)
    summary = summarize(fed.rows, wl.metric_name, cfg.fl.target_metric, higher_is_better=higher)
    summary.update(
        {
            "engine": engine,
            "codec": cfg.codec.name,
            "codec_options": fed.codec_options,  # with the codec's defaults (and a phase's model) filled in
            "downlink_options": cfg.downlink.build().options(),
            "downlink_protocol": fed.downlink.protocol,
            "seed": cfg.fl.seed,
            "lora_numel": wl.lora_spec.numel,
            "head_numel": wl.head_spec.numel,
            "num_clients": fed.n,
            "workload": dict(getattr(wl, "info", {}) or {}),
            "config": cfg.to_dict(),
            "versions": {**package_versions(), **(versions or {})},
            "out_dir": str(out),
            "warnings": fed.health.summary(),
            "reference": reference_for(cfg),  # the recorded benchmark task this config runs, if any
            "load_s": load_s,
            **(extra or {}),
        }
    )
    include_tgap(summary, pre_traffic)
    summary.update(
        traffic_totals(
            fed.ledger,
            wl.lora_spec.numel,
            wl.head_spec.numel,
            summary["total_uplink_bytes"],
            summary["total_downlink_bytes"],
        )
    )
    save_final(out, fed.lora, fed.head, wl)  # final_params.safetensors (+ final_adapter/, PEFT's format)
    summary["elapsed_s"] = time.perf_counter() - t_start  # this invocation, model loading included
    write_json(out / "summary.json", summary)
    offset = 0 if pre_traffic is None else int(pre_traffic["uplink_bytes"])
    plot = out / "accuracy_vs_uplink.png"
    plot_metric_vs_uplink(
        fed.rows, plot, title=title, offset_bytes=offset, target=cfg.fl.target_metric, higher_is_better=higher
    )
    return summary
