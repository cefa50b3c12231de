"""Start a Flower SuperNode serving one client (data partition) of a fedsqueeze run.

Runs flower-supernode with --node-config "partition-id=I state-dir=DIR"; the client's error-feedback state
is kept in DIR, so it survives a restart of this SuperNode. TLS and node authentication:
  fedsqueeze flower supernode --superlink link.example.org:9091 --partition-id 3 \
      --root-certificates ca.pem --auth-supernode-private-key node3_key --state-dir /var/lib/fsq
Local test: fedsqueeze flower supernode --insecure --superlink 127.0.0.1:9091 --partition-id 0 --port 9094
With --data PATH the node trains on its own file(s) instead of slice I of the job's dataset, mapped by the
job's data.* columns (--set data.text_field=COLUMN etc. rename them for this node); evaluation stays with
the server.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["add_arguments", "build_command", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="address of the SuperLink")
    parser.add_argument("--partition-id", type=int, required=True, help="client id of this node, 0..N-1")
    parser.add_argument(
        "--state-dir", default=None, metavar="DIR", help="where per-client state lives (survives restarts)"
    )
    parser.add_argument(
        "--port", type=int, default=9094, help="local Runtime API port (one per node per host)"
    )
    parser.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    parser.add_argument(
        "--root-certificates", metavar="PEM", help="CA certificate that signed the SuperLink's"
    )
    parser.add_argument(
        "--auth-supernode-private-key", metavar="KEY", help="this node's private key (node auth)"
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="train on this node's own .jsonl/.json/.csv/.parquet file or folder (all its rows) instead of "
        "slice I of the job's dataset; the job's data.* column mapping applies",
    )
    parser.add_argument(
        "--set",
        dest="fields",
        action="append",
        default=[],
        metavar="data.KEY=COLUMN",
        help="with --data: this node's name of a mapped column (data.text_field, data.label_field, "
        "data.prompt_field, data.response_field); repeatable",
    )


def build_command(args: argparse.Namespace) -> list[str]:
    from ..flower.deploy import flower_exe
    from ..flower.node_data import LocalData, node_config_entries

    node_config = f"partition-id={int(args.partition_id)}"
    if args.state_dir:
        node_config += f" state-dir={json.dumps(str(Path(args.state_dir).resolve()))}"
    if args.data is not None:
        node_config += " " + " ".join(node_config_entries(LocalData.from_args(args.data, args.fields)))
    cmd = [
        flower_exe("flower-supernode"),
        "--superlink", args.superlink,
        "--port", str(args.port),
        "--node-config", node_config,
    ]  # fmt: skip
    if args.insecure:
        cmd.append("--insecure")
    if args.root_certificates:
        cmd += ["--root-certificates", args.root_certificates]
    if args.auth_supernode_private_key:
        cmd += ["--auth-supernode-private-key", args.auth_supernode_private_key]
    return cmd


def main(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..flower.deploy import child_env

    if args.partition_id < 0:
        raise ConfigError(
            f"--partition-id is a client id 0..N-1 (N = data.num_clients), got {args.partition_id}"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.fields and args.data is None:
        raise ConfigError("--set renames the columns of this node's own data: give --data PATH too")
    if not args.insecure and not args.root_certificates:
        raise ConfigError("give --root-certificates CA.pem (TLS), or --insecure for a local test")
    if args.state_dir:
        Path(args.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    cmd = build_command(args)
    os.execve(cmd[0], cmd, child_env())
