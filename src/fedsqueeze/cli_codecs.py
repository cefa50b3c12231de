"""List the registered codecs with their options and one-line descriptions."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from .codecs import codec_class
from .codecs.registry import available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="tab-separated output instead of a table")


def main(args: argparse.Namespace) -> int:
    rows = []
    for name in available():
        cls = codec_class(name)
        opts = ", ".join(f"{k}={v!r}" for k, v in cls().options().items())
        rows.append((name, str(cls.codec_id), cls.rate_option or "-", cls.summary, opts))
    if args.plain:
        for r in rows:
            print("\t".join(r))
        return 0
    table = Table(title="fedsqueeze codecs")
    for col in ("codec", "id", "rate knob", "description", "options (defaults)"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)
    return 0
