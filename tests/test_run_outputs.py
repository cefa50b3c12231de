"""Run outputs for a reader: summary.json's run-level traffic figures, plots whose lines stand apart."""

from __future__ import annotations

import json

import matplotlib.colors as mcolors
import pytest

from fedsqueeze._plotstyle import REFERENCE_GREY, series_style
from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.fl import run
from fedsqueeze.fl.report import plot_metric_vs_uplink
from fedsqueeze.fl.toy import ToyWorkload

TRAFFIC = (
    "total_bytes",
    "uploads",
    "downloads",
    "lora_bits_per_param",
    "bits_per_param_uplink",
    "bits_per_param_total",
    "client_rounds",
    "total_bits_per_param",
    "total_bytes_to_target",
    "dense_fp32_uplink_bytes",
    "dense_fp32_total_bytes",
    "dense_fp32_ratio_uplink",
    "dense_fp32_ratio_total",
)


def _summary(tmp_path, codec, options):
    cfg = RunConfig(
        model=ModelConfig(name="toy", head="train"),  # the head goes up every round (counted below)
        data=DataConfig(num_clients=4),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8, optimizer="adam", head_lr=None),
        fl=FLConfig(rounds=2, clients_per_round=2, target_metric=0.9),
        codec=CodecConfig(codec, options),
    )
    run(cfg, tmp_path, workload=ToyWorkload(4))
    return json.loads((tmp_path / "summary.json").read_text())


def test_summary_has_run_level_totals_bits_per_param_and_ratio_to_dense(tmp_path):
    dense = _summary(tmp_path / "identity", "identity", {})
    sparse = _summary(tmp_path / "topk", "topk", {"density": 0.05})
    for s in (dense, sparse):
        assert set(TRAFFIC) <= set(s)
        assert s["total_bytes"] == s["total_uplink_bytes"] + s["total_downlink_bytes"]
        assert (s["uploads"], s["downloads"]) == (4, 4)  # 2 rounds x 2 clients, both ways
        params = s["lora_numel"] + s["head_numel"]
        assert s["dense_fp32_uplink_bytes"] == 4 * params * 4
        assert s["bits_per_param_uplink"] == pytest.approx(8 * s["total_uplink_bytes"] / (4 * params))
        # both directions per parameter per client-round (2 rounds x 2 clients)
        assert s["client_rounds"] == 4
        assert s["total_bits_per_param"] == pytest.approx(8 * s["total_bytes"] / (4 * params))
        assert s["dense_fp32_ratio_uplink"] == pytest.approx(
            s["dense_fp32_uplink_bytes"] / s["total_uplink_bytes"]
        )
    # dense fp32 costs 32 bits per parameter plus frame headers (large on the 448-parameter toy): ratio < 1
    assert 32 <= dense["lora_bits_per_param"] < 36 and 0.9 < dense["dense_fp32_ratio_uplink"] <= 1
    assert 64 <= dense["total_bits_per_param"] < 72  # dense fp32 both ways, plus the frame headers
    assert 0.9 < dense["dense_fp32_ratio_total"] <= 1
    assert sparse["lora_bits_per_param"] < 8 and sparse["dense_fp32_ratio_uplink"] > 2
    assert sparse["dense_fp32_ratio_total"] < sparse["dense_fp32_ratio_uplink"]  # the downlink is dense


def test_accuracy_plot_draws_the_target(tmp_path):
    rows = [
        {"round": r, "eval_metric": m, "eval_metric_name": "accuracy", "cum_uplink_bytes": 1000 * r}
        for r, m in ((1, 0.5), (2, 0.6))
    ]
    fig = plot_metric_vs_uplink(rows, tmp_path / "p.png", title="t", target=0.72)
    (ax,) = fig.axes
    flat = [line for line in ax.get_lines() if set(line.get_ydata()) == {0.72}]
    assert len(flat) == 1 and flat[0].get_label() == "target 0.72"
    fig = plot_metric_vs_uplink(rows, tmp_path / "q.png", title="t")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["total (uplink + downlink)", "uplink only"]  # no target: the two curves only


def test_a_one_round_plot_draws_every_curve_its_legend_names(tmp_path):
    rows = [{"round": 1, "eval_metric": 0.5, "eval_metric_name": "accuracy", "cum_uplink_bytes": 1000}]
    fig = plot_metric_vs_uplink(rows, tmp_path / "one.png", title="t")
    for line in fig.axes[0].get_lines():  # one point: only a marker makes it visible
        assert len(line.get_xdata()) > 1 or line.get_marker() not in (None, "None", "", " "), line.get_label()


def _is_grey(color) -> bool:
    r, g, b = mcolors.to_rgb(color)
    return max(r, g, b) - min(r, g, b) < 0.05


def test_series_styles_stay_distinct_and_never_grey():
    styles = [series_style(i) for i in range(36)]
    assert len({tuple(sorted(s.items())) for s in styles}) == 36
    assert not any(_is_grey(s["color"]) for s in styles) and _is_grey(REFERENCE_GREY)
    first13 = styles[:13]
    assert len({(s["color"], s["ls"]) for s in first13}) == 13


def test_study_plot_with_13_codecs_has_distinct_lines(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fedsqueeze.study.plots import plot_groups

    codecs = [f"c{i}" for i in range(13)]
    cells = [
        {
            "task": "t",
            "partition": "p",
            "codec": c,
            "status": "done",
            "curve": [[1, 10 * (i + 1), 0.5], [2, 20 * (i + 1), 0.6]],
        }
        for i, c in enumerate(codecs)
    ]
    group = {"task": "t", "partition": "p", "codecs": [{"codec": c} for c in codecs], "baseline": "c0",
             "target": 0.55, "metric_name": "accuracy"}  # fmt: skip
    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    plot_groups({"groups": [group], "cells": cells}, tmp_path)
    lines = figs[0].axes[0].get_lines()
    curves = [line for line in lines if line.get_label().startswith("c")]
    assert len(curves) == 13
    looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in curves}
    assert len(looks) == 13
    assert not any(_is_grey(line.get_color()) for line in curves if not line.get_label().startswith("c0 "))


def test_rd_plot_codecs_in_colour_references_grey_dashed(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from fedsqueeze.bench.rd import RDReference
    from fedsqueeze.bench.rd_plot import plot_rd
    from fedsqueeze.bench.sources import load_source

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig: figs.append(fig))
    names = ["flm_topk", "topk", "qsgd", "randk", "signsgd", "powersgd", "compeft", "fed_cvlc", "wf_ecq"]
    rows = [
        {"source": "gaussian", "codec": c, "bits_per_param": 0.1 + 0.1 * i, "rel_error": 0.5}
        for i, c in enumerate(names)
    ]
    ref = RDReference(load_source("gaussian", 4096, 0))
    plot_rd(rows, {"gaussian": ref}, tmp_path / "rd.png")
    ax = figs[0].axes[0]
    for line in ax.get_lines():
        if line.get_label() in names:
            assert not _is_grey(line.get_color()), line.get_label()
        else:
            assert _is_grey(line.get_color()) and line.get_linestyle() in ("--", "-.", ":"), line.get_label()
