"""Loading a run config: packaged presets, ``base =`` inheritance, merging and ``--set`` overrides.

A config file has one table per registered section (:mod:`fedsqueeze.config.sections`; ``docs/config.md``
lists every key). A file is applied on top of the ``default`` preset unless its top-level ``base`` names
another preset, another file or ``"none"`` (:func:`load_config_data`); keys missing from the whole chain take
the dataclass defaults. Unknown keys and bad values raise :class:`~fedsqueeze.ConfigError` naming the key
and what is allowed. Presets ship inside the package (``fedsqueeze/configs/*.toml``).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .codec import CODEC_SECTIONS, default_codec
from .coerce import parse_assignment
from .run import RunConfig
from .sections import section_names

__all__ = [
    "BASE_KEY",
    "NO_BASE",
    "apply_overrides",
    "load_config",
    "load_config_data",
    "merge_config",
    "preset_names",
    "preset_text",
]

BASE_KEY = "base"  # a config file's top-level key naming what it is applied on top of
NO_BASE = "none"  # ``base = "none"``: on top of the code defaults (the packaged presets)


def preset_names() -> list[str]:
    """Names of the packaged presets (``default``, ``smoke``, ``paper``, ...)."""
    root = resources.files("fedsqueeze") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of a packaged preset."""
    path = resources.files("fedsqueeze") / "configs" / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path.read_text(encoding="utf-8")


def _codec_name(data: Mapping[str, Any], section: str) -> str:
    """The codec name ``data`` gives ``section`` (``codec`` / ``downlink``), else the section's default."""
    raw = data.get(section)
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Mapping) and "name" in raw:
        return raw["name"]
    return default_codec(section).name


