"""Console numbers: metrics, sizes, durations, plurals and the per-round / final lines of a run."""

from __future__ import annotations

import pytest

from fedsqueeze.fl.console import duration, final_line, metric, plural, round_line, size


def test_metric_has_four_significant_digits():
    assert metric(0.515625) == "0.5156"
    assert metric(0.44999998807907104) == "0.45"
    assert metric(0.736) == "0.736"
    assert metric(None) == "n/a"


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(0, "0 B"), (812, "812 B"), (1234, "1.23 kB"), (147_456, "147 kB"), (1_160_000, "1.16 MB"),
     (999_600, "1000 kB"), (2_500_000_000, "2.5 GB")],
)  # fmt: skip
def test_size_picks_the_unit_by_size(nbytes, text):
    assert size(nbytes) == text


def test_duration_and_plural():
    assert [duration(s) for s in (0.84, 4.56, 12.3, 332, 3725)] == [
        "0.84 s",
        "4.6 s",
        "12 s",
        "5 min 32 s",
        "1 h 02 min",
    ]
    assert (plural(1, "round"), plural(3, "round"), plural(0, "round")) == ("1 round", "3 rounds", "0 rounds")


SUMMARY = {
    "rounds": 1,
    "metric_name": "accuracy",
    "final_metric": 0.515625,
    "best_metric": 0.44999998807907104,
    "best_round": 1,
    "target_metric": 0.72,
    "rounds_to_target": None,
    "total_uplink_bytes": 1234,
    "total_downlink_bytes": 2_950_000,
    "wall_s": 3.0,
    "load_s": 21.0,
    "elapsed_s": 332.0,
    "out_dir": "runs/x",
}


def test_final_line_formats_every_number_the_same_way():
    line = final_line(SUMMARY)
    assert line == (
        "1 round, final accuracy 0.5156, best 0.45 (round 1), target 0.72 not reached, total 2.95 MB "
        "(uplink 1.23 kB, downlink 2.95 MB), 5 min 32 s (model load 21 s) -> runs/x"
    )
    flower = final_line(
        {**SUMMARY, "rounds": 3, "load_s": None, "elapsed_s": None}, engine="Flower", elapsed_s=9
    )
    assert flower.startswith("3 rounds on Flower, final accuracy 0.5156") and ", 9.0 s -> runs/x" in flower


def test_round_line():
    row = {"round": 2, "eval_metric": 0.7361, "eval_metric_name": "accuracy", "cum_uplink_bytes": 321_000,
           "cum_downlink_bytes": 2_950_000, "wall_s": 12.3}  # fmt: skip
    assert round_line(row, 11) == "round 2/11  accuracy 0.7361  total 3.27 MB (up 321 kB, down 2.95 MB)  12 s"
    assert "(no eval)" in round_line({**row, "eval_metric": None}, 11)
