"""The quickstart's ClientApp: Flower's own code, plus one fedsqueeze line."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from task import Net, load_data, test
from task import train as train_fn

from fedsqueeze.flower import compress_mod

# fedsqueeze, line 1 of 2: the mod compresses every train reply (stock Flower: `app = ClientApp()`).
app = ClientApp(mods=[compress_mod()])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition and reply with its state dict."""
    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    torch.manual_seed(pid)
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y, _, _ = load_data(pid, num)
    loss = train_fn(model, x, y, epochs=2, lr=float(msg.content["config"]["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's held-out data."""
    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, _, x, y = load_data(pid, num)
    loss, acc = test(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
