"""The engine-agnostic federated loop: sampling, client step, aggregation, ledger, checkpoints.

:class:`Federation` is the server's round for every driver (``configure_round`` / ``finish_round``);
:func:`run` drives it with in-process clients, the Flower ServerApp over a Grid. Phases before the rounds
(CG-FedLLM's TGAP) plug in as a :class:`RunHook` (:mod:`.hooks`).

Nothing here imports transformers or flwr; the real model and data come in through the
:class:`~fedsqueeze.fl.workload.Workload` protocol. The run config is :mod:`fedsqueeze.config`.
"""

from ..seeding import derive_seed, sample_clients
from .client import ClientReply, client_step
from .federation import Federation, RoundPlan
from .hooks import RunContext, RunHook, register_phase
from .ledger import TrafficLedger
from .loop import run
from .server import Downlink, apply_update, weighted_mean
from .workload import Workload

__all__ = [
    "ClientReply",
    "Downlink",
    "Federation",
    "RoundPlan",
    "RunContext",
    "RunHook",
    "TrafficLedger",
    "Workload",
    "apply_update",
    "client_step",
    "derive_seed",
    "register_phase",
    "run",
    "sample_clients",
    "weighted_mean",
]
