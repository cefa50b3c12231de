"""Run the quickstart on Flower's simulation runtime (4 SuperNodes, 3 rounds), stock and with fedsqueeze.

The stock run uses the same handlers without the two fedsqueeze lines (a plain ``ClientApp`` and the
unwrapped ``FedAvg``). Both runs measure every train reply the same way, on the ServerApp's Grid: the bytes of
its ArrayRecords and ConfigRecords (Flower's ``count_bytes``; the MetricRecords are the same in both runs).

    python examples/quickstart-pytorch/run.py
    python examples/quickstart-pytorch/run.py --downlink wf_ecq --downlink-rate 1.0  # + compressed downlink
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Ray's actors import the apps too: give them this folder and the caller's path, as absolute paths.
_given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
_paths = [str(HERE), *(str(Path(p).resolve()) for p in _given)]
os.environ["PYTHONPATH"] = os.pathsep.join(_paths)

from fedsqueeze.flower import apply_offline_env  # noqa: E402

apply_offline_env()  # no telemetry, update check or hub access (before flwr is imported)

import client_app  # noqa: E402
import server_app  # noqa: E402
from flwr.app import Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from fedsqueeze.flower import compress_mod, downlink_mod  # noqa: E402
from fedsqueeze.flower.simulate import quiet_simulation  # noqa: E402

NUM_NODES = 4


class MeteredGrid:
    """A Grid that records the bytes of the train replies it receives, one total per round."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.uplink: list[int] = []
        self.downlink: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if messages and messages[0].metadata.message_type == "train":
            self.downlink.append(sum(_bytes(m) for m in messages))
            self.uplink.append(sum(_bytes(r) for r in replies if not r.has_error()))
        return replies


def _bytes(msg: Message) -> int:
    c = msg.content
    return sum(r.count_bytes() for r in [*c.array_records.values(), *c.config_records.values()])


def simulate(client: ClientApp, make_strategy: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Any, context: Any) -> None:
        metered = MeteredGrid(grid)
        out["result"] = server_app.run(metered, make_strategy())
        out["grid"] = metered

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "logging_level": "ERROR", "include_dashboard": False},
    }
    with quiet_simulation(progress=False):
        run_simulation(server_app=server, client_app=client, num_supernodes=NUM_NODES, backend_config=backend)
    return out


def stock_client(mods: list[Any] | None = None) -> ClientApp:
    app = ClientApp(mods=mods or [])  # the same handlers, no mod (or the given ones)
    app.train()(client_app.train)
    app.evaluate()(client_app.evaluate)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="show Flower's INFO log")
    parser.add_argument("--downlink", metavar="CODEC", help="compress the train messages too (e.g. wf_ecq)")
    parser.add_argument("--downlink-rate", type=float, default=None, metavar="BITS",
                        help="the downlink codec's rate in bits per parameter, e.g. 1.0")  # fmt: skip
    args = parser.parse_args()
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    print(f"stock Flower: {NUM_NODES} SuperNodes, {server_app.NUM_ROUNDS} rounds ...", flush=True)
    stock = simulate(stock_client(), lambda: server_app.make_strategy().strategy)
    if args.downlink is None:
        print("with fedsqueeze (compress_mod + Compressed, codec flm_topk) ...", flush=True)
        ours = simulate(client_app.app, server_app.make_strategy)
    else:
        opts = {} if args.downlink_rate is None else {"rate": args.downlink_rate}
        print(f"with fedsqueeze (downlink_mod + compress_mod + Compressed, codec flm_topk, downlink "
              f"{args.downlink} {opts}) ...", flush=True)  # fmt: skip
        ours = simulate(stock_client([downlink_mod(), compress_mod()]),
                        lambda: server_app.make_strategy(args.downlink, opts))  # fmt: skip

    print(f"\n{'round':>5} {'stock uplink B':>15} {'fedsqueeze uplink B':>20} {'ratio':>7} "
          f"{'stock downlink B':>17} {'fedsqueeze downlink B':>22} "
          f"{'stock acc':>10} {'fedsqueeze acc':>15}")  # fmt: skip
    for i in range(server_app.NUM_ROUNDS):
        r = i + 1
        s_up, o_up = stock["grid"].uplink[i], ours["grid"].uplink[i]
        s_acc = stock["result"].evaluate_metrics_clientapp[r]["eval_acc"]
        o_acc = ours["result"].evaluate_metrics_clientapp[r]["eval_acc"]
        s_down, o_down = stock["grid"].downlink[i], ours["grid"].downlink[i]
        print(f"{r:>5} {s_up:>15,} {o_up:>20,} {o_up / s_up:>7.2%} {s_down:>17,} {o_down:>22,} "
              f"{s_acc:>10.3f} {o_acc:>15.3f}")  # fmt: skip
    s_tot, o_tot = sum(stock["grid"].uplink), sum(ours["grid"].uplink)
    print(f"{'total':>5} {s_tot:>15,} {o_tot:>20,} {o_tot / s_tot:>7.2%}")
    m = ours["result"].train_metrics_clientapp[server_app.NUM_ROUNDS]
    print(f"\nCompressed's own count, last round: fedsqueeze_uplink_bytes {m['fedsqueeze_uplink_bytes']:,}, "
          f"fedsqueeze_frame_bytes {m['fedsqueeze_frame_bytes']:,}, "
          f"fedsqueeze_dense_uplink_bytes {m['fedsqueeze_dense_uplink_bytes']:,}")  # fmt: skip


if __name__ == "__main__":
    main()
