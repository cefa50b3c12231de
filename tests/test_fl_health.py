"""Run health: the rules of ``RunHealth`` and the ``warnings`` of ``metrics.jsonl`` and ``summary.json``."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import pytest
import torch

from fedsqueeze.codecs.baselines.topk import TopK
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint, save_checkpoint
from fedsqueeze.fl.health import RunHealth, describe, log_warnings
from fedsqueeze.fl.toy import ToyWorkload
from support.loop import CrashError, CrashingToy, N, make_config, rows_of, strip_times

CLIENT_MSG = "mean client reconstruction error 1 >= 1: the decoded updates are no better than sending nothing"


def row(r, *, crel=0.5, rel=0.5, res=(1.0, 1.0)):
    return {"round": r, "client_rel_error": crel, "rel_error": rel, "residual_norms": list(res)}


def codes(warnings):
    return [w["code"] for w in warnings]


# -- the rules ----------------------------------------------------------------------------------------------
def test_healthy_rows_give_no_warnings():
    h = RunHealth()
    rows = [row(r, crel=0.9, rel=2.5, res=(0.5 + 0.1 * r, 0.4)) for r in range(1, 9)]
    assert [h.observe(x) for x in rows] == [[]] * 8
    assert h.summary() == [] and describe(h.summary()) == ""


def test_client_rel_error_at_one_warns_from_the_first_round():
    h = RunHealth()
    got = [h.observe(row(r, crel=c)) for r, c in enumerate([1.0, 1.0, 0.99, 3.5], start=1)]
    assert got[0] == [{"code": "client_rel_error_high", "message": CLIENT_MSG}]
    assert [codes(g) for g in got] == [
        ["client_rel_error_high"],
        ["client_rel_error_high"],
        [],
        ["client_rel_error_high"],
    ]
    assert got[3][0]["message"].startswith("mean client reconstruction error 3.5 >= 1")
    assert h.summary() == [{"code": "client_rel_error_high", "message": CLIENT_MSG, "rounds": [1, 2, 4]}]
    assert describe(h.summary()) == "1 warning: client_rel_error_high (rounds 1-2, 4)"


def test_aggregate_rel_error_counts_only_without_error_feedback():
    # With error feedback the aggregate carries earlier residuals: above 1 in healthy runs, no warning.
    assert RunHealth(error_feedback=True).observe(row(1, rel=1.0)) == []
    got = RunHealth(error_feedback=False).observe(row(1, rel=1.0))
    assert got == [
        {
            "code": "rel_error_high",
            "message": "aggregate reconstruction error 1 >= 1 (no error feedback): the applied update is no "
            "closer to the clients' mean update than a zero update",
        }
    ]
    assert RunHealth(error_feedback=False).observe(row(1, rel=0.999)) == []


def test_geometric_residual_growth_warns():
    h = RunHealth()
    got = [h.observe(row(r, res=(m, m))) for r, m in enumerate([1.0, 2.0, 4.0, 8.0, 16.0], start=1)]
    assert [codes(g) for g in got] == [[], [], [], ["residual_growth"], ["residual_growth"]]
    assert got[3][0]["message"] == (
        "mean error-feedback residual norm rose in each of the last 3 rounds, 1 -> 8 (8x >= 5x): "
        "error feedback is diverging"
    )
    assert h.summary()[0]["rounds"] == [4, 5]


@pytest.mark.parametrize(
    ("means", "fires"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], []),  # linear accumulation (EF warming up): 4x at most
        ([1.0, 2.0, 3.0, 5.0], [4]),  # exactly 5x
        ([1.0, 2.0, 3.0, 4.99], []),
        ([0.0, 1.0, 2.0, 30.0], []),  # no base to compare with
        ([1.0, 2.0, 4.0, 3.0, 8.0, 16.0, 32.0], [7]),  # a dip restarts the streak
        ([2.0, 2.0, 4.0, 20.0], []),  # flat is no rise
    ],
)
def test_residual_growth_rule(means, fires):
    h = RunHealth()
    for r, m in enumerate(means, start=1):
        h.observe(row(r, res=(m,)))
    assert [w["rounds"] for w in h.summary()] == ([fires] if fires else [])


def test_rounds_without_residual_norms_are_skipped_not_breaking_the_streak():
    h = RunHealth()
    res = [(1.0,), (2.0,), (), (4.0,), (8.0,)]
    got = [h.observe({"round": r, "residual_norms": list(x)}) for r, x in enumerate(res, start=1)]
    assert [codes(g) for g in got] == [[], [], [], [], ["residual_growth"]]


def test_none_and_nan_do_not_crash():
    h = RunHealth(error_feedback=False)
    assert h.observe({"round": 1, "client_rel_error": None, "rel_error": None, "residual_norms": []}) == []
    assert h.observe({"round": 2}) == []  # missing columns: nothing to check
    got = h.observe(row(3, crel=math.nan, rel=math.nan, res=(1.0, math.nan)))
    assert codes(got) == ["client_rel_error_high", "rel_error_high", "residual_growth"]
    assert got[0]["message"].startswith("mean client reconstruction error nan >= 1")
    assert got[2]["message"] == "an error-feedback residual norm is not finite (1, nan)"
    assert codes(h.observe(row(4, res=(None, math.inf)))) == ["residual_growth"]
    assert h.summary()[2]["rounds"] == [3, 4]


def test_replay_equals_observing_and_logging_levels(caplog):
    rows = [row(r, crel=1.0 if r in (1, 2, 4) else 0.2, res=(2.0**r,)) for r in range(1, 7)]
    h = RunHealth()
    log = logging.getLogger("test.health")
    with caplog.at_level(logging.INFO, logger="test.health"):
        for x in rows:
            log_warnings(log, x["round"], h.observe(x), h)
    assert RunHealth.replay(rows).summary() == h.summary()
    # WARNING when a code starts firing (rounds 1 and 4 for the client error, 4 for the growth), else INFO.
    got = [(rec.levelno, rec.getMessage().split(":")[0:2]) for rec in caplog.records]
    assert got == [
        (logging.WARNING, ["round 1", " client_rel_error_high"]),
        (logging.INFO, ["round 2", " client_rel_error_high"]),
        (logging.WARNING, ["round 4", " client_rel_error_high"]),
        (logging.WARNING, ["round 4", " residual_growth"]),
        (logging.INFO, ["round 5", " residual_growth"]),
        (logging.INFO, ["round 6", " residual_growth"]),
    ]


# -- end to end on the toy workload ---------------------------------------------------------------------
@pytest.fixture
def zero_decoder(monkeypatch):
    """topk frames decode to zeros (client error feedback and server alike): an empty reconstruction."""

    def zeros(cls, body, spec, *, seed):
        return torch.zeros(spec.numel, dtype=torch.float32)

    monkeypatch.setattr(TopK, "decode_flat", classmethod(zeros))


def test_run_with_an_empty_reconstruction_warns(tmp_path, zero_decoder, caplog):
    with caplog.at_level(logging.INFO, logger="fedsqueeze.fl.loop"):
        summary = run(make_config(rounds=4), tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    assert [r["client_rel_error"] for r in rows] == [1.0] * 4
    assert [r["warnings"] for r in rows] == [[{"code": "client_rel_error_high", "message": CLIENT_MSG}]] * 4
    expect = [{"code": "client_rel_error_high", "message": CLIENT_MSG, "rounds": [1, 2, 3, 4]}]
    assert summary["warnings"] == expect
    assert json.loads((tmp_path / "summary.json").read_text())["warnings"] == expect
    health = [rec for rec in caplog.records if "client_rel_error_high" in rec.getMessage()]
    assert [rec.levelno for rec in health] == [logging.WARNING] + [logging.INFO] * 3
    assert health[0].getMessage().startswith("round 1: client_rel_error_high: mean client reconstruction")

    # Without error feedback the aggregate's error (1.0, nothing applied) warns too.
    summary = run(make_config(rounds=2, error_feedback=False), tmp_path / "noef", workload=ToyWorkload(N))
    assert [(w["code"], w["rounds"]) for w in summary["warnings"]] == [
        ("client_rel_error_high", [1, 2]),
        ("rel_error_high", [1, 2]),
    ]


def test_healthy_run_has_no_warnings(tmp_path):
    summary = run(make_config(rounds=4), tmp_path, workload=ToyWorkload(N))
    assert [r["warnings"] for r in rows_of(tmp_path)] == [[]] * 4
    assert summary["warnings"] == [] and json.loads((tmp_path / "summary.json").read_text())["warnings"] == []


def test_resume_keeps_the_warnings(tmp_path, zero_decoder):
    cfg = make_config(rounds=4)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    s_whole = run(cfg, whole, workload=ToyWorkload(N))
    with pytest.raises(CrashError):
        run(cfg, cut, workload=CrashingToy(crash_after_calls=2 * 2 + 1))  # dies in round 3
    s_cut = run(cfg, cut, workload=ToyWorkload(N), resume=True)
    assert strip_times(rows_of(cut)) == strip_times(rows_of(whole))
    assert s_cut["warnings"] == s_whole["warnings"]
    assert s_cut["warnings"][0]["rounds"] == [1, 2, 3, 4]

    # A checkpoint written before rows had ``warnings``: resuming gives its rows theirs.
    state = load_checkpoint(cut)
    for r in state["rows"]:
        del r["warnings"]
    save_checkpoint(cut, state)
    s_more = run(make_config(rounds=5), cut, workload=ToyWorkload(N), resume=True)
    assert [len(r["warnings"]) for r in rows_of(cut)] == [1] * 5
    assert s_more["warnings"][0]["rounds"] == [1, 2, 3, 4, 5]


CLI_SCRIPT = """
import sys, torch
from fedsqueeze.codecs.baselines.topk import TopK
from fedsqueeze.cli import main
TopK.decode_flat = classmethod(lambda cls, body, spec, *, seed: torch.zeros(spec.numel))
sys.exit(main(sys.argv[1:]))
"""


def test_cli_shows_the_warning_and_ends_with_it(tmp_path):
    # A child process: the console is plain Python logging (no pytest handlers), as for a user.
    cfg = tmp_path / "toy.toml"
    cfg.write_text(
        '[model]\nname = "toy"\n[data]\nnum_clients = 6\n[train]\nlr = 0.05\nmax_steps = 2\n'
        '[fl]\nrounds = 3\nclients_per_round = 2\n[codec]\nname = "topk"\n'
    )
    out = tmp_path / "out"
    argv = [sys.executable, "-c", CLI_SCRIPT, "run", str(cfg), "--out", str(out), "--no-progress"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"round 1: client_rel_error_high: {CLIENT_MSG}" in proc.stderr
    assert "round 2: client_rel_error_high" not in proc.stderr  # repeats go to INFO
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("3 rounds, final accuracy")
    assert last.endswith("; finished with 1 warning: client_rel_error_high (rounds 1-3) (see summary.json)")
