"""The FlowerTune-shaped ClientApp: fine-tune the LoRA adapter, reply with it; plus one fedsqueeze line."""

from __future__ import annotations

from functools import cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from task import get_model, get_parameters, set_parameters, train_batches
from task import train as train_fn

from fedsqueeze.flower import compress_mod

# fedsqueeze, line 1 of 2: the mod compresses every train reply (stock Flower: `app = ClientApp()`).
app = ClientApp(mods=[compress_mod()])


@cache
def _model():  # built once per process; every message loads the received adapter into it
    return get_model()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global adapter, train a few steps on this node's shard, reply with the adapter."""
    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    cfg = msg.content["config"]
    torch.manual_seed(1000 * int(cfg["server-round"]) + pid)  # LoRA dropout
    model = _model()
    set_parameters(model, msg.content["arrays"].to_torch_state_dict())
    batches = train_batches(pid, num, int(cfg["server-round"]))
    loss = train_fn(model, batches, lr=float(cfg["lr"]))
    reply = ArrayRecord(get_parameters(model))
    metrics = MetricRecord({"train_loss": loss, "num-examples": sum(len(b["input_ids"]) for b in batches)})
    return Message(RecordDict({"arrays": reply, "metrics": metrics}), reply_to=msg)
