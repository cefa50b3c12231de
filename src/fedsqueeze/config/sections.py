"""The registry of config sections: every ``[section]`` of a run config, by name, with its dataclass.

A section is a frozen dataclass that validates itself in ``__post_init__``. :func:`register_section` adds
one; :class:`~fedsqueeze.config.run.RunConfig` builds, stores and prints every registered section, and
``docs/config.md`` lists them (:mod:`fedsqueeze.config.doc`). A run phase that needs settings of its own
(CG-FedLLM's TGAP: :mod:`fedsqueeze.config.tgap`) registers its section and, with ``check``, the rules that
tie it to the rest of the run.

The documented sections keep the order of :data:`ORDER` (the order of ``summary.json`` and
``docs/config.md``); a section not in it comes after them, in registration order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from .coerce import build_section

__all__ = ["ORDER", "Section", "get_section", "register_section", "section_names", "sections"]

#: The order of the built-in sections in ``summary.json``, ``--print-config`` and ``docs/config.md``.
ORDER = ("model", "data", "train", "fl", "codec", "downlink", "tgap", "network")


@dataclasses.dataclass(frozen=True)
class Section:
    """One registered config section.

    Attributes
    ----------
    name
        Its name in a config file (``[name]``) and in ``--set name.key=value``.
    kind
        Its frozen dataclass; the fields are the keys, the NumPy docstring's ``Parameters`` their help.
    build
        ``raw -> section``: the section from the raw TOML value (``None`` when the config has no such
        section), validated; raises :class:`~fedsqueeze.ConfigError`.
    check
        ``run_config -> None``: the rules that tie this section to others, run by ``RunConfig`` after every
        section is built; raises :class:`~fedsqueeze.ConfigError`.
    note
        An extra line for ``docs/config.md`` (e.g. a shorthand the section accepts).
    """

    name: str
    kind: type
    build: Callable[[Any], Any]
    check: Callable[[Any], None] | None = None
    note: str = ""


_SECTIONS: dict[str, Section] = {}


def register_section(
    name: str,
    kind: type,
    *,
    build: Callable[[Any], Any] | None = None,
    check: Callable[[Any], None] | None = None,
    note: str = "",
) -> Section:
    """Register the config section ``name`` with its dataclass ``kind``; returns the entry.

    Parameters
    ----------
    name
        The section's name (a new one: a name is registered once).
    kind
        A frozen dataclass that validates itself; every key has a default.
    build
        How to make the section from the raw TOML value (``None``: absent); default: the keys checked
        against ``kind``'s fields and their type hints (:func:`~fedsqueeze.config.coerce.build_section`).
    check
        Cross-section rules, called with the whole ``RunConfig``.
    note
        An extra line for ``docs/config.md``.

    Raises
    ------
    UsageError
        ``name`` is registered already, or ``kind`` is not a dataclass.
    """
    if name in _SECTIONS:
        raise UsageError(f"config section {name!r} is registered already")
    if not dataclasses.is_dataclass(kind):
        raise UsageError(f"config section {name!r}: {kind!r} is not a dataclass")

    def default_build(raw: Any) -> Any:
        return build_section(name, kind, {} if raw is None else raw)

    entry = Section(name, kind, build or default_build, check, note)
    _SECTIONS[name] = entry
    return entry


def sections() -> list[Section]:
    """Every registered section: those of :data:`ORDER` in that order, then the others as registered."""
    known = [_SECTIONS[n] for n in ORDER if n in _SECTIONS]
    return known + [s for n, s in _SECTIONS.items() if n not in ORDER]


def section_names() -> tuple[str, ...]:
    """The registered sections' names, in the order of :func:`sections`."""
    return tuple(s.name for s in sections())


def get_section(name: str) -> Section:
    """The registered section ``name``; :class:`KeyError` if there is none."""
    return _SECTIONS[name]
