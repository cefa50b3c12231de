"""Run federated LoRA fine-tuning with compressed uplinks and exact byte accounting.

With no CONFIG the embedded default preset runs (MiniLM on rotten_tomatoes, 20 clients, flm_topk). CONFIG is
a TOML file or a packaged preset name (default, smoke, paper). Override any key with --set, e.g.
  fedsqueeze run smoke --set fl.rounds=3 --set codec.name=topk --set codec.options.density=0.05
Setting codec.name (or downlink.name) to another codec resets its options to that codec's defaults; the
codec.options.* given with it apply on top.
Writes DIR/metrics.jsonl, DIR/summary.json, DIR/accuracy_vs_uplink.png, DIR/checkpoint/ and the final model:
DIR/final_params.safetensors and DIR/final_adapter/ (PEFT's format, for PeftModel.from_pretrained).
--resume --out DIR without CONFIG continues that run with its own config:
  fedsqueeze run --out runs/smoke --resume                    # after an interruption
  fedsqueeze run --out runs/smoke --resume --set fl.rounds=5  # or extend it to 5 rounds
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "add_config_arguments", "main"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG`` and ``--set KEY=VALUE`` for :func:`~fedsqueeze.fl.config.load_config` (all job commands)."""
    parser.add_argument("config", nargs="?", default=None, help="TOML config file or preset name")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value is a TOML literal, else a string); repeatable",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default runs/<time>-<codec>)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint; without CONFIG it keeps the run's own config "
        "(--set fl.rounds=N extends it)",
    )
    parser.add_argument(
        "--capture-updates",
        default=None,
        metavar="ROUNDS",
        help='save raw client updates of these rounds ("1,2,5" or "all") to DIR/captures.safetensors',
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as TOML and exit (loads no model; docs/config.md lists the keys)",
    )


def main(args: argparse.Namespace) -> int:
    from .config import load_config
    from .console import final_line
    from .health import describe
    from .loop import default_out_dir, run

    config = _resume_config(args) or load_config(args.config, args.overrides)
    if args.print_config:
        from .config_doc import config_toml

        print(config_toml(config), end="")
        return 0
    if args.resume and args.out is None:
        print("fedsqueeze run: --resume needs --out DIR (the run to continue)", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out_dir(config)
    try:
        from ..models.workload import configure_threads
    except ImportError:  # the ML side is optional for the loop itself
        pass
    else:
        configure_threads()
    summary = run(
        config,
        out,
        resume=args.resume,
        capture_rounds=args.capture_updates,
        progress=not args.no_progress,
    )
    warned = describe(summary["warnings"])
    print(final_line(summary) + (f"; finished with {warned} (see summary.json)" if warned else ""))
    return 0


def _resume_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """``--resume --out DIR`` without CONFIG: the checkpoint's config, ``--set`` on top (else ``None``)."""
    if not args.resume or args.config is not None or args.out is None:
        return None
    from pathlib import Path

    from .checkpoint import load_checkpoint
    from .config import RunConfig, apply_overrides

    state = load_checkpoint(Path(args.out))
    if state is None or not isinstance(state.get("config"), dict):
        return None  # nothing to continue: the run decides (it starts fresh or refuses)
    return RunConfig.from_dict(apply_overrides(dict(state["config"]), args.overrides))
