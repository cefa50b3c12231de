"""`fedsqueeze flower run`: what it shows of `flwr run --stream` (no bare `INFO :` lines, no "Successfully
installed ... apps"), and its last line: the result line of `fedsqueeze run`, or one line saying the job
failed and where its log is (exit status 1). A fake `flwr` for the CLI; a real deployment in the slow test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsqueeze.cli import main as cli_main
from fedsqueeze.fl.console import result_line
from fedsqueeze.flower.stream import fresh_summary, job_status, shown

GREEN, RESET = "\x1b[92m", "\x1b[0m"
SUMMARY = {
    "metric_name": "accuracy",
    "final_metric": 0.4583,
    "best_metric": 0.4583,
    "best_round": 2,
    "target_metric": None,
    "rounds": 2,
    "total_uplink_bytes": 1196,
    "total_downlink_bytes": 2392,
    "dense_fp32_ratio_total": 1.5,
    "load_s": 0.02,
    "warnings": [],
}

# A stand-in for Flower's `flwr` (its output as captured from a real `flwr run --stream`, Flower 1.41).
FAKE_FLWR = """
import json, os, sys
from pathlib import Path

mode = os.environ["FAKE_FLWR_MODE"]
if sys.argv[1] == "ls":
    failed = mode == "failed"
    why = "ServerApp failed with exception: workload 'nope:x' cannot be imported"
    run = {"run-id": "77", "status": "finished:failed" if failed else "finished:completed",
           "status-details": why if failed else ""}
    print(json.dumps({"success": True, "runs": [run]}))
    sys.exit(0)
print("Using SuperLink: fedsqueeze (127.0.0.1:9091)")
if mode == "unreachable":
    print("Connection to the SuperLink is unavailable.")
    sys.exit(1)
print("Successfully started run 77")
print("\\x1b[92mINFO \\x1b[0m:      Start `flwr-serverapp` process")
home = os.environ["FLWR_HOME"]
print(f"Successfully installed fedsqueeze-flower to {home}/apps/fedsqueeze.fedsqueeze-flower.0.1.0.e1538f74.")
if mode == "failed":
    print("\\x1b[91mERROR \\x1b[0m:     ServerApp raised an exception")
    print("\\x1b[91mERROR \\x1b[0m:     Exit Code: 201")
elif mode == "ok":
    Path(os.environ["FAKE_FLWR_OUT"], "summary.json").write_text(os.environ["FAKE_FLWR_SUMMARY"])
