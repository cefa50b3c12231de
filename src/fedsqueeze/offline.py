"""Offline mode for fedsqueeze's own entry points: no Hugging Face hub access.

fedsqueeze reads its models and data from installed packages, so its command line (``fedsqueeze ...``) and
its Flower apps turn the hub off when they start, by setting :data:`HUB_OFFLINE_ENV` where the user has not
set a value. Importing fedsqueeze never does: an application that imports the library keeps its own
``from_pretrained`` and downloads. Set ``FEDSQUEEZE_OFFLINE=0`` to keep the hub on in those entry points too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = ["HUB_OFFLINE_ENV", "OPT_OUT_VAR", "apply_offline_mode", "offline_requested"]

HUB_OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
OPT_OUT_VAR = "FEDSQUEEZE_OFFLINE"
_OFF = ("0", "false", "no", "off")


def offline_requested(env: Mapping[str, str] | None = None) -> bool:
    """False when ``FEDSQUEEZE_OFFLINE`` is ``0``, ``false``, ``no`` or ``off`` (any case); else True."""
    value = (os.environ if env is None else env).get(OPT_OUT_VAR, "1")
    return value.strip().lower() not in _OFF


def apply_offline_mode(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set :data:`HUB_OFFLINE_ENV` in ``env`` (default ``os.environ``) unless opted out.

    Keys the user has set are left as they are. Call it before transformers or huggingface_hub is imported
    (they read these variables at import time). Returns ``env``.
    """
    target = os.environ if env is None else env
    if offline_requested(target):
        for key, value in HUB_OFFLINE_ENV.items():
            target.setdefault(key, value)
    return target
