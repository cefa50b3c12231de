"""Rate sweeps in the study grid, and the comparison machinery of the aggregate: total traffic, rate curves,
BD-rates (bd_rate.json), the seed-spread screen and the rate plots, on hand-made cell outputs."""

from __future__ import annotations

import copy
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from fedsqueeze.analysis.bd_rate import log_rate_at
from fedsqueeze.cli import main as cli_main
from fedsqueeze.errors import ConfigError
from fedsqueeze.study.aggregate import (
    aggregate,
    codec_spread,
    paired_differences,
    seed_differences,
    write_results,
)
from fedsqueeze.study.grid import load_study, study_from_dict, study_path
from fedsqueeze.study.plots import rate_figure

SWEEP_TOML = """
[study]
name = "sweep"
seeds = [0]
rates = [0.5, 1, 2.5]

[[tasks]]
name = "toy"
config.model = { name = "toy" }
config.data = { num_clients = 6 }
config.fl = { rounds = 2, clients_per_round = 2 }
codec_set = { topk = ["fl.error_feedback=false"], "qsgd@r4" = ["fl.server_lr=0.5"] }

[[partitions]]
label = "iid"

[[codecs]]
label = "identity"
name = "identity"

[[codecs]]
label = "fp16"
name = "fp16"

[[codecs]]
label = "topk"
name = "topk"
options = { value_bits = 16 }

[[codecs]]
label = "qsgd"
name = "qsgd"
rates = [4, 8]

[[codecs]]
label = "randk-fixed"
name = "randk"
rates = []

[[codecs]]
label = "compeft-r1"
name = "compeft"
options = { rate = 1.0 }
"""


# -- the grid -----------------------------------------------------------------------------------------------
def test_a_study_rates_list_sweeps_every_codec_with_a_rate_option(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP_TOML, encoding="utf-8")
    grid = load_study(path)
    assert grid.rates == (0.5, 1.0, 2.5)
    labels = [c.label for c in grid.columns]
    assert labels == [
        "identity", "fp16", "topk@r0.5", "topk@r1", "topk@r2.5", "qsgd@r4", "qsgd@r8", "randk-fixed",
        "compeft-r1",
    ]  # fmt: skip
    cells = {c.codec: c for c in grid.cells()}
    assert [c.id for c in grid.cells()][2] == "toy/iid/topk@r0.5/seed0"
    topk = cells["topk@r2.5"]
    assert topk.config.codec.name == "topk" and topk.config.codec.options == {"value_bits": 16, "rate": 2.5}
    assert (topk.family, topk.rate) == ("topk", 2.5)
    assert topk.config.fl.error_feedback is False  # codec_set by family reaches every column of it
    assert (
        cells["qsgd@r4"].config.codec.options == {"rate": 4.0} and cells["qsgd@r4"].config.fl.server_lr == 0.5
    )
    assert cells["qsgd@r8"].config.fl.server_lr != 0.5  # codec_set by column reaches that column only
    assert (cells["identity"].family, cells["identity"].rate) == (
        "identity",
        None,
    )  # no rate option: one cell
    assert cells["randk-fixed"].config.codec.options == {} and cells["randk-fixed"].rate is None  # rates = []
    assert cells["compeft-r1"].config.codec.options == {"rate": 1.0}  # its options fix the rate: not swept
    assert grid.references() == ("topk", "identity")