def _drop_options(data: dict[str, Any], section: str) -> None:
    """Forget ``section``'s options (a new codec starts from its own defaults)."""
    raw = data.get(section)
    if isinstance(raw, Mapping):
        data[section] = {k: v for k, v in raw.items() if k != "options"}


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (nested keys allowed: ``codec.options.rate=0.5``) in place.

    Values follow the one command-line grammar of :mod:`fedsqueeze.config.coerce` (TOML literals, ``null``,
    else the raw text), shared with ``--codec NAME:KEY=VALUE``.

    Setting ``codec.name`` (or ``downlink.name``) to another codec than ``data`` names drops ``data``'s
    options for it: the new codec starts from its own defaults, plus any ``codec.options...`` the same
    overrides set (in any order). Setting ``codec.options.rate`` without ``codec.options.density`` drops a
    density ``data`` gives (a preset's budget), and ``codec.options.density=null`` clears it.
    """
    sections = section_names()
    parsed = []
    for item in overrides:
        assignment = parse_assignment(item)
        if assignment is None:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = assignment
        parts = key.split(".")
        if parts[0] not in sections:
            raise ConfigError(f"unknown section {parts[0]} in --set {key}; allowed: {', '.join(sections)}")
        if len(parts) < 2:
            raise ConfigError(f"--set {key}: give section.key, e.g. fl.rounds=10")
        parsed.append((key, parts, value))
    for section in CODEC_SECTIONS:
        names = [value for _, parts, value in parsed if parts == [section, "name"]]
        if names and names[-1] != _codec_name(data, section):
            _drop_options(data, section)
        # A rate replaces the budget a preset gave as a density (the two knobs exclude each other), and
        # `density=null` clears it: no codec takes a None density.
        given = {tuple(parts[2:]) for _, parts, _ in parsed if parts[:2] == [section, "options"]}
        cleared = any(parts == [section, "options", "density"] and v is None for _, parts, v in parsed)
        if (("rate",) in given and ("density",) not in given) or cleared:
            options = data.get(section, {}).get("options") if isinstance(data.get(section), dict) else None
            if isinstance(options, dict):
                options.pop("density", None)
    parsed = [p for p in parsed if not (p[1][1:] == ["options", "density"] and p[2] is None)]
    for key, parts, value in parsed:
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part == "downlink":  # `downlink = "x"` shorthand in the file
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a table")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def merge_config(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` on top of ``base`` (raw config tables; neither is modified).

    Sections merge key by key: a key ``layer`` sets replaces the base's (an ``options`` table replaces the
    base's options as a whole). A ``codec`` / ``downlink`` that names another codec than ``base`` and gives
    no ``options`` starts from that codec's defaults, as with ``--set``.
    """
    out = copy.deepcopy(dict(base))
    for section, raw in layer.items():
        table = {"name": raw} if section in CODEC_SECTIONS and isinstance(raw, str) else raw
        old = out.get(section)
        if section in CODEC_SECTIONS and isinstance(old, str):
            old = {"name": old}
        if not (isinstance(table, Mapping) and isinstance(old, Mapping)):
            out[section] = copy.deepcopy(table)
            continue
        if section in CODEC_SECTIONS and table.get("name", _codec_name(out, section)) != _codec_name(
            out, section
        ):
            old = {k: v for k, v in old.items() if k != "options"}
        out[section] = {**old, **copy.deepcopy(dict(table))}
    return out


def _read_toml(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None


def load_config_data(path: str | Path | None = None, *, here: str | Path | None = None) -> dict[str, Any]:
    """The raw config tables of a TOML file or preset, with its ``base`` chain applied (no ``base`` key).

    The merge rule (documented in ``docs/config.md``): a file's top-level ``base`` names what it is applied
    on top of: a preset name, another TOML file (relative to this one) or ``"none"`` (the code defaults).
    A file without ``base`` is applied on top of the ``default`` preset; the packaged presets say
    ``base = "none"``. ``path`` ``None`` is the ``default`` preset; a relative ``path`` is looked up in
    ``here`` first (e.g. the folder of a study file), then in the working directory.
    """
    return _resolve(path, None if here is None else Path(here), ())


def _resolve(ref: str | Path | None, here: Path | None, seen: tuple[str, ...]) -> dict[str, Any]:
    name = "default" if ref is None else str(ref)
    candidate = Path(name) if here is None or Path(name).is_absolute() else here / name
    if ref is not None and not candidate.is_file() and here is not None and Path(name).is_file():
        candidate = Path(name)  # a path relative to the working directory
    if ref is not None and candidate.is_file():
        label, key = str(ref), str(candidate.resolve())
        text, folder = candidate.read_text(encoding="utf-8"), candidate.parent
        default_base = "default"
    elif name in preset_names():
        label, key, text, folder = f"preset {name}", f"preset:{name}", preset_text(name), None
        default_base = NO_BASE
    elif here is None:
        raise ConfigError(f"config file {name!r} not found (presets: {', '.join(preset_names())})")
    else:
        raise ConfigError(
            f"{'base = ' + repr(name) + ': ' if seen else ''}no such file (relative to {here}) and no such "
            f'preset ({", ".join(preset_names())}); base = "{NO_BASE}" means the code defaults'
        )
    if key in seen:
        raise ConfigError(f"{label}: base chain loops back to itself")
    data = _read_toml(text, label)
    base = data.pop(BASE_KEY, default_base)
    if not isinstance(base, str) or not base:
        raise ConfigError(f'{label}: base must be a preset name, a TOML path or "{NO_BASE}", got {base!r}')
    if base == NO_BASE:
        return data
    return merge_config(_resolve(base, folder, (*seen, key)), data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config (``None``: the embedded ``default`` preset) and apply ``--set`` overrides.

    ``path`` may also name a packaged preset (``"smoke"``, ``"paper"``). A file is applied on top of its
    ``base`` (see :func:`load_config_data`: the ``default`` preset unless it names another).
    """
    data = apply_overrides(load_config_data(path), overrides)
    return RunConfig.from_dict(data)
