"""Exception tree of fedsqueeze.

Every error raised on purpose by the library derives from :class:`FedsqueezeError`, so callers can catch one
type. :class:`PayloadError` marks untrusted bytes that cannot be decoded, :class:`UpdateError` an update
handed to a codec that cannot be encoded (not a mapping of tensors, NaN or Inf values), :class:`ConfigError` a
configuration value or option, :class:`UsageError` a library function called with arguments outside its
domain (a bug in the calling code, not a setting). These are also ``ValueError`` so generic handlers keep
working; :class:`MissingExtraError` is also ``ImportError`` and :class:`MeasurementError` ``RuntimeError``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FedsqueezeError",
    "MeasurementError",
    "MissingExtraError",
    "PayloadError",
    "SpecMismatchError",
    "UpdateError",
    "UsageError",
]


class FedsqueezeError(Exception):
    """Base class of every fedsqueeze error."""


class PayloadError(FedsqueezeError, ValueError):
    """A payload is malformed, truncated, oversized, of another spec or fails its checksum."""


class SpecMismatchError(PayloadError):
    """A payload was produced for a different :class:`~fedsqueeze.UpdateSpec`."""


class ConfigError(FedsqueezeError, ValueError):
    """A configuration value or codec option is invalid; the message says what to fix."""


class MissingExtraError(FedsqueezeError, ImportError):
    """An optional dependency is not installed; the message names the ``fedsqueeze[...]`` extra to install."""


class UpdateError(FedsqueezeError, ValueError):
    """An update to encode is not a mapping of names to tensors, or holds NaN or Inf values."""


class UsageError(FedsqueezeError, ValueError):
    """A library function got arguments outside its domain: NaN where a number is needed, a value too wide
    for its field, a sample larger than its population. A bug in the calling code, not a setting."""


class MeasurementError(FedsqueezeError, RuntimeError):
    """A benchmark cannot produce a trustworthy measurement (e.g. the profiler dropped markers)."""
