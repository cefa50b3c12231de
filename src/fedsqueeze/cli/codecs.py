"""List the registered codecs, or explain one: its options, their defaults and what they mean.

  fedsqueeze codecs                  # every codec: id, rate knob, summary, options with defaults
  fedsqueeze codecs flm_topk         # one codec: summary, then each option, its default and its meaning
Set options in a run config as codec.options (e.g. --set codec.options.rate=0.5).
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
import textwrap

from rich.console import Console
from rich.table import Table

from .._docstring import parameters, plain
from ..codecs import codec_class
from ..codecs.registry import available

__all__ = ["add_arguments", "describe_codec", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, metavar="NAME", help="a codec to explain")
    parser.add_argument("--plain", action="store_true", help="tab-separated output instead of a table")


def _width() -> int:
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else 140


def describe_codec(name: str, width: int = 100) -> str:
    """``name``'s summary, wire id, rate knob and every option with its default and its docstring text."""
    cls = codec_class(name)  # an unknown name: ConfigError with a "did you mean"
    defaults = cls().options()
    helps = parameters(cls.__doc__)
    head = (inspect.cleandoc(cls.__doc__ or "").splitlines() or [""])[0]
    lines = [f"{name} (wire id {cls.codec_id}): {cls.summary}"]
    if head and head != cls.summary:
        lines.append(plain(head))
    path = cls.rate_path(defaults)
    if path is None:
        lines.append("rate knob: none (fixed size)")
    elif path == (cls.rate_option,):
        lines.append(f"rate knob: {cls.rate_option}")
    else:  # a wrapper whose rate is its inner codec's (predictive)
        lines.append(f"rate knob: {'.'.join(path)} (the inner codec's)")
    if not defaults:
        lines.append("options: none")
        return "\n".join(lines) + "\n"
    lines.append("options (set as codec.options.KEY in a run config):")
    for key, value in defaults.items():
        lines.append(f"  {key} = {value!r}")
        text = plain(helps.get(key, "")) or "(no description)"
        pad = " " * 6
        lines += textwrap.wrap(text, width=max(40, width - 6), initial_indent=pad, subsequent_indent=pad)
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(describe_codec(args.name, _width()), end="")
        return 0
    rows = []
    for name in available():
        cls = codec_class(name)
        opts = ", ".join(f"{k}={v!r}" for k, v in cls().options().items())
        rows.append((name, str(cls.codec_id), cls.rate_option or "-", cls.summary, opts))
    if args.plain:
        for r in rows:
            print("\t".join(r))
        return 0
    table = Table(title="fedsqueeze codecs", caption="fedsqueeze codecs NAME explains a codec's options")
    for col in ("codec", "id", "rate knob", "description", "options (defaults)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console(width=_width()).print(table)
    return 0
