"""A ClientApp for a real SuperNode of the Flower tests: honest, unless ``FSQ_TEST_HOSTILE`` is set in the
SuperNode's environment; then every train reply it sends is hostile, one kind of
:data:`support.hostile.FRAME_KINDS` per round (round ``r`` sends kind ``r - 1``, cycling). No tests here."""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsqueeze.flower import client_app as honest
from fedsqueeze.flower.settings import make_workload, settings_from_context
from support.hostile import FRAME_KINDS, make_hostile


def hostile_mod(msg: Message, context: Context, call_next) -> Message:
    """Outermost: the compressed reply of the honest mods, made hostile."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != "train" or not os.environ.get("FSQ_TEST_HOSTILE") or reply.has_error():
        return reply
    r = int(msg.content.config_records["config"]["server-round"])
    spec = make_workload(settings_from_context(context.run_config)).lora_spec
    return make_hostile(reply, FRAME_KINDS[(r - 1) % len(FRAME_KINDS)], spec)


app = ClientApp(mods=[hostile_mod, *honest.client_mods()])


@app.query()
def query(msg: Message, context: Context) -> Message:
    return honest.handle_query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return honest.handle_train(msg, context)
