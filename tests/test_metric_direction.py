"""A lower-is-better metric (a held-out loss) through the run summary, the study aggregate, BD-rate and the
plots, against hand-computed cases; a summary without ``metric_higher_is_better`` is higher-is-better."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedsqueeze.analysis.bd_rate import METHODS, bd_rate, compare, front, log_rate_at
from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.fl import run
from fedsqueeze.fl.report import plot_metric_vs_uplink, summarize
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.study.aggregate import aggregate, reach_target, write_results
from fedsqueeze.study.grid import study_from_dict
from fedsqueeze.study.plots import metric_label, rate_figure

# A loss curve: more rate, lower loss.
RATES = [1.0, 2.0, 4.0, 8.0]
LOSS = [2.0, 1.5, 1.2, 1.0]


# -- BD-rate -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_half_the_rate_at_every_loss_is_minus_50_percent(method) -> None:
    res = bd_rate(RATES, LOSS, [r / 2 for r in RATES], LOSS, method=method, higher_is_better=False)
    assert res.percent == pytest.approx(-50.0, abs=1e-9)
    assert (
        res.accuracy_range == (1.0, 2.0)
        and res.reason is None
        and (res.points, res.reference_points) == (4, 4)
    )
    assert res.higher_is_better is False and res.to_dict()["metric_higher_is_better"] is False
    twice = bd_rate(RATES, LOSS, [r * 2 for r in RATES], LOSS, method=method, higher_is_better=False)
    assert twice.percent == pytest.approx(100.0, abs=1e-9)
    # read as higher-is-better, a falling curve is one point on its front: nothing to compare
    assert bd_rate(RATES, LOSS, [r / 2 for r in RATES], LOSS, method=method).percent is None


@pytest.mark.parametrize("method", sorted(METHODS))
def test_linear_log_rate_in_loss_by_hand(method) -> None:
    # reference ln r = 5 − 10 L on L ∈ [0.2, 0.5]; test ln r = 4 − 8 L on L ∈ [0.15, 0.45]. Overlap
    # [0.2, 0.45]; the difference (4 − 8 L) − (5 − 10 L) = 2 L − 1 has mean 2 · 0.325 − 1 = −0.35 over it, so
    # BD-rate = (e^−0.35 − 1) · 100 = −29.53 %: the test needs less rate for the same loss.
    rl, tl = np.array([0.5, 0.4, 0.3, 0.2]), np.array([0.45, 0.35, 0.25, 0.15])
    res = bd_rate(np.exp(5 - 10 * rl), rl, np.exp(4 - 8 * tl), tl, method=method, higher_is_better=False)
    assert res.accuracy_range == pytest.approx((0.2, 0.45))
    assert res.percent == pytest.approx(100 * (math.exp(-0.35) - 1), rel=1e-9)
    # the same as the higher-is-better BD-rate of the negated loss
    neg = bd_rate(np.exp(5 - 10 * rl), -rl, np.exp(4 - 8 * tl), -tl, method=method)
    assert neg.percent == pytest.approx(res.percent, rel=1e-12)


def test_the_front_of_a_loss_keeps_the_strictly_lower_points() -> None:
    # (2, 2.1) costs more than (1, 2.0) and is worse; (5, 1.2) is no better than the cheaper (4, 1.2)
    r, loss = front([4.0, 2.0, 1.0, 8.0, 3.0, 5.0], [1.2, 2.1, 2.0, 1.0, 1.5, 1.2], higher_is_better=False)
    assert r.tolist() == [1.0, 3.0, 4.0, 8.0] and loss.tolist() == [2.0, 1.5, 1.2, 1.0]
    assert log_rate_at(RATES, LOSS, 1.5, higher_is_better=False) == pytest.approx(math.log(2.0))
    assert log_rate_at(RATES, LOSS, 0.9, higher_is_better=False) is None  # below the curve's lowest loss


def test_a_single_point_against_a_loss_curve() -> None:
    tl = np.array([0.45, 0.35, 0.25, 0.15])
    tr = np.exp(4 - 8 * tl)  # ln r = 4 − 8 L: rate e^1.6 at L = 0.3
    res = compare([10.0], [0.3], tr, tl, higher_is_better=False)
    assert res.mode == "point" and res.accuracy_range == (0.3, 0.3)
    assert res.percent == pytest.approx(100 * (math.exp(1.6) / 10 - 1))
    low = compare([10.0], [0.1], tr, tl, higher_is_better=False)
    assert low.percent is None and "0.1 is below the test curve's range [0.15, 0.45]" in low.reason
    apart = compare([4.0], [0.7], [1.0], [0.71], higher_is_better=False)
    assert "reference 0.7, test 0.71" in apart.reason
    nope = bd_rate([1, 2], [0.6, 0.5], [1, 2], [0.8, 0.7], higher_is_better=False)
    assert "reference [0.5, 0.6], test [0.7, 0.8]" in nope.reason


def test_the_one_sided_bound_in_the_lower_is_better_direction() -> None:
    # a test point with a lower loss (0.9) than the reference's best (1.0 at 8 bits), at 1.5 bits: it
    # reaches loss 1.0 at 1.5 bits or less, so the BD-rate is at most 1.5 / 8 − 1
    ahead = compare(RATES, LOSS, [1.5], [0.9], higher_is_better=False)
    assert ahead.percent is None and "0.9 is below" in ahead.reason
    assert ahead.bound == "at most" and ahead.bound_percent == pytest.approx(100 * (1.5 / 8 - 1))
    # a test point worse (2.5) than the reference's cheapest (2.0 at 1 bit): at least 3 / 1 − 1
    behind = compare(RATES, LOSS, [3.0], [2.5], higher_is_better=False)
    assert behind.bound == "at least" and behind.bound_percent == pytest.approx(200.0)


# -- the run summary -----------------------------------------------------------------------------------------
def _rows(metrics: list[float]) -> list[dict]:
    return [
        {
            "round": i + 1,
            "eval_metric": m,
            "cum_uplink_bytes": 10 * (i + 1),
            "cum_downlink_bytes": 5 * (i + 1),
        }
        for i, m in enumerate(metrics)
    ]


def test_summarize_takes_the_lowest_loss_and_reaches_a_target_from_above() -> None:
    rows = _rows([2.0, 1.4, 1.1, 1.3])
    s = summarize(rows, "eval_loss", 1.2, higher_is_better=False)
    assert (s["best_metric"], s["best_round"], s["final_metric"]) == (1.1, 3, 1.3)
    assert (s["rounds_to_target"], s["uplink_bytes_to_target"], s["total_bytes_to_target"]) == (3, 30, 45)
    assert s["metric_higher_is_better"] is False
    assert summarize(rows, "eval_loss", 1.0, higher_is_better=False)["rounds_to_target"] is None
    # the default is higher-is-better, as before
    acc = summarize(rows, "accuracy", 1.2)
    assert (acc["best_metric"], acc["rounds_to_target"], acc["metric_higher_is_better"]) == (2.0, 1, True)


class _LossToy(ToyWorkload):
    """The toy workload scored by its held-out cross-entropy (lower is better)."""

    metric_name = "eval_loss"
    metric_higher_is_better = False


def test_a_run_with_a_loss_metric_records_its_direction(tmp_path: Path) -> None:
    cfg = RunConfig(
        model=ModelConfig(name="toy"),
        data=DataConfig(num_clients=4),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8),
        fl=FLConfig(rounds=3, clients_per_round=2, target_metric=None),
        codec=CodecConfig("identity", {}),
    )
    run(cfg, tmp_path / "loss", workload=_LossToy(4))
    summary = json.loads((tmp_path / "loss" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "loss" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["eval_metric"] for r in rows if r["eval_metric"] is not None]
    assert summary["metric_name"] == "eval_loss" and summary["metric_higher_is_better"] is False
    assert summary["best_metric"] == min(losses)
    run(cfg, tmp_path / "acc", workload=ToyWorkload(4))  # no attribute: higher is better
    assert json.loads((tmp_path / "acc" / "summary.json").read_text())["metric_higher_is_better"] is True
    fig = plot_metric_vs_uplink(rows, tmp_path / "p.png", title="t", higher_is_better=False)
    assert fig.axes[0].get_ylabel() == "held-out eval_loss (lower is better)"


def test_reach_target_follows_the_direction() -> None:
    curve = [[1, 10, 2.0], [2, 20, 1.5], [3, 30, 1.2]]
    assert reach_target(curve, 1.5, higher_is_better=False) == (2, 20)
    assert reach_target(curve, 1.0, higher_is_better=False) == (None, None)
    assert reach_target(curve, 1.5) == (1, 10)


# -- the study aggregate -------------------------------------------------------------------------------------
def _grid(**study: object):
    return study_from_dict(
        {
            "study": {"seeds": [3, 4], "set": ["fl.rounds=3"], **study},
            "tasks": [{"name": "toy", "config": {"model": {"name": "toy"}, "data": {"num_clients": 6}}}],
            "codecs": [
                {"label": "identity", "name": "identity"},
                {"label": "topk", "name": "topk"},
                {"label": "randk", "name": "randk"},
            ],
            "partitions": [{"label": "iid"}],
        }
    )


def _fake_run(out: Path, config: dict, losses: list[float], up: list[int], bpp: float, *, lower=True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"round": i + 1, "eval_metric": m, "cum_uplink_bytes": b, "lora_bits_per_param": bpp}
        for i, (m, b) in enumerate(zip(losses, up, strict=True))
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "metric_name": "eval_loss" if lower else "accuracy",
        "final_metric": losses[-1],
        "best_metric": min(losses) if lower else max(losses),
        "total_uplink_bytes": up[-1],
        "total_bits_per_param": bpp,
        "rounds": len(rows),
        "wall_s": 1.0,
        "config": config,
    }
    if lower:  # an accuracy run's summary stands for one written before the field existed
        summary["metric_higher_is_better"] = False
    (out / "summary.json").write_text(json.dumps(summary))


LOSS_RUNS = {  # (codec, seed): held-out loss per round, cumulative uplink bytes per round
    ("identity", 3): ([2.0, 1.5, 1.2], [100, 200, 300]),
    ("identity", 4): ([1.9, 1.4, 1.0], [100, 200, 300]),
    ("topk", 3): ([2.2, 1.9, 1.7], [10, 20, 30]),  # weakest: the highest best loss, (1.7 + 1.5) / 2 = 1.6
    ("topk", 4): ([2.1, 1.8, 1.5], [10, 20, 30]),
    ("randk", 3): ([1.8, 1.3, 1.25], [50, 100, 150]),  # best mean (1.25 + 1.9) / 2 = 1.575
    ("randk", 4): ([2.5, 2.0, 1.9], [50, 100, 150]),
}


def test_a_loss_study_takes_the_weakest_as_the_highest_best_and_reaches_the_target_from_above(
    tmp_path: Path,
) -> None:
    grid = _grid()
    for cell in grid.cells():
        losses, up = LOSS_RUNS[(cell.codec, cell.seed)]
        _fake_run(cell.out_dir(tmp_path), cell.config.to_dict(), losses, up, 8.0)
    res = write_results(grid, tmp_path, plots=False)
    (g,) = res["groups"]
    assert g["metric_higher_is_better"] is False and g["metric_name"] == "eval_loss"
    assert g["weakest"] == "topk" and g["target"] == pytest.approx(1.6)
    c = {row["codec"]: row for row in g["codecs"]}
    assert c["identity"]["best_metric"]["mean"] == pytest.approx(1.1)
    # identity falls to 1.6 in round 2 (200 B) in both seeds; topk only in seed 4 (round 3, 30 B); randk
    # only in seed 3 (round 2, 100 B)
    assert c["identity"]["seeds_reached"] == 2 and c["identity"]["uplink_mb_to_target"]["mean"] == 200e-6
    assert c["topk"]["seeds_reached"] == 1 and c["topk"]["rounds_to_target"]["mean"] == 3
    assert c["randk"]["seeds_reached"] == 1 and c["randk"]["rounds_to_target"]["mean"] == 2
    assert c["topk"]["traffic_reduction"] == pytest.approx(1 - 30 / 200)
    assert c["randk"]["traffic_reduction"] == pytest.approx(1 - 100 / 200)
    assert all(cell["metric_higher_is_better"] is False for cell in res["cells"])
    # the differences stay a − b of the values; the text says which sign is better
    pair = next(
        d for d in g["paired_differences"] if (d["a"], d["b"], d["metric"]) == ("identity", "topk", "best")
    )
    assert pair["delta"] == pytest.approx(((1.2 - 1.7) + (1.0 - 1.5)) / 2)
    md = (tmp_path / "results.md").read_text()
    assert "Metric: eval_loss (lower is better: best = lowest; a run reaches the target at or below it)" in md
    assert "lower is better: a negative Δ favours a" in md
    assert all(r["metric_higher_is_better"] is False for r in res["bd_rate"])
    assert "metric_higher_is_better" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_an_accuracy_study_without_the_field_stays_higher_is_better(tmp_path: Path) -> None:
    grid = _grid()
    for cell in grid.cells():
        losses, up = LOSS_RUNS[(cell.codec, cell.seed)]
        _fake_run(cell.out_dir(tmp_path), cell.config.to_dict(), losses, up, 8.0, lower=False)
    res = aggregate(grid, tmp_path)
    (g,) = res["groups"]
    # read as accuracy: the best is the highest, the weakest the lowest best (identity: (2.0 + 1.9) / 2)
    assert g["metric_higher_is_better"] is True and g["weakest"] == "identity"
    assert g["target"] == pytest.approx(1.95)
    c = {row["codec"]: row for row in g["codecs"]}
    assert c["topk"]["best_metric"]["mean"] == pytest.approx(2.15)
    assert c["topk"]["seeds_reached"] == 2 and c["topk"]["rounds_to_target"]["mean"] == 1
    assert c["identity"]["seeds_reached"] == 1  # seed 4 peaks at 1.9
    assert all(r["metric_higher_is_better"] is True for r in res["bd_rate"])


def test_a_loss_study_bd_rate_and_plot_labels(tmp_path: Path) -> None:
    # randk reaches every loss of topk at exactly half its bits per parameter: BD-rate −50 %
    grid = _grid(rates=[2, 4, 8])
    losses = {2: 1.0, 4: 0.8, 8: 0.7}
    for cell in grid.cells():
        if cell.rate is None:  # identity: one point
            loss, bpp = 0.65, 64.0
        else:
            loss, bpp = losses[int(cell.rate)], 5.0 * cell.rate * (0.5 if cell.family == "randk" else 1.0)
        _fake_run(cell.out_dir(tmp_path), cell.config.to_dict(), [1.5, loss], [10, 20], bpp)
    res = aggregate(grid, tmp_path)
    (row,) = [
        r
        for r in res["bd_rate"]
        if (r["codec"], r["reference"], r["metric"], r["rate_basis"]) == ("randk", "topk", "final", "total")
    ]
    assert row["bd_rate_percent"] == pytest.approx(-50.0, abs=1e-9) and row["mode"] == "curve"
    assert row["accuracy_range"] == pytest.approx([0.7, 1.0]) and row["metric_higher_is_better"] is False
    # identity (0.65 at 64 bits) has a lower loss than topk's best (0.7 at 40 bits): at most 64 / 40 − 1
    (dense,) = [
        r
        for r in res["bd_rate"]
        if (r["codec"], r["reference"], r["metric"], r["rate_basis"])
        == ("identity", "topk", "final", "total")
    ]
    assert dense["bound"] == "at most" and dense["bound_percent"] == pytest.approx(100 * (64 / 40 - 1))
    (g,) = res["groups"]
    fig = rate_figure(g)
    assert all(ax.get_ylabel().endswith("(lower is better)") for ax in fig.axes)
    assert metric_label({"metric_higher_is_better": True}, "accuracy") == "accuracy"
    assert metric_label({}, "accuracy") == "accuracy"
