"""`fedsqueeze flower simulate`: refuses a used --out without --resume (and --resume without one), prints the
lines of `run`, drops library noise."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tomllib
import warnings

import pytest

pytest.importorskip("flwr")

from fedsqueeze.cli import main as cli_main
from fedsqueeze.fl.console import round_line
from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.simulate import quiet_simulation
from support.flower import FakeGrid, make_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("marker", ["metrics.jsonl", "summary.json", "checkpoint"])
def test_simulate_refuses_an_out_that_holds_a_run(tmp_path, capsys, marker):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).mkdir() if marker == "checkpoint" else (out / marker).write_text("{}")
    assert cli_main(["flower", "simulate", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    want = f"{out.resolve()} already holds a run; pass --resume to continue it or choose another --out"
    assert err == f"fedsqueeze: error: {want}"


def test_simulate_resume_needs_an_existing_out(tmp_path, capsys):
    out = tmp_path / "nothing-here"
    assert cli_main(["flower", "simulate", "smoke", "--out", str(out), "--resume"]) == 2
    want = f"--resume: {out.resolve()} does not exist, so there is no run to continue; "
    want += "drop --resume to start one"
    assert capsys.readouterr().err.strip() == f"fedsqueeze: error: {want}"
    assert cli_main(["flower", "simulate", "smoke", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fedsqueeze: error: --resume needs --out DIR (the run to continue)"
    assert not out.exists()


@pytest.mark.usefixtures("task_identity")
def test_server_logs_the_round_lines_of_fedsqueeze_run(tmp_path, caplog):
    from fedsqueeze.flower.server_app import run_rounds

    settings = FlowerSettings(make_config(rounds=2), round_timeout=5)
    with caplog.at_level(logging.INFO, logger="fedsqueeze.flower"):
        run_rounds(FakeGrid(settings, 4), settings, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsqueeze.flower"]
    assert [line for line in lines if line.startswith("round ")] == [round_line(r, 2) for r in rows]
    assert (tmp_path / "final_params.safetensors").is_file()


def test_quiet_simulation_drops_only_the_known_noise():
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    flwr_log = logging.getLogger("flwr")
    keep = Keep()
    flwr_log.addHandler(keep)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_simulation(progress=False):
                flwr_log.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated")
                flwr_log.warning("DEPRECATED FEATURE: %s", "something else")
                flwr_log.info("")  # Flower's bare `INFO :` line
                flwr_log.warning("")  # an empty warning still shows
                warnings.warn(
                    "Tip: In future versions of Ray, Ray will no longer ...", FutureWarning, stacklevel=1
                )
                warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
            flwr_log.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated")
    finally:
        flwr_log.removeHandler(keep)
    assert seen == [
        "DEPRECATED FEATURE: something else",
        "",
        "DEPRECATED FEATURE: The `run_simulation` function is deprecated",  # after the context: shown again
    ]
    assert [str(w.message) for w in caught] == ["another FutureWarning"]


def test_generated_flower_app_declares_a_license(tmp_path):
    from fedsqueeze.flower.deploy import write_app

    write_app(tmp_path, FlowerSettings(make_config()))
    assert tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"


@pytest.mark.slow
def test_simulate_prints_round_and_final_lines_without_noise(tmp_path):
    out = tmp_path / "sim"
    argv = [sys.executable, "-m", "fedsqueeze.cli", "flower", "simulate", "smoke", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    err = proc.stderr.splitlines()
    for r in rows:
        assert any(line.startswith(round_line(r, 2).rsplit("  ", 1)[0]) for line in err), proc.stderr
    assert "DEPRECATED" not in proc.stderr and "Tip: In future versions of Ray" not in proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("2 rounds on Flower (simulation), final accuracy ") and ", best " in last
    assert ", downlink " in last and f"-> {out}" in last
    assert (out / "final_params.safetensors").is_file() and (out / "final_adapter").is_dir()
