"""Start a Flower SuperLink (the server side of a deployment; the ServerApp runs next to it).

Runs flower-superlink with runtime dependency installation, telemetry and update checks off. TLS:
  fedsqueeze flower superlink --host 0.0.0.0 --ssl-certfile server.pem --ssl-keyfile server.key \
      --ssl-ca-certfile ca.pem [--enable-supernode-auth]
Local test without TLS: fedsqueeze flower superlink --insecure --port 9091
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "build_command", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9091, help="HTTP port of the SuperLink (default 9091)")
    parser.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    parser.add_argument("--ssl-certfile", metavar="PEM", help="server certificate")
    parser.add_argument("--ssl-keyfile", metavar="KEY", help="server private key")
    parser.add_argument("--ssl-ca-certfile", metavar="PEM", help="CA certificate")
    parser.add_argument(
        "--enable-supernode-auth",
        action="store_true",
        help="only registered SuperNodes may connect (register keys with `flwr supernode register`)",
    )
    parser.add_argument("--database", metavar="FILE", help="state database file (default: in memory)")


def build_command(args: argparse.Namespace) -> list[str]:
    from ..flower.deploy import flower_exe

    cmd = [flower_exe("flower-superlink"), "--host", args.host, "--port", str(args.port)]
    cmd.append("--disable-runtime-dependency-installation")  # no per-run `uv sync` (network, GBs)
    if args.insecure:
        cmd.append("--insecure")
    for flag in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certfile", "database"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.enable_supernode_auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def main(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..flower.deploy import child_env

    if not args.insecure and not (args.ssl_certfile and args.ssl_keyfile):
        raise ConfigError("give --ssl-certfile and --ssl-keyfile (and --ssl-ca-certfile), or --insecure")
    cmd = build_command(args)
    os.execve(cmd[0], cmd, child_env())  # replaces this process: signals reach the SuperLink directly