def test_a_predictive_entry_sweeps_its_inner_codecs_rate() -> None:
    data = {
        "study": {"seeds": [0], "rates": [0.5]},
        "tasks": [{"name": "toy", "config": {"model": {"name": "toy"}, "data": {"num_clients": 6}}}],
        "partitions": [{"label": "iid"}],
        "codecs": [
            {"label": "identity", "name": "identity"},
            {"label": "pred", "name": "predictive", "options": {"inner": "wf_ecq"}, "rates": [0.25, 1]},
            {
                "label": "pred-study",
                "name": "predictive",
                "options": {"inner": "topk", "predictor": "scalar"},
            },
            {
                "label": "pred-fixed",
                "name": "predictive",
                "options": {"inner": "topk", "inner_options": {"rate": 2}},
            },
            {"label": "pred-sign", "name": "predictive", "options": {"inner": "signsgd"}},
        ],
    }
    grid = study_from_dict(data)
    cells = {c.codec: c for c in grid.cells()}
    assert sorted(cells) == [
        "identity",
        "pred-fixed",
        "pred-sign",
        "pred-study@r0.5",
        "pred@r0.25",
        "pred@r1",
    ]
    pred = cells["pred@r0.25"]
    assert pred.config.codec.options == {"inner": "wf_ecq", "inner_options": {"rate": 0.25}}
    assert (pred.family, pred.rate) == ("pred", 0.25)
    assert cells["pred-study@r0.5"].config.codec.options == {
        "inner": "topk", "predictor": "scalar", "inner_options": {"rate": 0.5}
    }  # fmt: skip
    assert cells["pred-fixed"].config.codec.options["inner_options"] == {"rate": 2}  # fixed by its options
    assert cells["pred-sign"].rate is None  # a fixed-rate inner codec: nothing to sweep
    data["codecs"][3]["rates"] = [1]
    with pytest.raises(
        ConfigError, match=re.escape("options.inner_options.rate and rates both set the rate")
    ):
        study_from_dict(data)
    data["codecs"][3]["rates"] = []
    data["codecs"][4]["rates"] = [1]
    with pytest.raises(ConfigError, match="codec predictive has no rate option"):
        study_from_dict(data)


def _sweep_dict() -> dict:
    return {
        "study": {"seeds": [0], "rates": [1, 2]},
        "tasks": [{"name": "toy", "config": {"model": {"name": "toy"}, "data": {"num_clients": 6}}}],
        "partitions": [{"label": "iid"}],
        "codecs": [{"label": "identity", "name": "identity"}, {"label": "topk", "name": "topk"}],
    }


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: d["codecs"][0].update(rates=[1]),
            "codecs.identity.rates: codec identity has no rate option",
        ),
        (lambda d: d["codecs"][1].update(rates=[1], options={"rate": 2}), "options.rate and rates"),
        (lambda d: d["study"].update(rates=[0]), "study.rates must be a list of rates > 0"),
        (lambda d: d["study"].update(rates=[1, 1]), "lists a rate twice"),
        (lambda d: d["study"].update(rates=[True]), "study.rates"),
        (lambda d: d["codecs"][1].update(rates="1"), "codecs.topk.rates"),
        (
            lambda d: d["study"].update(baseline="topk"),
            "swept over rates; name one of its columns (topk@r1, topk@r2)",
        ),
        (lambda d: d["study"].update(bd_references=["nope"]), "study.bd_references: 'nope'"),
        (lambda d: d["codecs"][1].update(options={"density": 0.1}), "give density or rate, not both"),
        (lambda d: d["codecs"][1].update(label="topk@r1"), "codecs[1].label"),  # @ is reserved for sweeps
    ],
)
def test_bad_rate_sweeps_are_config_errors(mutate, needle: str) -> None:
    data = _sweep_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        study_from_dict(data)


def test_the_baseline_may_be_one_column_of_a_sweep_and_the_packaged_sweep_loads() -> None:
    data = _sweep_dict()
    data["study"]["baseline"] = "topk@r2"
    grid = study_from_dict(data)
    assert grid.baseline == "topk@r2" and grid.references() == ("topk",)
    sweep = load_study(study_path("rate-sweep"))
    labels = {c.label for c in sweep.columns}
    assert {"identity", "fp16", "signsgd", "topk@r0.05", "topk@r2", "qsgd@r3", "powersgd@r8.4"} <= labels
    assert not any(label.startswith(("identity@", "fp16@", "signsgd@")) for label in labels)
    assert len(sweep.cells()) == len(sweep.columns) * len(sweep.seeds)


