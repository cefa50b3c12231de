"""Programmatic Flower simulation (``flwr.simulation.run_simulation``) of a :class:`FlowerSettings` job.

``run_simulation`` gives the apps an empty ``run_config``; the apps then read the settings from the
``FEDSQUEEZE_FLOWER_RUN_CONFIG`` environment variable, which Ray's actors inherit from this process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._extras import require
from .env import apply_offline_env
from .settings import RUN_CONFIG_ENV, FlowerSettings

__all__ = ["simulate"]


def simulate(
    settings: FlowerSettings, *, cpus_per_client: float = 1.0, num_cpus: int | None = None
) -> dict[str, Any]:
    """Run ``settings`` with ``data.num_clients`` virtual SuperNodes; returns the summary."""
    apply_offline_env()
    require("flwr", "flower", "Flower simulations")
    require("ray", "flower", "Flower simulations (flwr[simulation])")
    os.environ[RUN_CONFIG_ENV] = json.dumps(settings.to_run_config())
    from flwr.simulation import run_simulation

    from .client_app import app as client_app
    from .server_app import app as server_app

    init_args: dict[str, Any] = {"logging_level": "ERROR", "include_dashboard": False}
    if num_cpus is not None:
        init_args["num_cpus"] = num_cpus
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=settings.config.data.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": init_args,
        },
    )
    summary_path = Path(settings.out_dir) / "summary.json"
    return json.loads(summary_path.read_text(encoding="utf-8"))
