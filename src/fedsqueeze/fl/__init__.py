"""The engine-agnostic federated loop: config, sampling, client step, aggregation, ledger, checkpoints.

:class:`Federation` is the server's round for every driver (``configure_round`` / ``finish_round``);
:func:`run` drives it with in-process clients, the Flower ServerApp over a Grid. Phases before the rounds
(CG-FedLLM's TGAP) plug in as a :class:`RunHook` (:mod:`.hooks`).

Nothing here imports transformers or flwr; the real model and data come in through the
:class:`~fedsqueeze.fl.workload.Workload` protocol.
"""

from ..seeding import derive_seed, sample_clients
from .client import ClientReply, client_step
from .config import CodecConfig, FLConfig, RunConfig, load_config
from .federation import Federation, RoundPlan
from .hooks import RunContext, RunHook, register_phase
from .ledger import TrafficLedger
from .loop import run
from .server import Downlink, apply_update, weighted_mean
from .workload import DataConfig, LocalTrainConfig, ModelConfig, Workload

__all__ = [
    "ClientReply",
    "CodecConfig",
    "DataConfig",
    "Downlink",
    "FLConfig",
    "Federation",
    "LocalTrainConfig",
    "ModelConfig",
    "RoundPlan",
    "RunConfig",
    "RunContext",
    "RunHook",
    "TrafficLedger",
    "Workload",
    "apply_update",
    "client_step",
    "derive_seed",
    "load_config",
    "register_phase",
    "run",
    "sample_clients",
    "weighted_mean",
]