# -- the aggregate, on hand-made runs ------------------------------------------------------------------------
SEEDS = (0, 1)
# column: final metric per seed, uplink / downlink bytes per round, total and LoRA-uplink bits per parameter
RUNS: dict[str, tuple[tuple[float, float], int, int, float, float]] = {
    "identity": ((0.80, 0.81), 100, 100, 70.0, 34.0),
    "fp16": ((0.70, 0.70), 50, 100, 54.0, 17.0),
    "topk@r2": ((0.60, 0.62), 20, 100, 40.0, 2.0),
    "topk@r4": ((0.70, 0.72), 40, 100, 44.0, 4.0),
    "topk@r8": ((0.76, 0.78), 80, 100, 52.0, 8.0),
    # randk: the same accuracies at exactly half of topk's bits per parameter, both bases
    "randk@r2": ((0.60, 0.62), 10, 100, 20.0, 1.0),
    "randk@r4": ((0.70, 0.72), 20, 100, 22.0, 2.0),
    "randk@r8": ((0.76, 0.78), 40, 100, 26.0, 4.0),
}


def _agg_grid():
    data = {
        "study": {"seeds": list(SEEDS), "rates": [2, 4, 8]},
        "tasks": [
            {"name": "toy", "target": 0.7, "config": {"model": {"name": "toy"}, "data": {"num_clients": 6}}}
        ],
        "partitions": [{"label": "iid"}],
        "codecs": [
            {"label": "identity", "name": "identity"},
            {"label": "fp16", "name": "fp16"},
            {"label": "topk", "name": "topk"},
            {"label": "randk", "name": "randk"},
        ],
    }
    return study_from_dict(data)


