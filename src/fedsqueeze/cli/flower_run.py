"""Start a fedsqueeze run on a running Flower deployment (SuperLink + one SuperNode per client).

Writes a small Flower app (pyproject.toml with the resolved config + a two-line shim importing
fedsqueeze.flower) and calls `flwr run APP CONNECTION --stream`, whose log goes to stderr (less Flower's
bare "INFO :" lines and its note that it unpacked this app into FLWR_HOME/apps: no package is installed).
The ServerApp writes metrics.jsonl and summary.json (and a checkpoint after every round) to --out on the
SuperLink's machine; --resume continues that job (give the same CONFIG and --set, unless --out is also on
this machine). The last line is that of `fedsqueeze run` when --out is on this machine; a failed job ends
on one line naming a log file, with exit status 1. --bind-partitions or --partition-map bind each partition
to a SuperNode key (needs SuperNode authentication). Example:
  fedsqueeze flower run smoke --superlink 127.0.0.1:9091 --insecure --round-timeout 120 --out /srv/runs/a
  fedsqueeze flower run smoke --superlink 127.0.0.1:9091 --insecure --round-timeout 120 --out /srv/runs/a \
      --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from .flower_common import add_job_arguments, settings_from_args

__all__ = ["add_arguments", "main"]

CONNECTION = "fedsqueeze"  # the SuperLink connection's name in the generated FLWR_HOME/config.toml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="address of the SuperLink")
    parser.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    parser.add_argument(
        "--root-certificates", metavar="PEM", help="CA certificate that signed the SuperLink's"
    )
    parser.add_argument(
        "--app-dir", default=None, metavar="DIR", help="where to write the Flower app (default: a temp dir)"
    )
    parser.add_argument(
        "--flwr-home",
        default=None,
        metavar="DIR",
        help="FLWR_HOME for the flwr CLI (connection file); default: a fresh one inside the app dir",
    )
    parser.add_argument(
        "--bind-partitions",
        action="store_true",
        help="bind each partition to the public key of the first SuperNode that claims it; claims from "
        "other keys are refused (needs SuperNode authentication on the SuperLink)",
    )
    parser.add_argument(
        "--partition-map",
        default="",
        metavar="FILE",
        help="JSON file on this machine mapping SuperNode public keys (OpenSSH or PEM text, SHA256: "
        "fingerprints) or node ids to partition ids, {identity: id}; only those nodes may serve, each its "
        "own partition",
    )


def main(args: argparse.Namespace) -> int:
    from ..fl.console import result_line
    from ..flower.binding import read_partition_map
    from ..flower.deploy import child_env, flower_exe, write_app, write_connection
    from ..flower.stream import follow, fresh_summary, job_status

    t0, started = time.perf_counter(), time.time()
    settings = dataclasses.replace(
        settings_from_args(args),
        bind_partitions=bool(args.bind_partitions),
        partition_map=read_partition_map(args.partition_map),
    )
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flower-") as tmp:
        app_dir = Path(args.app_dir) if args.app_dir else Path(tmp) / "app"
        write_app(app_dir, settings)
        home = Path(args.flwr_home) if args.flwr_home else Path(tmp) / "flwr-home"
        write_connection(
            home,
            CONNECTION,
            args.superlink,
            insecure=args.insecure,
            root_certificates=args.root_certificates,
        )
        flwr, env = flower_exe("flwr"), child_env({"FLWR_HOME": str(home)})
        print(f"outputs go to {settings.out_dir} on the SuperLink's machine", file=sys.stderr, flush=True)
        try:
            seen = follow([flwr, "run", str(app_dir), CONNECTION, "--stream"], env)
        except KeyboardInterrupt:
            print(
                "fedsqueeze flower run: interrupted; stopped following the job, which keeps running on the "
                f"SuperLink (outputs to {settings.out_dir}; `--resume` continues it if it stops)",
                file=sys.stderr,
            )
            return 130
        if seen.returncode != 0:
            return _failed(f"`flwr run` failed (exit status {seen.returncode})", seen.lines, seen.run_id)
        if seen.run_id is None:
            return _failed("`flwr run` started no job", seen.lines, None)
        status = job_status(flwr, CONNECTION, seen.run_id, env)
    if status is not None and not status.completed:
        details = status.details.strip().splitlines()
        why = f"{status.status}" + (f": {details[0]}" if details else "")
        return _failed(f"job {seen.run_id} did not complete ({why})", seen.lines, seen.run_id)
    summary = fresh_summary(settings.out_dir, started)
    if summary is not None:
        print(result_line(summary, engine="Flower (deployment)", elapsed_s=time.perf_counter() - t0))
        return 0
    if status is None:
        return _failed(
            f"could not ask the SuperLink how job {seen.run_id} ended, and {settings.out_dir} holds no "
            "summary.json of it on this machine",
            seen.lines,
            seen.run_id,
        )
    print(f"job {seen.run_id} completed; its outputs are in {settings.out_dir} on the SuperLink's machine")
    return 0


def _failed(what: str, lines: list[str], run_id: int | None) -> int:
    """Keep the whole output of ``flwr run`` in a log file and say in one line what failed and where it is."""
    from ..flower.stream import plain

    fd, path = tempfile.mkstemp(prefix=f"fedsqueeze-flower-run-{run_id or 'unstarted'}-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as f:
        f.writelines(plain(line) for line in lines)
    print(f"fedsqueeze flower run: {what}; log: {path}", file=sys.stderr)
    return 1
