"""Start a fedsqueeze run on a running Flower deployment (SuperLink + one SuperNode per client).

Writes a small Flower app (pyproject.toml with the resolved config + a two-line shim importing
fedsqueeze.flower) and calls `flwr run APP CONNECTION --stream`. The ServerApp writes metrics.jsonl and
summary.json (and a checkpoint after every round) to --out on the SuperLink's machine; --resume continues
that job (give the same CONFIG and --set, unless --out is also on this machine). --bind-partitions or
--partition-map bind each partition to a SuperNode key (needs SuperNode authentication). Example:
  fedsqueeze flower run smoke --superlink 127.0.0.1:9091 --insecure --round-timeout 120 --out /srv/runs/a
  fedsqueeze flower run smoke --superlink 127.0.0.1:9091 --insecure --round-timeout 120 --out /srv/runs/a \
      --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import tempfile
from pathlib import Path

from .flower_common import add_job_arguments, settings_from_args

__all__ = ["add_arguments", "main"]


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
    from ..flower.binding import read_partition_map
    from ..flower.deploy import child_env, flower_exe, write_app, write_connection

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
            "fedsqueeze",
            args.superlink,
            insecure=args.insecure,
            root_certificates=args.root_certificates,
        )
        cmd = [flower_exe("flwr"), "run", str(app_dir), "fedsqueeze", "--stream"]
        print(f"outputs go to {settings.out_dir} on the SuperLink's machine", flush=True)
        return subprocess.call(cmd, env=child_env({"FLWR_HOME": str(home)}))
