"""Run federated LoRA fine-tuning with compressed uplinks and exact byte accounting.

With no CONFIG the embedded default preset runs (MiniLM on rotten_tomatoes, 20 clients, flm_topk). CONFIG is
a TOML file or a packaged preset name (default, smoke, paper). Override any key with --set, e.g.
  fedsqueeze run smoke --set fl.rounds=3 --set codec.name=topk --set codec.options.density=0.05
Writes DIR/metrics.jsonl, DIR/summary.json, DIR/accuracy_vs_uplink.png and DIR/checkpoint/.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["add_arguments", "add_config_arguments", "interrupted_hint", "main"]


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
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument(
        "--capture-updates",
        default=None,
        metavar="ROUNDS",
        help='save raw client updates of these rounds ("1,2,5" or "all") to DIR/captures.safetensors',
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..out_paths import check_out_dir
    from .config import load_config
    from .health import describe
    from .loop import default_out_dir, run

    config = load_config(args.config, args.overrides)
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
    metric = summary["final_metric"]
    shown = "n/a" if metric is None else f"{metric:.4f}"
    warned = describe(summary["warnings"])
    print(
        f"{summary['rounds']} rounds, final {summary['metric_name']} {shown}, best "
        f"{summary['best_metric']}, uplink {summary['total_uplink_bytes'] / 1e6:.3f} MB, downlink "
        f"{summary['total_downlink_bytes'] / 1e6:.3f} MB, {summary['wall_s']:.1f} s -> {summary['out_dir']}"
        + (f"; finished with {warned} (see summary.json)" if warned else "")
    )
    return 0


def interrupted_hint(args: argparse.Namespace, out: str | Path) -> str:
    """The line printed on Ctrl-C: the last finished round and the command that continues the run."""
    from ..errors import FedsqueezeError
    from .checkpoint import load_checkpoint

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
