"""Programmatic Flower simulation (``flwr.simulation.run_simulation``) of a :class:`FlowerSettings` job.

``run_simulation`` gives the apps an empty ``run_config``; the apps then read the settings from the
``FEDSQUEEZE_FLOWER_RUN_CONFIG`` environment variable, which Ray's actors inherit from this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._extras import require
from .env import apply_offline_env
from .settings import RUN_CONFIG_ENV, FlowerSettings, check_job_out_dir, default_out_dir

__all__ = ["quiet_simulation", "simulate"]


_RAY_TIP = r"Tip: In future versions of Ray"  # its accelerator env-var notice (we ask for no GPUs)


class _DropRunSimulationDeprecation(logging.Filter):
    """Flower warns that ``run_simulation`` is deprecated each time it is called: we call it on purpose.
    Also drops Flower's empty INFO/DEBUG messages (a bare ``INFO :`` line each)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.strip() and record.levelno <= logging.INFO:
            return False
        return not ("DEPRECATED FEATURE" in text and "run_simulation" in text)


@contextlib.contextmanager
def quiet_simulation(*, progress: bool = True) -> Iterator[None]:
    """Silence the library noise of a simulation that says nothing to a user of it, and (``progress``)
    show the ServerApp's per-round lines (logger ``fedsqueeze.flower`` at INFO) on stderr.

    Dropped: Flower's ``run_simulation`` deprecation warning, its empty INFO messages (bare ``INFO :``
    lines), and Ray's ``FutureWarning`` tip about accelerator environment variables (clients here ask for
    no GPU). Everything else of Flower and Ray,
    and every fedsqueeze warning, still shows.
    """
    flwr_log, ours = logging.getLogger("flwr"), logging.getLogger("fedsqueeze.flower")
    drop = _DropRunSimulationDeprecation()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = ours.level
    flwr_log.addFilter(drop)
    # Flower colours its level names with ANSI codes even when stderr is a file or a pipe: plain text there.
    colored = [h for h in flwr_log.handlers if getattr(h, "colored", False)]
    if not sys.stderr.isatty():
        for h in colored:
            setattr(h, "colored", False)  # noqa: B010 - a Flower ConsoleHandler attribute
    ours.addHandler(handler)
    if progress:
        ours.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_RAY_TIP, category=FutureWarning)
            yield
    finally:
        for h in colored:
            setattr(h, "colored", True)  # noqa: B010
        flwr_log.removeFilter(drop)
        ours.removeHandler(handler)
        ours.setLevel(level)


def simulate(
    settings: FlowerSettings,
    *,
    cpus_per_client: float = 1.0,
    num_cpus: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``settings`` with ``data.num_clients`` virtual SuperNodes; returns the summary.

    The nodes keep their state under ``OUT/nodes`` (unless ``settings.node_state_dir`` names another
    folder), so ``settings.resume`` continues an interrupted job bit for bit.

    ``progress``: print the per-round lines of ``fedsqueeze run`` on stderr (see :func:`quiet_simulation`).

    Raises
    ------
    ConfigError
        ``resume`` without an existing ``out_dir``, or a checkpoint in ``out_dir`` without ``resume``.
    """
    apply_offline_env()
    require("flwr", "flower", "Flower simulations")
    require("ray", "flower", "Flower simulations (flwr[simulation])")
    out = Path(settings.out_dir or default_out_dir(settings)).resolve()
    check_job_out_dir(out, settings.resume)  # here: the ServerApp's refusal would end inside Ray
    settings = dataclasses.replace(
        settings, out_dir=str(out), node_state_dir=settings.node_state_dir or str(out / "nodes")
    )
    os.environ[RUN_CONFIG_ENV] = json.dumps(settings.to_run_config())
    from flwr.simulation import run_simulation

    from .client_app import app as client_app
    from .server_app import app as server_app

    # log_to_driver=False: the actors' own log lines (e.g. Flower's "Manually terminating ClientAppActor"
    # at every clean shutdown) stay out of the user's terminal; a client's error still reaches the
    # ServerApp as an error reply and is reported in the round's `dropped`.
    init_args: dict[str, Any] = {"logging_level": "ERROR", "include_dashboard": False, "log_to_driver": False}
    if num_cpus is not None:
        init_args["num_cpus"] = num_cpus
    with quiet_simulation(progress=progress):
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
