"""Config fields that carry their own check: ``setting(default, choices=...)`` or ``range=...``.

The allowed values of a config key live in its dataclass field's metadata, read by one validator
(:func:`validate`, called from each config's ``__post_init__``) and by the key reference generator
(:mod:`fedsqueeze.config.doc`), so the check and ``docs/config.md`` cannot drift apart. Checks that
involve other keys or a pattern stay in the config's ``__post_init__`` and describe themselves with
``allowed=`` (documentation only). The help text of a key is its NumPy docstring entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["POSITIVE", "Range", "allowed_text", "setting", "validate"]

_META = "fedsqueeze"  # the metadata key of our field metadata


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric range; ``text`` overrides how it is written (``"1..8"``, ``"[0, 2**63)"``)."""

    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = False
    text: str | None = None
    note: str = ""  # added to the error message, e.g. " (0 turns it off)"

    def ok(self, value: Any) -> bool:
        lo = self.low is None or (value >= self.low if self.low_closed else value > self.low)
        hi = self.high is None or (value <= self.high if self.high_closed else value < self.high)
        return bool(lo and hi)

    def describe(self) -> str:
        """The allowed values as written in ``docs/config.md``: ``> 0``, ``>= 1``, ``[0, 1)``."""
        if self.text is not None:
            return self.text
        if self.high is None:
            return f"{'>=' if self.low_closed else '>'} {_num(self.low)}"
        left, right = "[" if self.low_closed else "(", "]" if self.high_closed else ")"
        return f"{left}{_num(self.low)}, {_num(self.high)}{right}"

    def message(self, key: str, value: Any) -> str:
        rule = self.describe()
        rule = rule if self.high is None and self.text is None else f"in {rule}"
        return f"{key} must be {rule}{self.note}, got {value}"


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


POSITIVE = Range(0, low_closed=False)  # "> 0"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    choices: Sequence[str] | None = None,
    range: Range | None = None,
    allowed: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field whose metadata holds its check (``choices`` or ``range``) or ``allowed`` text."""
    meta = {_META: {"choices": tuple(choices) if choices else None, "range": range, "allowed": allowed}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _meta(field: dataclasses.Field) -> dict[str, Any]:
    return field.metadata.get(_META, {})


def allowed_text(field: dataclasses.Field) -> str:
    """The field's allowed values for ``docs/config.md`` (empty if it declares none)."""
    meta = _meta(field)
    if meta.get("allowed"):
        return meta["allowed"]
    if meta.get("choices"):
        return ", ".join(meta["choices"])
    if meta.get("range"):
        return meta["range"].describe()
    return ""


def validate(config: Any, section: str) -> None:
    """Raise :class:`~fedsqueeze.ConfigError` for the first field of ``config`` outside its declared values.

    ``None`` passes (``int | None`` keys mean unset); the config's own ``__post_init__`` checks the rest.
    """
    for field in dataclasses.fields(config):
        meta, value = _meta(field), getattr(config, field.name)
        if not meta or value is None:
            continue
        key = f"{section}.{field.name}"
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
        if meta["range"] is not None and not meta["range"].ok(value):
            raise ConfigError(meta["range"].message(key, value))
