"""``RunConfig``: one federated run, every registered config section in one frozen object.

The sections are registered by their modules (:mod:`fedsqueeze.config.sections`); this module imports the
built-in ones. ``RunConfig`` checks the rules that span the core sections itself and runs each registered
section's ``check`` (e.g. ``[tgap]``'s) after them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .codec import CodecConfig, default_codec
from .data import DataConfig, check_classifier
from .fl import FLConfig
from .model import ModelConfig
from .network import NetworkConfig
from .sections import get_section, section_names, sections
from .tgap import TGAPConfig
from .train import LocalTrainConfig

__all__ = ["RunConfig"]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; ``to_dict()`` is what ``summary.json`` stores.

    One attribute per built-in section; a section registered by a phase without an attribute here
    (:func:`~fedsqueeze.config.sections.register_section`) is in ``extra`` by name, and :meth:`section`
    returns any section by name (its default when ``extra`` lacks it).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: LocalTrainConfig = dataclasses.field(default_factory=LocalTrainConfig)
    fl: FLConfig = dataclasses.field(default_factory=FLConfig)
    codec: CodecConfig = dataclasses.field(default_factory=lambda: default_codec("codec"))
    downlink: CodecConfig = dataclasses.field(default_factory=lambda: default_codec("downlink"))
    tgap: TGAPConfig = dataclasses.field(default_factory=TGAPConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_classifier(self.model, self.data)
        if self.fl.clients_per_round > self.data.num_clients:
            raise ConfigError(
                f"fl.clients_per_round ({self.fl.clients_per_round}) exceeds data.num_clients "
                f"({self.data.num_clients})"
            )
        from ..codecs import codec_class

        if codec_class(self.downlink.name).uses_reference:
            raise ConfigError(f"downlink.name = {self.downlink.name!r} needs a reference; use a plain codec")
        if codec_class(self.codec.name).uses_reference and self.downlink.name == "identity":
            raise ConfigError(
                f"codec {self.codec.name!r} predicts each update from the last broadcast delta frame, which "
                "a dense downlink has none of: set downlink.name to a codec (see docs/downlink.md)"
            )
        for rate in sorted(set(self.fl.uplink_rates)):
            try:
                CodecConfig(self.codec.name, _with_rate(self.codec, rate))
            except ConfigError as exc:
                raise ConfigError(f"fl.uplink_rates: {exc}") from None
        unknown = sorted(set(self.extra) - _extra_names())
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]}; allowed: {', '.join(section_names())}")
        object.__setattr__(self, "extra", dict(self.extra))
        for section in sections():  # the registered cross-section rules (e.g. tgap's)
            if section.check is not None:
                section.check(self)

    def section(self, name: str) -> Any:
        """The section ``name``: an attribute, else ``extra[name]``, else the registered default."""
        if name in _FIELDS:
            return getattr(self, name)
        if name in self.extra:
            return self.extra[name]
        return get_section(name).build(None)

    def uplink_rate(self, r: int) -> float | None:
        """Round ``r``'s (from 1) uplink rate under ``fl.uplink_rates``, or ``None`` without a schedule."""
        rates = self.fl.uplink_rates
        return None if not rates else rates[min(r, len(rates)) - 1]

    def uplink_codec(self, r: int) -> CodecConfig:
        """The uplink codec of round ``r`` (from 1): ``codec`` at the round's rate of ``fl.uplink_rates``,
        or ``codec`` itself without a schedule."""
        rate = self.uplink_rate(r)
        return self.codec if rate is None else CodecConfig(self.codec.name, _with_rate(self.codec, rate))

    @property
    def tgap_variant(self) -> str:
        """``tgap.variant`` with ``auto`` resolved by the codec's ``training_variant`` declaration."""
        if self.tgap.variant != "auto":
            return self.tgap.variant
        from ..codecs import codec_class

        return codec_class(self.codec.name).training_variant

    def differences(self, saved: Mapping[str, Any], *, except_rounds: bool = True) -> list[str]:
        """The ``section.key`` names where ``saved`` (a stored :meth:`to_dict`) differs from this config.

        The one "same config" test of resuming a run, reusing a TGAP model and skipping a finished study
        cell. Keys ``saved`` lacks (files from before a key existed) count as their code default, and the
        comparison is of JSON values (tuples and lists are equal). ``except_rounds``: ``fl.rounds`` may
        differ (it only lengthens the run).
        """
        old = _as_json(_filled(saved))
        now = _as_json(self.to_dict())
        return [
            f"{sec}.{key}"
            for sec in sorted(set(old) | set(now))
            for key in sorted(set(old.get(sec, {})) | set(now.get(sec, {})))
            if not (except_rounds and (sec, key) == ("fl", "rounds"))
            and old.get(sec, {}).get(key) != now.get(sec, {}).get(key)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON friendly; tuples become lists, ``None`` is kept)."""
        out: dict[str, Any] = {}
        for name in section_names():
            sec = self.section(name)
            out[name] = {f.name: _plain(getattr(sec, f.name)) for f in dataclasses.fields(sec) if f.init}
        return out

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> RunConfig:
        """The config a stored :meth:`to_dict` (``summary.json`` → ``config``) was made with: keys it lacks
        (files from before a key existed) take the value they had then, as in :meth:`differences`."""
        return cls.from_dict(_filled(saved))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build and validate from a nested mapping (missing keys take defaults)."""
        if not isinstance(data, Mapping):
            raise ConfigError("a run config must be a table of sections")
        names = section_names()
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]}; allowed: {', '.join(names)}")
        built: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for section in sections():
            value = section.build(data.get(section.name))
            if section.name in _FIELDS:
                built[section.name] = value
            else:
                extra[section.name] = value
        return cls(**built, extra=extra)


#: Keys whose code default changed after the key was added, with the default they had before: a saved
#: config without the key was made before the key existed, so with that value, not with today's default.
LEGACY_FILL: Mapping[tuple[str, str], Any] = {
    ("train", "optimizer"): "adam",
    ("model", "head"): "train",
    ("fl", "downlink_catch_up"): "frames",
}


def _filled(saved: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` with the keys it lacks at their code defaults (section by section), or at
    :data:`LEGACY_FILL`'s value for a key whose default changed."""
    out: dict[str, Any] = {}
    defaults = RunConfig().to_dict()
    for (sec, key), value in LEGACY_FILL.items():
        defaults[sec][key] = value
    for sec, table in defaults.items():
        got = saved.get(sec)
        out[sec] = {**table, **got} if isinstance(got, Mapping) else (table if got is None else got)
    out.update({sec: got for sec, got in saved.items() if sec not in out})
    return out


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig) if f.name != "extra")


def _extra_names() -> set[str]:
    """The registered sections that ``RunConfig`` has no attribute for (they live in ``extra``)."""
    return set(section_names()) - _FIELDS


def _with_rate(codec: CodecConfig, rate: float) -> dict[str, Any]:
    from ..codecs import with_rate  # lazily: the codecs pull in torch

    return with_rate(codec.name, codec.options, rate)