def _fake_run(out: Path, cell, final: float, up: int, down: int, total_bpp: float, lora_bpp: float) -> None:
    """Two rounds, 0.5 then ``final``; ``up`` / ``down`` bytes and 1.5 simulated seconds a round."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "round": r,
            "eval_metric": m,
            "cum_uplink_bytes": up * r,
            "cum_downlink_bytes": down * r,
            "lora_bits_per_param": lora_bpp,
            "sim_time_s": 1.5 * r,
        }
        for r, m in ((1, 0.5), (2, final))
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "metric_name": "accuracy",
        "final_metric": final,
        "best_metric": final,
        "total_uplink_bytes": 2 * up,
        "total_downlink_bytes": 2 * down,
        "total_bits_per_param": total_bpp,
        "sim_time_s": 3.0,
        "rounds": 2,
        "wall_s": 1.0,
        "config": cell.config.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def swept(tmp_path: Path):
    grid = _agg_grid()
    for cell in grid.cells():
        finals, up, down, total_bpp, lora_bpp = RUNS[cell.codec]
        _fake_run(cell.out_dir(tmp_path), cell, finals[cell.seed], up, down, total_bpp, lora_bpp)
    return grid, tmp_path


def _bd(res: dict, codec: str, ref: str, metric: str = "final", basis: str = "total") -> dict:
    (row,) = [
        r
        for r in res["bd_rate"]
        if (r["codec"], r["reference"], r["metric"], r["rate_basis"]) == (codec, ref, metric, basis)
    ]
    return row


def test_total_traffic_is_the_headline_and_the_uplink_fields_stay(swept) -> None:
    grid, root = swept
    res = aggregate(grid, root)
    (g,) = res["groups"]
    c = {row["codec"]: row for row in g["codecs"]}
    assert (c["topk@r8"]["family"], c["topk@r8"]["rate"], c["topk@r8"]["codec_name"]) == ("topk", 8.0, "topk")
    assert c["identity"]["rate"] is None
    # target 0.7 (fixed): every run reaches it in round 2 (round 1 is 0.5)
    ident, top8 = c["identity"], c["topk@r8"]
    assert ident["mb_to_target_total"]["mean"] == pytest.approx(400e-6)
    assert ident["total_bytes_to_target"]["mean"] == 400
    assert top8["mb_to_target_total"]["mean"] == pytest.approx(360e-6)
    assert top8["uplink_mb_to_target"]["mean"] == pytest.approx(160e-6)
    assert top8["downlink_mb_to_target"]["mean"] == pytest.approx(200e-6)
    assert top8["traffic_reduction_total"] == pytest.approx(1 - 360 / 400)
    assert top8["traffic_reduction"] == top8["traffic_reduction_uplink"] == pytest.approx(1 - 160 / 200)
    assert ident["sim_time_to_target_s"]["mean"] == pytest.approx(3.0)
    assert top8["total_mb"]["mean"] == pytest.approx(360e-6) and top8["downlink_mb"]["mean"] == pytest.approx(
        2e-4
    )
    assert top8["total_bits_per_param"] == {"mean": 52.0, "std": 0.0, "n": 2}
    assert top8["final_metric"]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    cell = next(r for r in res["cells"] if r["codec"] == "topk@r8" and r["seed"] == 0)
    assert (cell["total_bytes"], cell["total_bytes_to_target"], cell["sim_time_to_target_s"]) == (
        360,
        360,
        3.0,
    )
    assert (cell["family"], cell["rate"]) == ("topk", 8.0)


def test_bd_rates_against_topk_and_dense(swept) -> None:
    grid, root = swept
    res = aggregate(grid, root)
    assert res["bd_references"] == ["topk", "identity"]
    need = {"task", "partition", "codec", "reference", "bd_rate_percent", "accuracy_range"}
    assert res["bd_rate"] and all(need <= set(r) for r in res["bd_rate"])
    for basis in ("total", "uplink"):
        row = _bd(res, "randk", "topk", basis=basis)
        assert row["bd_rate_percent"] == pytest.approx(-50.0, abs=1e-9), basis
        assert row["accuracy_range"] == pytest.approx([0.61, 0.77]) and row["mode"] == "curve"
        assert (row["points"], row["reference_points"], row["reason"]) == (3, 3, None)
    assert _bd(res, "randk", "topk", metric="best")["bd_rate_percent"] == pytest.approx(-50.0)
    # fp16 is a single point (54 bits at 0.70): the rate ratio against topk's curve at 0.70
    fp16 = _bd(res, "fp16", "topk")
    topk_x, topk_y = [40.0, 44.0, 52.0], [0.61, 0.71, 0.77]
    assert fp16["mode"] == "point" and fp16["accuracy_range"] == [0.7, 0.7]
    assert fp16["bd_rate_percent"] == pytest.approx(
        100 * (54.0 / math.exp(log_rate_at(topk_x, topk_y, 0.7)) - 1)
    )
    # dense fp32 (0.805) is more accurate than any topk point: no rate at equal accuracy
    dense = _bd(res, "identity", "topk")
    assert dense["bd_rate_percent"] is None and "above the reference curve's range" in dense["reason"]
    assert _bd(res, "topk", "identity")["bd_rate_percent"] is None  # the same, seen from the dense side
    assert not [r for r in res["bd_rate"] if r["codec"] == r["reference"]]


def test_seed_spread_screen_compares_columns_at_the_same_rate(swept) -> None:
    grid, root = swept
    (g,) = aggregate(grid, root)["groups"]
    pairs = {(d["a"], d["b"]): d for d in g["seed_differences"]}
    assert set(pairs) == {
        ("identity", "fp16"),
        ("topk@r2", "randk@r2"),
        ("topk@r4", "randk@r4"),
        ("topk@r8", "randk@r8"),
    }
    d = pairs[("identity", "fp16")]  # Δ 0.105 against 2·sqrt(std(0.80, 0.81)²/2 + 0²/2) = 0.01
    assert d["delta"] == pytest.approx(0.105)
    assert d["threshold"] == pytest.approx(2 * math.sqrt(statistics.stdev([0.80, 0.81]) ** 2 / 2))
    assert d["threshold"] == pytest.approx(0.01)
    assert d["exceeds"] is True
    same = pairs[("topk@r4", "randk@r4")]
    assert same["delta"] == pytest.approx(0.0) and same["exceeds"] is False and same["rate"] == 4.0


def test_one_seed_is_not_assessed(tmp_path: Path) -> None:
    grid = _agg_grid()
    for cell in grid.cells():
        if cell.seed == 0:
            finals, up, down, total_bpp, lora_bpp = RUNS[cell.codec]
            _fake_run(cell.out_dir(tmp_path), cell, finals[0], up, down, total_bpp, lora_bpp)
    (g,) = aggregate(grid, tmp_path)["groups"]
    assert g["seed_differences"] and all(d["exceeds"] is None and d["reason"] for d in g["seed_differences"])


def test_written_outputs_bd_rate_json_report_and_rate_plots(swept) -> None:
    grid, root = swept
    res = write_results(grid, root, command="fedsqueeze study sweep")
    assert json.loads((root / "bd_rate.json").read_text()) == res["bd_rate"]
    md = (root / "results.md").read_text()
    assert "BD-rate vs `topk`" in md and "BD-rate vs `identity`" in md
    assert "| randk | -50.0 % | -50.0 % | -50.0 % | -50.0 % |" in md
    assert (
        "Differences that exceed the seed spread" in md
        and "- `identity` vs `fp16` (unswept): Δ +0.1050" in md
    )
    assert "`topk@r4` vs `randk@r4`" not in md
    assert "| topk@r8 | 2/2 | 8 |" in md and "| 10.0 % | 20.0 % |" in md  # total and uplink reductions
    header = (root / "results.csv").read_text().splitlines()[0].split(",")
    assert {"family", "rate", "total_mb_mean", "mb_to_target_total_mean", "traffic_reduction_total"} <= set(
        header
    )
    for name in ("toy__iid.png", "toy__iid__rate.png", "toy__iid__rate_uplink.png"):
        assert (root / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_rate_figure_draws_every_family_on_a_log_axis(swept) -> None:
    grid, root = swept
    (g,) = aggregate(grid, root)["groups"]
    fig = rate_figure(copy.deepcopy(g), "total_bits_per_param")
    final, best = fig.axes[:2]
    assert final.get_xscale() == "log" and best.get_xscale() == "log"
    series = {c.get_label().split(" ")[0]: c for c in final.containers}
    assert set(series) == {"identity", "fp16", "topk", "randk"}
    assert list(series["randk"].lines[0].get_xdata()) == [20.0, 22.0, 26.0]
    assert list(series["randk"].lines[0].get_ydata()) == pytest.approx([0.61, 0.71, 0.77])
    uplink = rate_figure(g, "uplink_bits_per_param")
    ups = {c.get_label().split(" ")[0]: c for c in uplink.axes[0].containers}
    assert list(ups["topk"].lines[0].get_xdata()) == [2.0, 4.0, 8.0]


# -- end to end on the toy model ----------------------------------------------------------------------------
def test_a_toy_rate_sweep_end_to_end(tmp_path: Path) -> None:
    study = tmp_path / "toy.toml"
    study.write_text(
        """
