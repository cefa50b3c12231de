"""The ``fedsqueeze`` command line.

Subcommands live in their own modules of this package (``fedsqueeze.cli.run``, ``fedsqueeze.cli.tgap``, ...),
each with ``add_arguments(parser)`` and ``main(args) -> int``; this file only wires them up (the library
modules do not parse argv). A module that is not importable (an optional part) is left out of ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from .._extras import check, require
from ..errors import FedsqueezeError
from ..offline import apply_offline_mode

# (command path, module). The module's docstring's first line is the help text.
COMMANDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("codecs",), "fedsqueeze.cli.codecs"),
    (("run",), "fedsqueeze.cli.run"),
    (("bench", "rd"), "fedsqueeze.cli.bench_rd"),
    (("bench", "speed"), "fedsqueeze.cli.bench_speed"),
    (("bench", "intervals"), "fedsqueeze.cli.bench_intervals"),
    (("bench", "cg"), "fedsqueeze.cli.bench_cg"),
    (("bench", "steps"), "fedsqueeze.cli.bench_steps"),
    (("bench", "server"), "fedsqueeze.cli.bench_server"),
    (("flower", "simulate"), "fedsqueeze.cli.flower_simulate"),
    (("flower", "superlink"), "fedsqueeze.cli.flower_superlink"),
    (("flower", "supernode"), "fedsqueeze.cli.flower_supernode"),
    (("flower", "run"), "fedsqueeze.cli.flower_run"),
    (("tgap",), "fedsqueeze.cli.tgap"),
    (("study",), "fedsqueeze.cli.study"),
)

# Extras a command always needs, checked before it starts (the `cli` extra, rich, is checked for every
# command). Needs that depend on the config (fedsqueeze[llm] for a real model) are checked where they arise.
COMMAND_EXTRAS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {
    ("run",): (("matplotlib", "plots"),),
    ("study",): (("matplotlib", "plots"),),
    ("bench", "rd"): (("matplotlib", "plots"),),  # unless --no-plot
    ("bench", "intervals"): (("matplotlib", "plots"),),
    ("flower", "simulate"): (("flwr", "flower"), ("ray", "flower"), ("matplotlib", "plots")),
    ("flower", "superlink"): (("flwr", "flower"), ("matplotlib", "plots")),  # it runs the ServerApp
    ("flower", "supernode"): (("flwr", "flower"),),
    ("flower", "run"): (("flwr", "flower"),),
}

EPILOG = """\
offline mode: the fedsqueeze command reads models and data from installed packages and sets
HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 (unless already set) before it starts; set
FEDSQUEEZE_OFFLINE=0 to keep the Hugging Face hub on."""


# One line for each command group in the top-level help.
GROUP_HELP = {
    "bench": (
        "benchmarks: rate-distortion against the limits, encode/decode speed, FLM-TopK interval size, "
        "training step time, server round time and memory"
    ),
    "flower": "the same job on Flower: one-machine simulation, or a SuperLink, SuperNodes and a run",
}


def _help_width() -> int:
    """The terminal's width on a terminal; 120 columns when the help goes to a file or pipe."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else 120


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written, uses the whole width, and shows each option's default unless its
    help already names one or it has none worth showing (``None``, ``False``, an empty list)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _help_width())
        kwargs.setdefault("max_help_position", 30)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and not (
                default is None or default is False or default is argparse.SUPPRESS or default in ([], "")
            )
        ):
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    from .. import __version__

    return f"fedsqueeze {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsqueeze",
        description="Communication-efficient federated LoRA fine-tuning with exact byte accounting.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, modname in COMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == modname or modname.startswith(exc.name + ".")):
                continue  # that part is not built (yet)
            raise
        doc = (mod.__doc__ or "").strip().splitlines()
        helptext = doc[0] if doc else ""
        where = top
        for part in path[:-1]:
            if part not in groups:
                g = top.add_parser(
                    part,
                    help=GROUP_HELP.get(part, f"{part} subcommands"),
                    description=GROUP_HELP.get(part),
                    formatter_class=HelpFormatter,
                )
                groups[part] = g.add_subparsers(dest=f"{part}_command", metavar="SUBCOMMAND", required=True)
            where = groups[part]
        sub = where.add_parser(
            path[-1],
            help=helptext,
            description="\n".join(doc),
            formatter_class=HelpFormatter,
        )
        mod.add_arguments(sub)
        sub.set_defaults(_main=mod.main, _command=path)
    return parser


def check_extras(args: argparse.Namespace) -> None:
    """Raise :class:`~fedsqueeze.errors.MissingExtraError` for an extra the parsed command needs."""
    path = tuple(getattr(args, "_command", ()))
    name = " ".join(("fedsqueeze", *path))
    for module, extra in COMMAND_EXTRAS.get(path, ()):
        if module == "matplotlib" and getattr(args, "no_plot", False):
            continue
        check(module, extra, f"`{name}`")


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_mode()  # before any subcommand can import transformers; FEDSQUEEZE_OFFLINE=0 opts out
    try:
        require("rich", "cli", "the fedsqueeze command")
    except FedsqueezeError as exc:
        print(f"fedsqueeze: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_main"):
        parser.print_help()
        return 2
    try:
        check_extras(args)
        return int(args._main(args) or 0)
    except FedsqueezeError as exc:
        print(f"fedsqueeze: error: {exc}", file=sys.stderr)
        return 2
