"""What ``fedsqueeze flower run`` shows of ``flwr run --stream``, and how it learns the job's outcome.

No ``flwr`` import: this runs Flower's ``flwr`` executable and reads its output and the job's files.

``flwr run --stream`` relays the ServerApp's log from the SuperLink and exits 0 whether the job completed or
failed. :func:`follow` passes its lines on (to stderr) except two kinds that say nothing to a fedsqueeze user
(:func:`shown`):

* bare ``INFO :`` lines: Flower logs an empty message at INFO (e.g. the ServerApp's successful exit,
  ``flwr_exit(SUCCESS)``);
* ``Successfully installed fedsqueeze-flower to $FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>.``:
  Flower's ``install_from_fab`` unpacking the app bundle (``pyproject.toml`` and the two-line shim module
  that ``fedsqueeze flower run`` wrote) into the ServerApp's ``FLWR_HOME`` on the SuperLink's machine. It
  copies those two files; no package is installed or downloaded (runtime dependency installation is off).

Then :func:`job_status` asks the SuperLink how the job ended (``flwr ls --run-id N --format json``) and
:func:`fresh_summary` reads the ``summary.json`` the job wrote, when ``--out`` is on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Followed", "JobStatus", "follow", "fresh_summary", "job_status", "plain", "shown"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BARE = re.compile(r"(DEBUG|INFO)\s*:")  # a Flower log line whose message is empty
_FAB_COPY = re.compile(r"Successfully installed \S+ to .*[/\\]apps[/\\][^/\\]+")
_RUN_ID = re.compile(r"Successfully started run (\d+)")


def plain(line: str) -> str:
    """``line`` without ANSI colour codes (Flower colours its level names even in files and pipes)."""
    return _ANSI.sub("", line)


def shown(line: str) -> bool:
    """Whether a line of ``flwr run --stream`` is passed on: not a bare ``INFO :`` line, not Flower's
    ``Successfully installed ... to $FLWR_HOME/apps/...`` (the app bundle unpacked; see the module doc)."""
    text = plain(line).strip()
    return not (_BARE.fullmatch(text) or _FAB_COPY.fullmatch(text.rstrip(".")))


@dataclasses.dataclass
class Followed:
    """What :func:`follow` saw: ``flwr run``'s exit status, the Flower run id, every line (unfiltered)."""

    returncode: int
    run_id: int | None
    lines: list[str]


def follow(cmd: list[str], env: dict[str, str], sink: TextIO | None = None) -> Followed:
    """Run ``cmd`` (``flwr run ... --stream``), stdout and stderr merged, passing the :func:`shown` lines to
    ``sink`` (default ``sys.stderr``) as they come, without colour codes unless ``sink`` is a terminal.

    On Ctrl-C (``KeyboardInterrupt``) ``flwr`` gets SIGINT too (it stops following; the job keeps running on
    the SuperLink), then the interrupt propagates.
    """
    out = sink if sink is not None else sys.stderr
    colour = out.isatty()
    proc = subprocess.Popen(
        cmd,
        env={**env, "PYTHONUNBUFFERED": "1"},  # the log lines as they come, not in 8 kB blocks
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert proc.stdout is not None
    lines: list[str] = []
    run_id = None
    try:
        for line in proc.stdout:
            lines.append(line)
            if run_id is None and (m := _RUN_ID.match(plain(line).strip())):
                run_id = int(m.group(1))
            if shown(line):
                out.write(line if colour else plain(line))
                out.flush()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return Followed(proc.wait(), run_id, lines)


@dataclasses.dataclass
class JobStatus:
    """A Flower run's status as ``flwr ls`` reports it, e.g. ``finished:completed`` / ``finished:failed``."""

    status: str
    details: str

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def job_status(
    flwr: str, connection: str, run_id: int, env: dict[str, str], timeout: float = 120
) -> JobStatus | None:
    """How run ``run_id`` ended, from ``flwr ls CONNECTION --run-id N --format json``; ``None`` when the
    SuperLink cannot tell (unreachable, or an answer that is not the expected JSON)."""
    cmd = [flwr, "ls", connection, "--run-id", str(run_id), "--format", "json"]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        runs = json.loads(res.stdout)["runs"]
        (run,) = (r for r in runs if str(r.get("run-id")) == str(run_id))
        return JobStatus(str(run["status"]), str(run.get("status-details") or ""))
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None


def fresh_summary(out_dir: str | Path, since: float) -> dict[str, Any] | None:
    """``OUT/summary.json`` when it is on this machine and was written at or after ``since`` (a
    ``time.time()``; an older one is an earlier job's), else ``None``."""
    path = Path(out_dir) / "summary.json"
    try:
        if path.stat().st_mtime < since:
            return None
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