[study]
seeds = [0]
rates = [8, 16]

[[tasks]]
name = "toy"
config.model = { name = "toy", lora_r = 4 }
config.data = { num_clients = 4 }
config.train = { lr = 0.05, batch_size = 16, max_steps = 2 }
config.fl = { rounds = 2, clients_per_round = 2 }

[[partitions]]
label = "iid"

[[codecs]]
label = "identity"
name = "identity"

[[codecs]]
label = "topk"
name = "topk"
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert cli_main(["study", str(study), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "toy" / "iid" / "topk@r16" / "seed0" / "summary.json").read_text())
    assert summary["codec_options"]["rate"] == 16.0
    assert {"total_bytes", "total_bytes_to_target", "sim_time_to_target_s", "total_bits_per_param"} <= set(
        summary
    )
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == {"done": 3, "failed": 0, "missing": 0}
    (g,) = res["groups"]
    bits = {c["codec"]: c["uplink_bits_per_param"]["mean"] for c in g["codecs"]}
    assert bits["topk@r8"] <= 8 < bits["topk@r16"] <= 16  # each column at its own target rate
    assert [p["codec"] for p in next(f for f in g["families"] if f["family"] == "topk")["points"]] == [
        "topk@r8",
        "topk@r16",
    ]
    assert json.loads((out / "bd_rate.json").read_text()) == res["bd_rate"]


def test_paired_differences_cancel_the_spread_the_seed_causes(swept) -> None:
    grid, root = swept
    (g,) = aggregate(grid, root)["groups"]
    pairs = {(d["a"], d["b"], d["metric"]): d for d in g["paired_differences"]}
    assert {m for (_, _, m) in pairs} == {"final", "best"}
    d = pairs[("identity", "fp16", "final")]
    a = next(c for c in g["codecs"] if c["codec"] == "identity")["per_seed"]
    b = next(c for c in g["codecs"] if c["codec"] == "fp16")["per_seed"]
    diffs = [a[s]["final"] - b[s]["final"] for s in sorted(a)]
    assert d["seeds"] == sorted(a) and d["differences"] == pytest.approx(diffs)
    assert d["delta"] == pytest.approx(statistics.fmean(diffs))
    assert d["threshold"] == pytest.approx(2 * statistics.stdev(diffs) / math.sqrt(len(diffs)))
    assert d["exceeds"] is (abs(d["delta"]) > d["threshold"])


