"""Environment defaults that keep Flower and Ray off the network: no telemetry, update checks, installs."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["OFFLINE_ENV", "apply_offline_env"]

# Why each one: flwr 1.41 sends telemetry, POSTs a daily update
# check, and the SuperLink `uv sync`s an app's dependencies into a fresh venv per run (GBs of CUDA torch).
OFFLINE_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


def apply_offline_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set :data:`OFFLINE_ENV` in ``env`` (default ``os.environ``) where the user has not set a value.

    Call it before importing ``flwr`` (some flags are read at import time). Returns ``env``.
    """
    target = os.environ if env is None else env
    for key, value in OFFLINE_ENV.items():
        target.setdefault(key, value)
    return target
