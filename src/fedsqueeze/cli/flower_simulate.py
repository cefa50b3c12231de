"""Run a config on Flower's simulation runtime (Ray actors, one virtual SuperNode per client).

Same job, outputs and numbers as `fedsqueeze run` (same seeds, client step, codec and aggregation), driven by
a Flower ServerApp/ClientApp pair through flwr.simulation.run_simulation. Needs flwr[simulation]==1.41.0.
Telemetry, update checks and runtime dependency installs are off. A checkpoint is written to --out after
every round and the nodes keep their state under --out/nodes, so an interrupted job continues bit for bit:
  fedsqueeze flower simulate smoke --set fl.rounds=3 --out runs/flower-smoke
  fedsqueeze flower simulate --out runs/flower-smoke --resume                    # after an interruption
  fedsqueeze flower simulate --out runs/flower-smoke --resume --set fl.rounds=5  # or extend it
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .flower_common import add_job_arguments, refuse_existing_run, settings_from_args

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument(
        "--cpus-per-client",
        type=float,
        default=1.0,
        metavar="N",
        help="Ray CPUs per client actor (default 1: two actors in parallel on 2 cores)",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, metavar="N", help="CPUs Ray may use (default all)"
    )

    parser.add_argument("--no-progress", action="store_true", help="no per-round lines")


def main(args: argparse.Namespace) -> int:
    from ..fl.console import result_line
    from ..flower.deploy import RUN_CONFIG_ENV, child_env

    t0 = time.perf_counter()
    settings = settings_from_args(args)
    refuse_existing_run(Path(settings.out_dir), settings.resume)
    os.environ.update(child_env({RUN_CONFIG_ENV: json.dumps(settings.to_run_config())}))
    from ..flower.simulate import simulate

    summary = simulate(
        settings,
        cpus_per_client=args.cpus_per_client,
        num_cpus=args.num_cpus,
        progress=not args.no_progress,
    )
    print(result_line(summary, engine="Flower (simulation)", elapsed_s=time.perf_counter() - t0))
    return 0
