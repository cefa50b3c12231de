"""The FlowerTune-shaped ServerApp: FedAvg over the LoRA adapters, wrapped by one fedsqueeze line."""

from __future__ import annotations

from functools import cache
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from task import get_model, get_parameters, held_out_loss, set_parameters

from fedsqueeze.flower import Compressed

NUM_ROUNDS = 3
app = ServerApp()


def make_strategy() -> Strategy:
    """The strategy of this app (no client-side evaluation: the server evaluates the global adapter)."""
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2)
    # fedsqueeze, line 2 of 2: wrap the strategy (stock Flower: use `strategy` as it is).
    return Compressed(strategy, codec="flm_topk")


@cache
def _model() -> Any:
    return get_model()


@cache
def initial_adapter() -> ArrayRecord:
    """The adapter every run starts from (a fresh, seeded LoRA adapter)."""
    return ArrayRecord({k: v.clone() for k, v in get_parameters(get_model()).items()})


def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = _model()
    set_parameters(model, arrays.to_torch_state_dict())
    return MetricRecord({"held_out_loss": held_out_loss(model)})


def run(grid: Grid, strategy: Strategy) -> Result:
    """Start ``strategy`` from the fresh adapter for :data:`NUM_ROUNDS` rounds."""
    return strategy.start(
        grid=grid,
        initial_arrays=initial_adapter(),
        num_rounds=NUM_ROUNDS,
        train_config=ConfigRecord({"lr": 2e-3}),
        evaluate_fn=evaluate,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, make_strategy())
