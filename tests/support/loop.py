"""The toy federation of the loop tests: a config, reading rows back, a workload that crashes on cue."""

from __future__ import annotations

import json

from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.fl.toy import ToyWorkload

N = 6


def make_config(codec="topk", options=None, *, downlink="identity", **fl) -> RunConfig:
    # clients catch up frame by frame unless a test asks for re-encoding (tests/test_downlink_catch_up.py)
    fl = {"rounds": 3, "clients_per_round": 2, "seed": 1, "server_lr": 1.0, "server_momentum": 0.0,
          "downlink_catch_up": "frames", **fl}  # fmt: skip
    return RunConfig(  # the head trains every round (the loop tests count and check its bytes)
        model=ModelConfig(head="train"),
        data=DataConfig(num_clients=N),
        train=LocalTrainConfig(lr=0.05, max_steps=3, batch_size=8, optimizer="adam", head_lr=None),
        fl=FLConfig(**fl),
        codec=CodecConfig(codec, {"density": 0.1} if options is None and codec == "topk" else options or {}),
        downlink=CodecConfig(downlink, {"density": 0.2} if downlink == "topk" else {}),
    )


def rows_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# wall-clock columns, and the simulated times made from the clients' measured seconds (fl/network.py)
TIMES = ("wall_s", "train_s", "client_s", "sim_round_s", "sim_time_s")


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


class CrashError(RuntimeError):
    pass


class CrashingToy(ToyWorkload):
    """Dies at the first training call of round ``crash_round`` (``calls_per_round`` calls per round)."""

    def __init__(self, crash_after_calls: int) -> None:
        super().__init__(N)
        self.left = crash_after_calls

    def train_client(self, *args, **kwargs):
        if self.left == 0:
            raise CrashError
        self.left -= 1
        return super().train_client(*args, **kwargs)
