"""The quickstart's ServerApp: Flower's FedAvg, wrapped by one fedsqueeze line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from task import Net

from fedsqueeze.flower import Compressed

NUM_ROUNDS = 3
app = ServerApp()


def make_strategy(downlink: str | None = None, downlink_options: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy of this app; ``downlink`` (a codec name) compresses the train messages too (the
    ClientApp then needs ``downlink_mod()`` before ``compress_mod()``)."""
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)
    # fedsqueeze, line 2 of 2: wrap the strategy (stock Flower: use `strategy` as it is).
    return Compressed(strategy, codec="flm_topk", downlink=downlink, downlink_options=downlink_options)


def run(grid: Grid, strategy: Strategy) -> Result:
    """Start ``strategy`` from a seeded ``Net`` for :data:`NUM_ROUNDS` rounds."""
    torch.manual_seed(0)
    return strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=NUM_ROUNDS,
        train_config=ConfigRecord({"lr": 0.05}),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, make_strategy())