print("\\x1b[92mINFO \\x1b[0m:      ")
print("\\x1b[92mINFO \\x1b[0m:      Starting logstream for run_id `77`", file=sys.stderr)
"""


def test_shown_drops_bare_info_lines_and_the_app_bundle_copy():
    assert not shown(f"{GREEN}INFO {RESET}:      \n")
    assert not shown("INFO :\n") and not shown("DEBUG :   \n")
    assert not shown(
        "Successfully installed fedsqueeze-flower to "
        "/root/.flwr/apps/fedsqueeze.fedsqueeze-flower.0.1.0.e1538f74.\n"
    )
    assert shown(f"{GREEN}INFO {RESET}:      Start `flwr-serverapp` process\n")
    assert shown("Successfully started run 8882929012097562831\n")
    assert shown("\x1b[91mERROR \x1b[0m:     \n")  # only empty INFO/DEBUG messages go
    assert shown("Successfully installed numpy-2.0.0\n")  # pip's line is no app bundle copy
    assert shown("round 1/2  accuracy 0.4542  total 1.56 kB (up 598 B, down 960 B)  2.0 s\n")
    assert shown("\n")


def test_fresh_summary_ignores_an_earlier_jobs_summary(tmp_path):
    assert fresh_summary(tmp_path / "missing", 0.0) is None
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    assert fresh_summary(tmp_path, time.time() - 60) == SUMMARY
    assert fresh_summary(tmp_path, time.time() + 60) is None  # written before this job started
    (tmp_path / "summary.json").write_text("{not json")
    assert fresh_summary(tmp_path, 0.0) is None


@pytest.fixture
def fake_flwr(tmp_path, monkeypatch):
    exe = tmp_path / "flwr"
    exe.write_text(f"#!{sys.executable}\n{FAKE_FLWR}")
    exe.chmod(0o755)
    monkeypatch.setattr("fedsqueeze.flower.deploy.flower_exe", lambda name: str(exe))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the failure logs land here
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("FAKE_FLWR_OUT", str(out))
    monkeypatch.setenv("FAKE_FLWR_SUMMARY", json.dumps(SUMMARY | {"out_dir": str(out)}))
    return exe


def test_job_status_reads_flwr_ls(tmp_path, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR_MODE", "failed")
    env = dict(os.environ)
    status = job_status(str(fake_flwr), "fedsqueeze", 77, env)
    assert status is not None and status.status == "finished:failed" and not status.completed
    assert "cannot be imported" in status.details
    assert job_status(str(fake_flwr), "fedsqueeze", 78, env) is None  # no such run
    assert job_status(str(tmp_path / "no-flwr-here"), "fedsqueeze", 77, env) is None


def run_cli(tmp_path, capsys, *extra: str) -> tuple[int, str, str]:
    argv = ["flower", "run", "smoke", "--set", "model.name=toy", "--superlink", "127.0.0.1:9091"]
    rc = cli_main([*argv, "--insecure", "--out", str(tmp_path / "out"), *extra])
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_flower_run_ends_on_the_result_line_of_fedsqueeze_run(tmp_path, capsys, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR_MODE", "ok")
    rc, out, err = run_cli(tmp_path, capsys)
    assert rc == 0, err
    (line,) = out.splitlines()  # stdout: the result line only
    summary = SUMMARY | {"out_dir": str(tmp_path / "out")}
    head = result_line(summary, engine="Flower (deployment)", elapsed_s=0).partition(", 0 s")[0]
    assert line.startswith(head + ", ") and line.endswith(f" -> {tmp_path / 'out'}"), line
    assert line.startswith("2 rounds on Flower (deployment), final accuracy 0.4583, best 0.4583 (round 2)")
    # stderr: Flower's lines less the noise, colour codes stripped (stderr is no terminal here)
    assert err.splitlines() == [
        f"outputs go to {tmp_path / 'out'} on the SuperLink's machine",
        "Using SuperLink: fedsqueeze (127.0.0.1:9091)",
        "Successfully started run 77",
        "INFO :      Start `flwr-serverapp` process",
        "INFO :      Starting logstream for run_id `77`",
    ]


def test_flower_run_reports_a_failed_job_in_one_line(tmp_path, capsys, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR_MODE", "failed")
    rc, out, err = run_cli(tmp_path, capsys)
    assert rc == 1 and out == ""
    last = err.splitlines()[-1]
    (log,) = tmp_path.glob("fedsqueeze-flower-run-77-*.log")
    assert last == (
        "fedsqueeze flower run: job 77 did not complete (finished:failed: ServerApp failed with exception: "
        f"workload 'nope:x' cannot be imported); log: {log}"
    )
    text = log.read_text()  # the whole output, the lines filtered on screen included, without colour codes
    assert "ERROR :     Exit Code: 201" in text and "Successfully installed" in text and "\x1b" not in text


def test_flower_run_reports_flwr_failing(tmp_path, capsys, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR_MODE", "unreachable")
    rc, out, err = run_cli(tmp_path, capsys)
    (log,) = tmp_path.glob("fedsqueeze-flower-run-unstarted-*.log")
    assert rc == 1 and out == ""
    assert err.splitlines()[-1] == f"fedsqueeze flower run: `flwr run` failed (exit status 1); log: {log}"
    assert "Connection to the SuperLink is unavailable." in err


def test_flower_run_with_outputs_on_another_machine(tmp_path, capsys, fake_flwr, monkeypatch):
    monkeypatch.setenv("FAKE_FLWR_MODE", "remote")  # completes, writes nothing here
    rc, out, err = run_cli(tmp_path, capsys)
    assert rc == 0, err
    assert out == f"job 77 completed; its outputs are in {tmp_path / 'out'} on the SuperLink's machine\n"


# -- a real deployment on 127.0.0.1 -----------------------------------------------------------------------
@pytest.mark.slow
def test_flower_run_on_a_real_deployment(tmp_path):
    pytest.importorskip("flwr")
    from support.deployment import Stack

    stack = Stack(tmp_path, 2)
    base = [sys.executable, "-m", "fedsqueeze.cli", "flower", "run", "smoke", "--set", "model.name=toy"]
    base += ["--set", "data.num_clients=2", "--superlink", f"127.0.0.1:{stack.port}", "--insecure"]
    base += ["--round-timeout", "60"]
    env = {**stack.env, "TMPDIR": str(tmp_path)}
    try:
        bad = subprocess.run([*base, "--workload", "no_such_module:x", "--out", str(tmp_path / "bad")],
                             env=env, capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
        good = subprocess.run([*base, "--out", str(tmp_path / "out")],
                              env=env, capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    finally:
        stack.close()
    assert bad.returncode == 1 and bad.stdout == "", bad.stdout + bad.stderr
    last = bad.stderr.splitlines()[-1]
    assert last.startswith("fedsqueeze flower run: job ") and "did not complete (finished:failed: " in last
    assert "no_such_module" in last and Path(last.rsplit("; log: ", 1)[1]).is_file()

    assert good.returncode == 0, good.stdout + good.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (line,) = good.stdout.splitlines()
    head = result_line(summary, engine="Flower (deployment)", elapsed_s=0).partition(", 0 s")[0]
    assert line.startswith(head + ", ") and line.endswith(f" -> {tmp_path / 'out'}")
    for noisy in (bad, good):
        lines = [ln.strip() for ln in noisy.stderr.splitlines()]
        assert "INFO :" not in lines and not any(ln.startswith("Successfully installed") for ln in lines)
    # What Flower's "install" was: the app bundle's two files unpacked into the ServerApp's FLWR_HOME/apps.
    bundles = list((tmp_path / "flwr-home" / "apps").iterdir())
    assert len(bundles) == 2  # one per job (the run config differs, so does the bundle's hash)
    for bundle in bundles:
        assert bundle.name.startswith("fedsqueeze.fedsqueeze-flower.")
        assert sorted(p.name for p in bundle.iterdir()) == ["fedsqueeze_flower_app.py", "pyproject.toml"]
