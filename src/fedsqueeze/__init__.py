"""fedsqueeze: communication-efficient federated LoRA fine-tuning with exact byte accounting."""

from __future__ import annotations

import os

# No hub access at run time, ever: models and data come from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .codecs import Codec, ErrorFeedback, decode
from .errors import ConfigError, FedsqueezeError, PayloadError, SpecMismatchError, UpdateError
from .spec import UpdateSpec

__version__ = "0.1.0"

__all__ = [
    "Codec",
    "ConfigError",
    "ErrorFeedback",
    "FedsqueezeError",
    "PayloadError",
    "SpecMismatchError",
    "UpdateError",
    "UpdateSpec",
    "__version__",
    "decode",
]
