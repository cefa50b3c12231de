"""A stock quickstart-shaped Flower app (Linear + BatchNorm1d + Linear, FedAvg) for the drop-in tests.

Nothing here knows fedsqueeze: the tests add ``compress_mod`` to the ClientApp and ``Compressed`` around the
strategy, exactly the two lines a user adds. Training is seeded by the node's ``partition-id``, so the same
message gives the same reply with or without the mod.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

IN, HIDDEN, OUT = 32, 128, 4


class Net(nn.Module):
    """Linear -> BatchNorm1d (float running stats + the int64 ``num_batches_tracked``) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def initial_arrays(seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(Net().state_dict())


def local_data(pid: int, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + pid)
    x = torch.randn(n, IN, generator=g)
    y = (x[:, :OUT] + 0.3 * pid).argmax(dim=1)
    return x, y


def train(msg: Message, context: Context) -> Message:
    """The quickstart's train handler: load the arrays, a few SGD steps, reply with the state dict."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])
    lr = float(msg.content["config"].get("lr", 0.1))
    x, y = local_data(pid)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(pid)
    model.train()
    loss = torch.zeros(())
    for i in range(0, len(x), 16):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
        loss.backward()
        opt.step()
    metrics = MetricRecord({"train_loss": float(loss.detach()), "num-examples": len(x) + 8 * pid})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.eval()
    x, y = local_data(int(context.node_config["partition-id"]))
    with torch.no_grad():
        acc = float((model(x).argmax(dim=1) == y).float().mean())
    return Message(
        RecordDict({"metrics": MetricRecord({"accuracy": acc, "num-examples": len(x)})}), reply_to=msg
    )


def client_app(mods: list | None = None) -> ClientApp:
    app = ClientApp(mods=mods or [])
    app.train()(train)
    app.evaluate()(evaluate)
    return app


def server_app(make_strategy, rounds: int, results: list) -> ServerApp:
    """A ServerApp running ``make_strategy().start(...)``; appends ``(strategy, result)`` to ``results``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = make_strategy()
        result = strategy.start(
            grid=grid, initial_arrays=initial_arrays(), num_rounds=rounds,
            train_config=ConfigRecord({"lr": 0.1}),
        )  # fmt: skip
        results.append((strategy, result))

    return app


def fedavg(n: int) -> FedAvg:
    return FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n, min_available_nodes=n)


def ef_probe_mod(msg: Message, context: Context, call_next) -> Message:
    """Test instrumentation, outside ``compress_mod``: reports the round of the error-feedback state this node
    held *before* the message (0: none) as the reply metric ``ef-prev-round``."""
    from fedsqueeze.flower.mods import load_ef_state

    state = load_ef_state(context)
    reply = call_next(msg, context)
    if msg.metadata.message_type == "train" and not reply.has_error():
        reply.content["metrics"]["ef-prev-round"] = 0 if state is None else int(state["round"])
    return reply


def run_in_simulation(monkeypatch, make_strategy, client: ClientApp, rounds: int, nodes: int = 3) -> list:
    """Run ``make_strategy``'s server against ``client`` in Flower's simulation runtime (Ray, offline).

    Returns the server app's ``[(strategy, result)]``.
    """
    from pathlib import Path

    from flwr.simulation import run_simulation

    from fedsqueeze.flower import apply_offline_env
    from fedsqueeze.flower.simulate import quiet_simulation

    for key, value in apply_offline_env({}).items():
        monkeypatch.setenv(key, value)
    tests = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", f"{tests}:{tests.parent / 'src'}")  # the Ray actors import the apps
    results: list = []
    server = server_app(make_strategy, rounds, results)
    ray = {"num_cpus": 2, "logging_level": "ERROR", "include_dashboard": False}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": ray}
    with quiet_simulation(progress=False):
        run_simulation(server_app=server, client_app=client, num_supernodes=nodes, backend_config=backend)
    return results
