"""Arguments shared by ``fedsqueeze flower simulate`` and ``fedsqueeze flower run`` (no flwr import)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ..flower.settings import DEFAULT_ROUND_TIMEOUT, FlowerSettings, check_job_out_dir, default_out_dir
from ..out_paths import check_out_dir
from .run import add_config_arguments

if TYPE_CHECKING:
    from ..config import RunConfig

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
        "--resume",
        action="store_true",
        help="continue the job in --out from its checkpoint; without CONFIG it keeps the run's own config "
        "when --out is on this machine (--set fl.rounds=N extends it)",
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
        help="custom workload factory, callable(RunConfig) -> Workload, importable on every node "
        "(default: the built-in workload of model.name and data.dataset)",
    )


def settings_from_args(args: argparse.Namespace) -> FlowerSettings:
    """The job's settings: CONFIG and ``--set`` (with ``--resume`` and no CONFIG: the config in
    ``--out``'s checkpoint when it is on this machine, ``--set`` on top), ``--out`` made absolute."""
    from ..config import load_config
    from ..errors import ConfigError

    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR (the run to continue)")
    config = _resume_config(args) or load_config(args.config, args.overrides)
    settings = FlowerSettings(
        config, workload=args.workload, round_timeout=args.round_timeout, resume=bool(args.resume)
    )
    out = check_out_dir(args.out) if args.out else default_out_dir(settings)
    # Absolute: the ServerApp may run in another working directory (the SuperLink's).
    return dataclasses.replace(settings, out_dir=str(out.resolve()))


def _resume_config(args: argparse.Namespace) -> RunConfig | None:
    """``--resume --out DIR`` without CONFIG: the checkpoint's config, ``--set`` on top (else ``None``)."""
    if not args.resume or args.config is not None or not args.out:
        return None
    from ..config import RunConfig, apply_overrides
    from ..fl.checkpoint import load_checkpoint

    state = load_checkpoint(Path(args.out)) if Path(args.out).is_dir() else None
    if state is None or not isinstance(state.get("config"), dict):
        return None  # nothing here to continue (or it is on the SuperLink's machine): CONFIG decides
    return RunConfig.from_dict(apply_overrides(dict(state["config"]), args.overrides))


def refuse_existing_run(out: Path, resume: bool = False) -> None:
    """As ``fedsqueeze run``: refuse ``--resume`` without ``out``, and an ``out`` that already holds a run
    (any of :data:`RUN_FILES`) without ``--resume`` (it would silently replace the earlier results)."""
    check_job_out_dir(out, resume, RUN_FILES)
