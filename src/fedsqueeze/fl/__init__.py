"""The engine-agnostic federated loop: config, sampling, client step, aggregation, ledger, checkpoints.

Nothing here imports transformers or flwr; the real model and data come in through the
:class:`~fedsqueeze.fl.workload.Workload` protocol.
"""

from .client import ClientReply, client_step
from .config import CodecConfig, FLConfig, RunConfig, load_config
from .ledger import TrafficLedger
from .loop import run
from .seeding import derive_seed, sample_clients
from .server import Downlink, aggregate_payloads, apply_update, weighted_mean
from .workload import DataConfig, LocalTrainConfig, ModelConfig, Workload

__all__ = [
    "ClientReply",
    "CodecConfig",
    "DataConfig",
    "Downlink",
    "FLConfig",
    "LocalTrainConfig",
    "ModelConfig",
    "RunConfig",
    "TrafficLedger",
    "Workload",
    "aggregate_payloads",
    "apply_update",
    "client_step",
    "derive_seed",
    "load_config",
    "run",
    "sample_clients",
    "weighted_mean",
]