def test_paired_differences_detect_a_shift_the_unpaired_screen_misses(tmp_path: Path) -> None:
    # Two columns whose seeds differ a lot (std 0.1) but whose per-seed gap is a steady +0.02: the unpaired
    # screen cannot see it, the paired one does.
    group = {
        "codecs": [
            {
                "codec": "a",
                "rate": None,
                "per_seed": {s: {"final": v + 0.02, "best": v + 0.03} for s, v in enumerate([0.5, 0.6, 0.7])},
                "final_metric": {"mean": 0.62, "std": 0.1, "n": 3},
            },
            {
                "codec": "b",
                "rate": None,
                "per_seed": {s: {"final": v, "best": v} for s, v in enumerate([0.5, 0.6, 0.7])},
                "final_metric": {"mean": 0.60, "std": 0.1, "n": 3},
            },
        ]
    }
    (unpaired,) = seed_differences(group)
    assert unpaired["exceeds"] is False
    final, best = paired_differences(group)
    assert final["metric"] == "final" and final["delta"] == pytest.approx(0.02)
    assert final["std"] == pytest.approx(0.0, abs=1e-12) and final["exceeds"] is True
    assert best["delta"] == pytest.approx(0.03) and best["exceeds"] is True
    one = paired_differences({"codecs": [dict(c, per_seed={0: c["per_seed"][0]}) for c in group["codecs"]]})
    assert all(d["exceeds"] is None and d["reason"] for d in one)


def _col(codec: str, rate: float | None, finals: list[float], bests: list[float]) -> dict:
    def stats(v: list[float]) -> dict:
        return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}

    return {"codec": codec, "rate": rate, "final_metric": stats(finals), "best_metric": stats(bests)}


def test_codec_spread_per_rate_against_the_pooled_seed_std() -> None:
    group = {
        "baseline": "identity",
        "codecs": [
            _col("identity", None, [0.80, 0.84], [0.82, 0.86]),
            _col("topk@r0.25", 0.25, [0.60, 0.64], [0.70, 0.71]),
            _col("wf_ecq@r0.25", 0.25, [0.70, 0.72], [0.70, 0.73]),
            _col("topk@r1", 1.0, [0.78], [0.79]),  # one seed at this rate: the baseline's std is used
            _col("wf_ecq@r1", 1.0, [0.79], [0.80]),
        ],
    }
    low, high = codec_spread(group)
    assert (low["rate"], high["rate"]) == (0.25, 1.0)
    f = low["final"]
    assert f["lowest"] == ["topk@r0.25", pytest.approx(0.62)]
    assert f["highest"] == ["wf_ecq@r0.25", pytest.approx(0.71)]
    assert f["spread"] == pytest.approx(0.09)
    # pooled std: sqrt(mean(var)) = sqrt((0.0008 + 0.0002) / 2)
    assert f["seed_std"] == pytest.approx(math.sqrt(0.0005)) and f["std_source"] == "rate"
    assert f["separates"] is True  # 0.09 > 2 * 0.02236
    b = low["best"]  # 0.715 - 0.705 = 0.01 against 2 * sqrt((0.00005 + 0.00045) / 2) = 0.0316
    assert b["spread"] == pytest.approx(0.01) and b["seed_std"] == pytest.approx(math.sqrt(0.00025))
    assert b["separates"] is False
    h = high["final"]
    assert h["std_source"] == "baseline" and h["seed_std"] == pytest.approx(statistics.stdev([0.80, 0.84]))
    assert h["spread"] == pytest.approx(0.01) and h["separates"] is False
    alone = codec_spread({"baseline": "x", "codecs": [_col("topk@r1", 1.0, [0.7], [0.7])]})
    assert alone[0]["final"]["separates"] is None and alone[0]["final"]["std_source"] is None
