"""The one ``KEY=VALUE`` grammar of the command line: ``--set key=value`` and ``--codec NAME:KEY=VALUE,...``.

A value is a TOML literal (``3``, ``0.5``, ``inf``, ``true``, ``"x"``, ``["query", "value"]``), ``null``
(``None``), or else the raw text, stripped (``elias_fano``). :func:`fedsqueeze.fl.config.apply_overrides`
reads ``--set`` with it and :func:`parse_codec` the codec strings of ``fedsqueeze bench``.
"""

from __future__ import annotations

import tomllib
from typing import Any

from .errors import ConfigError

__all__ = ["NULL", "parse_assignment", "parse_codec", "parse_value"]

NULL = "null"  # the value text that means None (TOML has no null)


def parse_value(text: str) -> Any:
    """A value: a TOML literal, ``null`` (``None``), else the stripped text itself."""
    text = text.strip()
    if text == NULL:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(item: str) -> tuple[str, Any] | None:
    """``KEY=VALUE`` as ``(key, value)`` (value by :func:`parse_value`); ``None`` if malformed."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        return None
    return key, parse_value(text)


def parse_codec(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:KEY=VALUE,...`` as ``(name, options)``.

    Examples: ``wf_ecq``, ``wf_ecq:quantizer=scalar``, ``topk:value_bits=16,positions=elias_fano``.
    """
    name, _, rest = text.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        parsed = parse_assignment(item)
        if parsed is None:
            raise ConfigError(f"codec option {item!r} in {text!r} must be KEY=VALUE (wf_ecq:quantizer=tcq)")
        opts[parsed[0]] = parsed[1]
    return name.strip(), opts
