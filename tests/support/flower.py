"""The Flower tests' toy config and fake Grid: the real ClientApp over in-process messages (no servers)."""

from __future__ import annotations

import itertools
from pathlib import Path

from flwr.app import Context, RecordDict

from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.flower import FlowerSettings


def make_config(n=4, k=2, rounds=3, downlink=None, codec=None, **fl) -> RunConfig:
    return RunConfig(
        downlink=CodecConfig(*downlink) if downlink else CodecConfig("identity"),
        model=ModelConfig(name="toy", head="train"),  # the head trains every round, as the tests count
        data=DataConfig(num_clients=n),
        train=LocalTrainConfig(lr=0.05, max_steps=3, batch_size=8, optimizer="adam", head_lr=None),
        fl=FLConfig(rounds=rounds, clients_per_round=k, seed=1, **{"downlink_catch_up": "frames", **fl}),
        codec=CodecConfig(*codec) if codec else CodecConfig("topk", {"density": 0.1}),
    )


class FakeGrid:
    """Dispatches every message to the ClientApp with a per-node Context; ``down`` nodes never reply."""

    def __init__(self, settings: FlowerSettings, n: int, state_dir: Path | None = None) -> None:
        from fedsqueeze.flower.client_app import app

        self.app, self.settings, self.state_dir = app, settings, state_dir
        self.ctx = {100 + p: self.context(p) for p in range(n)}
        self.ids = itertools.count(1)
        self.down: set[int] = set()
        self.sent = 0

    def context(self, p: int) -> Context:
        node_config = {"partition-id": p}
        if self.state_dir is not None:
            node_config["state-dir"] = str(self.state_dir / f"n{p}")
        return Context(7, 100 + p, node_config, RecordDict(), self.settings.to_run_config())

    def get_node_ids(self):
        return list(self.ctx)

    def send_and_receive(self, msgs, *, timeout=None):
        out = []
        for m in msgs:
            m.metadata.__dict__["_message_id"] = str(next(self.ids))
            if m.metadata.dst_node_id - 100 in self.down and m.metadata.message_type == "train":
                continue
            out.append(self.app(m, self.ctx[m.metadata.dst_node_id]))
        return out


def state_from(reply) -> str | None:
    """Where a job reply's LoRA part got its error-feedback state (``None``: an error or no job reply)."""
    from fedsqueeze.flower.frames import read_parts_reply

    if reply.has_error() or "fedsqueeze.frame" not in reply.content.config_records:
        return None
    return read_parts_reply(reply.content).info["lora"].get("state-from")
