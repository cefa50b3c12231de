"""Coercion: text and TOML values into the typed fields of a config section.

Two steps. First the one ``KEY=VALUE`` grammar of the command line (``--set key=value`` and
``--codec NAME:KEY=VALUE,...``): a value is a TOML literal (``3``, ``0.5``, ``inf``, ``true``, ``"x"``,
``["query", "value"]``), ``null`` (``None``), or else the raw text, stripped (``elias_fano``).
:func:`fedsqueeze.config.loading.apply_overrides` reads ``--set`` with it and :func:`parse_codec` the codec
strings of ``fedsqueeze bench``. Then :func:`coerce` checks a TOML value against a field's type hint (with
light conversions: an int for a float, a string for a list of one), and :func:`build_section` builds a
section's dataclass from its raw table.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["NULL", "build_section", "coerce", "parse_assignment", "parse_codec", "parse_value"]

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


def build_section(section: str, kind: type, raw: Any) -> Any:
    """The dataclass ``kind`` built from the raw table ``raw`` of ``[section]``, every value coerced.

    Raises
    ------
    ConfigError
        ``raw`` is not a table, a key is unknown, or a value has the wrong type or is not allowed (the
        section's own ``__post_init__`` checks).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    hints = typing.get_type_hints(kind)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"unknown key {section}.{key}; allowed: {', '.join(fields)}")
        kwargs[key] = coerce(f"{section}.{key}", value, hints[key])
    return kind(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (TOML scalars/arrays only); light conversions.

    ``"null"`` (:data:`NULL`) and ``None`` are ``None`` for an optional type; a string is a list of one for
    a tuple type; an int is a float for a float. Raises :class:`~fedsqueeze.ConfigError` naming ``key``.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if (value is None or value == NULL) and type(None) in args:  # "null": TOML has no null
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: value {value!r} has the wrong type")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(coerce(key, v, inner) for v in value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)  # the section's own __post_init__ checks the entries
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover
