"""fedsqueeze: communication-efficient federated LoRA fine-tuning with exact byte accounting.

Importing fedsqueeze changes no environment variable and no global library state; the ``fedsqueeze``
command and fedsqueeze's Flower apps turn the Hugging Face hub off when they start (see
:mod:`fedsqueeze.offline`).
"""

from importlib import metadata as _metadata

from .codecs import Codec, ErrorFeedback, Predictive, decode
from .errors import (
    ConfigError,
    FedsqueezeError,
    MeasurementError,
    MissingExtraError,
    PayloadError,
    SpecMismatchError,
    UpdateError,
    UsageError,
)
from .spec import UpdateSpec

try:
    __version__: str = _metadata.version("fedsqueeze")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
del _metadata

__all__ = [
    "Codec",
    "ConfigError",
    "ErrorFeedback",
    "FedsqueezeError",
    "MeasurementError",
    "MissingExtraError",
    "PayloadError",
    "Predictive",
    "SpecMismatchError",
    "UpdateError",
    "UpdateSpec",
    "UsageError",
    "__version__",
    "decode",
]
