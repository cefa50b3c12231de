"""``[codec]`` and ``[downlink]``: a codec by registry name with its options (:class:`CodecConfig`).

Both sections are registered here with their own builder (:func:`build_codec`): a codec name alone is
short for its ``name`` (``downlink = "fp16"``), and options given without a name apply on top of the
section's default codec's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .sections import register_section

__all__ = [
    "CODEC_DEFAULT",
    "CODEC_SECTIONS",
    "DOWNLINK_DEFAULT",
    "CodecConfig",
    "build_codec",
    "default_codec",
]

CODEC_SECTIONS = ("codec", "downlink")


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """A codec by registry name and its options (validated by :func:`fedsqueeze.codecs.get`).

    Parameters
    ----------
    name
        A registered codec (``fedsqueeze codecs`` lists them). Changing it (in a file on a base, or with
        ``--set``) without giving ``options`` starts from the new codec's defaults.
    options
        The codec's options (``fedsqueeze codecs NAME`` lists them with their defaults); the codec's own
        defaults fill in the rest.
    """

    name: str = "identity"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))
        self.build()  # raises ConfigError for an unknown codec, option or value

    def build(self) -> Any:
        """A fresh codec instance."""
        from ..codecs import get

        return get(self.name, **self.options)


# The defaults both ways: wf_ecq at 2 bits per parameter, the uplink as update frames and the broadcast as
# delta frames that clients catch up on frame by frame (docs/downlink.md). Chosen by measurement on the
# LoRA-carried benchmark the default run is (docs/default-run.md has the recorded cells and the command).
CODEC_DEFAULT: tuple[str, Mapping[str, Any]] = ("wf_ecq", {"rate": 2.0})
DOWNLINK_DEFAULT: tuple[str, Mapping[str, Any]] = ("wf_ecq", {"rate": 2.0})


def default_codec(section: str) -> CodecConfig:
    """The codec a config without a ``[codec]`` / ``[downlink]`` section gets."""
    name, options = DOWNLINK_DEFAULT if section == "downlink" else CODEC_DEFAULT
    return CodecConfig(name, dict(options))


def build_codec(section: str, raw: Any) -> CodecConfig:
    """``[codec]`` / ``[downlink]`` (``section``) from its raw TOML value: a table with ``name`` and
    ``options``, a codec name (the ``downlink = "fp16"`` shorthand) or ``None`` (the section's default)."""
    if raw is None:
        return default_codec(section)
    if isinstance(raw, str):  # `downlink = "identity"` shorthand
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{section} must be a table with keys name, options (or a codec name)")
    unknown = [k for k in raw if k not in ("name", "options")]
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]}; allowed: name, options")
    default = default_codec(section)
    name = raw.get("name", default.name)
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name must be a codec name (string), got {name!r}")
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"{section}.options must be a table, got {options!r}")
    if "name" not in raw:  # options for the default codec: on top of the default's own
        options = {**default.options, **options}
    try:
        return CodecConfig(name, options)
    except ConfigError as exc:
        raise ConfigError(f"{section}: {exc}") from None


register_section("codec", CodecConfig, build=lambda raw: build_codec("codec", raw))
register_section(
    "downlink",
    CodecConfig,
    build=lambda raw: build_codec("downlink", raw),
    note='The downlink codec (server → clients); `downlink = "fp16"` is short for its `name`.',
)
