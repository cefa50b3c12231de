"""Arguments shared by ``fedsqueeze flower simulate`` and ``fedsqueeze flower run`` (no flwr import)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..flower.settings import DEFAULT_ROUND_TIMEOUT, FlowerSettings, default_out_dir
from ..out_paths import check_out_dir
from .run import add_config_arguments

__all__ = ["RUN_FILES", "add_job_arguments", "refuse_existing_run", "settings_from_args"]

RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoint")  # what marks a folder as holding a run


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)  # the same CONFIG / --set contract as `fedsqueeze run`
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder of the ServerApp (default runs/<time>-<codec>-flower)",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=DEFAULT_ROUND_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for replies each round; late clients are dropped "
        f"(default {DEFAULT_ROUND_TIMEOUT:g})",
    )
    parser.add_argument(
        "--workload",
        default="",
        metavar="MODULE:CALLABLE",
        help="custom workload factory, callable(RunConfig) -> Workload, importable on every node",
    )


def settings_from_args(args: argparse.Namespace) -> FlowerSettings:
    from ..fl.config import load_config

    config = load_config(args.config, args.overrides)
    settings = FlowerSettings(config, workload=args.workload, round_timeout=args.round_timeout)
    out = check_out_dir(args.out) if args.out else default_out_dir(settings)
    # Absolute: the ServerApp may run in another working directory (the SuperLink's).
    return dataclasses.replace(settings, out_dir=str(out.resolve()))


def refuse_existing_run(out: Path) -> None:
    """Refuse an ``--out`` that already holds a run, as ``fedsqueeze run`` does (Flower runs do not resume,
    so the run would silently replace the earlier results)."""
    from ..errors import ConfigError

    if any((out / name).exists() for name in RUN_FILES):
        raise ConfigError(f"{out} already holds a run; choose another --out (Flower runs do not resume)")
