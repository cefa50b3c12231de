"""Flower adapter: run the same federated job as ``fedsqueeze run`` on Flower (simulation or deployment).

This package is the only place that imports ``flwr`` (``flwr[simulation]==1.41.0``), and only inside the
modules that need it (:mod:`.client_app`, :mod:`.server_app`, :mod:`.records`, the CLI ``main`` functions).
The numerics are those of :mod:`fedsqueeze.fl`: :func:`~fedsqueeze.fl.client.client_step` on the clients,
:class:`~fedsqueeze.fl.federation.Federation` (``configure_round`` / ``finish_round``) on the server, the same
seeded sampling and the same ``metrics.jsonl`` / ``summary.json``. See ``docs/flower.md``.
"""

from .env import FLOWER_ENV, OFFLINE_ENV, apply_offline_env
from .settings import FlowerSettings

__all__ = ["FLOWER_ENV", "OFFLINE_ENV", "FlowerSettings", "apply_offline_env"]
