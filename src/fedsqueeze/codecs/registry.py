"""Codec registry: names and wire ids to codec classes."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from ..errors import ConfigError, UsageError
from .base import Codec

__all__ = ["BUILTIN", "PLUGINS", "available", "by_id", "get", "register", "with_path", "with_rate"]

# The modules of the built-in codecs, relative to this package; importing one registers its codecs.
# Adding a built-in codec is one new module plus its line here.
BUILTIN: tuple[str, ...] = (
    "dense",
    "baselines.topk",
    "baselines.randk",
    "baselines.seedproj",
    "baselines.qsgd",
    "baselines.signsgd",
    "baselines.powersgd",
    "baselines.compeft",
    "flm.flm_topk",
    "flm.fed_cvlc",
    "wf_ecq.codec",
    "blockwise.codec",
    "predictive",
)
# Built-in codecs that live above this package, by absolute module path: a plugin-style registration. The
# CG-FedLLM codecs sit in ``fedsqueeze.cg_fedllm`` (with their autoencoder, store and TGAP); importing one
# registers it, but ``codecs`` never imports that package (its layer is below it: tests/test_import_graph.py).
PLUGINS: tuple[str, ...] = (
    "fedsqueeze.cg_fedllm.codec",
    "fedsqueeze.cg_fedllm.codec_q",
)

_BY_NAME: dict[str, type[Codec]] = {}
_BY_ID: dict[int, type[Codec]] = {}

C = TypeVar("C", bound=type[Codec])


def register(cls: C) -> C:
    """Class decorator adding a codec to the registry (name and id must be new)."""
    name, cid = cls.name, cls.codec_id
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise UsageError(f"codec name {name!r} must be lower-case letters, digits and underscores")
    if not 0 < cid < 256:
        raise UsageError(f"codec id of {name!r} must be in 1..255")
    if name in _BY_NAME or cid in _BY_ID:
        raise UsageError(f"codec {name!r} (id {cid}) collides with a registered codec")
    _BY_NAME[name] = cls
    _BY_ID[cid] = cls
    return cls


_loaded = False


def _load_builtin() -> None:
    """Import the :data:`BUILTIN` and :data:`PLUGINS` modules once (each registers its codecs)."""
    global _loaded
    if _loaded:
        return
    for module in BUILTIN:
        importlib.import_module(f"{__package__}.{module}")
    for module in PLUGINS:
        importlib.import_module(module)
    _loaded = True


def available() -> list[str]:
    """Names of the registered codecs, sorted."""
    _load_builtin()
    return sorted(_BY_NAME)


def codec_class(name: str) -> type[Codec]:
    _load_builtin()
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _BY_NAME, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown codec {name!r}; {hint}available: {', '.join(sorted(_BY_NAME))}") from None


def get(name: str, **options: Any) -> Codec:
    """Instantiate codec ``name`` with ``options``.

    Raises
    ------
    ConfigError
        Unknown codec, unknown option (the message lists the allowed ones) or an invalid value.
    """
    cls = codec_class(name)
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"codec {name!r} has no option(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}"
        )
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"codec {name!r}: {exc}") from None


def with_path(options: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``options`` with ``value`` at ``path``, copying the nested tables on the way."""
    out = dict(options)
    inner = out.get(path[0])
    out[path[0]] = (
        value if len(path) == 1 else with_path(inner if isinstance(inner, Mapping) else {}, path[1:], value)
    )
    return out


def with_rate(name: str, options: Mapping[str, Any], rate: float) -> dict[str, Any]:
    """Codec ``name``'s ``options`` with its target rate set to ``rate`` bits per parameter (at its
    ``rate_path``: ``rate``, or the inner codec's for ``predictive``).

    Raises
    ------
    ConfigError
        A codec whose rate is fixed (no rate option), e.g. ``identity`` or ``signsgd``.
    """
    path = codec_class(name).rate_path(options)
    if path is None:
        raise ConfigError(f"codec {name!r} has a fixed rate (no rate option); it cannot take rate {rate:g}")
    return with_path(options, path, float(rate))


def by_id(codec_id: int) -> type[Codec] | None:
    """The codec class with wire id ``codec_id``, or ``None``."""
    _load_builtin()
    return _BY_ID.get(codec_id)
