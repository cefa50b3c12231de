"""Run federated LoRA fine-tuning with compressed uplinks and exact byte accounting.

With no CONFIG the embedded default preset runs (MiniLM on rotten_tomatoes, 20 IID clients, the head trained
in round 1 only, wf_ecq at 2 bits/param both ways). CONFIG is a TOML file or a packaged preset name (default,
skewed-head, smoke, paper). Override any key with --set, e.g.
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
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["add_arguments", "add_config_arguments", "interrupted_hint", "main"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG`` and ``--set KEY=VALUE`` for :func:`~fedsqueeze.config.load_config` (all job commands)."""
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
    from ..config import load_config
    from ..fl.console import result_line
    from ..fl.loop import default_out_dir, run
    from ..out_paths import check_out_dir

    config = _resume_config(args) or load_config(args.config, args.overrides)
    if args.print_config:
        from ..config.doc import config_toml

        print(config_toml(config), end="")
        return 0
    if args.resume and args.out is None:
        print("fedsqueeze run: --resume needs --out DIR (the run to continue)", file=sys.stderr)
        return 2
    out = check_out_dir(args.out) if args.out is not None else default_out_dir(config)
    try:
        from ..models.workload import configure_threads
    except ImportError:  # the ML side is optional for the loop itself
        pass
    else:
        configure_threads()
    try:
        summary = run(
            config,
            out,
            resume=args.resume,
            capture_rounds=args.capture_updates,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"fedsqueeze run: {interrupted_hint(args, out)}", file=sys.stderr)
        return 130
    print(result_line(summary))
    return 0


def interrupted_hint(args: argparse.Namespace, out: str | Path) -> str:
    """The line printed on Ctrl-C: the last finished round and the command that continues the run."""
    from ..errors import FedsqueezeError
    from ..fl.checkpoint import load_checkpoint

    out = Path(out)
    cmd = ["fedsqueeze", "run", *([args.config] if args.config else [])]
    for kv in args.overrides:
        cmd += ["--set", kv]
    cmd += ["--out", str(out)]
    if args.capture_updates is not None:
        cmd += ["--capture-updates", args.capture_updates]
    if args.no_progress:
        cmd.append("--no-progress")
    if not out.is_dir():
        return f"interrupted before the run started; start it with: {shlex.join(cmd)}"
    try:  # the checkpoint is written atomically after each round: it is the last finished one
        ckpt = load_checkpoint(out)
    except FedsqueezeError:
        ckpt = None
    done = "before round 1 finished" if ckpt is None else f"after round {ckpt['round']}"
    return f"interrupted {done}; continue with: {shlex.join([*cmd, '--resume'])}"


def _resume_config(args: argparse.Namespace) -> RunConfig | None:
    """``--resume --out DIR`` without CONFIG: the checkpoint's config, ``--set`` on top (else ``None``)."""
    if not args.resume or args.config is not None or args.out is None:
        return None
    from pathlib import Path

    from ..config import RunConfig, apply_overrides
    from ..fl.checkpoint import load_checkpoint

    state = load_checkpoint(Path(args.out))
    if state is None or not isinstance(state.get("config"), dict):
        return None  # nothing to continue: the run decides (it starts fresh or refuses)
    return RunConfig.from_dict(apply_overrides(dict(state["config"]), args.overrides))
