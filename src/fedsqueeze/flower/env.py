"""Environment defaults that keep Flower and Ray off the network: no telemetry, update checks, installs."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from ..offline import HUB_OFFLINE_ENV, apply_offline_mode

__all__ = ["FLOWER_ENV", "OFFLINE_ENV", "apply_offline_env"]

# flwr 1.41 sends telemetry, POSTs a daily update check, and the SuperLink `uv sync`s an app's dependencies
# into a fresh venv per run (gigabytes of CUDA torch); Ray reports usage stats.
FLOWER_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Everything apply_offline_env may set; the hub keys only without FEDSQUEEZE_OFFLINE=0 (fedsqueeze.offline).
OFFLINE_ENV: dict[str, str] = {**FLOWER_ENV, **HUB_OFFLINE_ENV}


def apply_offline_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set :data:`FLOWER_ENV` and the hub's offline mode in ``env`` (default ``os.environ``).

    Only keys the user has not set are written; ``FEDSQUEEZE_OFFLINE=0`` keeps the hub on (see
    :func:`fedsqueeze.offline.apply_offline_mode`). Call it before importing ``flwr`` (some flags are read at
    import time). Returns ``env``.
    """
    target = os.environ if env is None else env
    for key, value in FLOWER_ENV.items():
        target.setdefault(key, value)
    return apply_offline_mode(target)
