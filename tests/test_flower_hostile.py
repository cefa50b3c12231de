"""A hostile SuperNode cannot stop or corrupt the Flower job: its replies (garbage frames, frames of another
spec, NaN values, huge norms, malformed records) are dropped with their reasons, the honest nodes train on,
and the aggregate stays finite; in-process (fake Grid) and on a real SuperLink."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Message, RecordDict
from safetensors.torch import load_file

from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.settings import make_workload
from support.flower import FakeGrid, make_config
from support.hostile import FRAME_KINDS, REASONS, RECORD_KINDS, make_hostile

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KINDS = FRAME_KINDS + RECORD_KINDS
HOSTILE = 2


class HostileGrid(FakeGrid):
    """Node ``HOSTILE`` trains honestly, then sends round ``r``'s reply as kind ``KINDS[r - 1]``; a fourth
    node answers ``query`` with a partition id that does not exist."""

    def __init__(self, settings, n, **kwargs) -> None:
        super().__init__(settings, n, **kwargs)
        self.spec = make_workload(settings).lora_spec
        self.ctx[999] = self.context(0)  # an impostor node id

    def send_and_receive(self, msgs, *, timeout=None):
        msgs = list(msgs)
        impostor = [m for m in msgs if m.metadata.dst_node_id == 999]
        out = super().send_and_receive([m for m in msgs if m not in impostor], timeout=timeout)
        for m in impostor:  # it claims a partition id that is not a client of this job
            info = ConfigRecord({"partition-id": 99, "digest": self.settings.digest, "durable": True})
            out.append(Message(RecordDict({"node": info}), reply_to=m))
        for rep in out:
            if rep.metadata.src_node_id == 100 + HOSTILE and rep.metadata.message_type == "train":
                r = int(json.loads(rep.content.config_records["fedsqueeze.frame"]["parts"])[0]["round"])
                make_hostile(rep, KINDS[r - 1], self.spec)
        return out


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def check_hostile_node_dropped(settings, out, kinds, tmp_path, *, replied=None):
    """Every round drops the hostile node's reply for its kind's reason, and the model equals, bit for bit
    and finite, the one of the same job with that node silent (its replies never counted)."""
    from fedsqueeze.flower.server_app import run_rounds

    for kind, row in zip(kinds, rows(out), strict=True):
        if replied is not None:
            assert row["replied"] == replied, kind
        assert row["kept"] == [0, 1] and row["aggregated"], kind
        (drop,) = row["dropped"]
        assert drop["client"] == HOSTILE and REASONS[kind] in drop["reason"], (kind, drop)
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["eval_metric"])
    grid = FakeGrid(settings, 3)
    grid.down = {HOSTILE}
    run_rounds(grid, settings, tmp_path / "silent")
    a = load_file(str(out / "final_params.safetensors"))
    b = load_file(str(tmp_path / "silent" / "final_params.safetensors"))
    assert all(torch.equal(a[k], b[k]) and bool(torch.isfinite(a[k]).all()) for k in a)


@pytest.mark.usefixtures("task_identity")
def test_hostile_replies_are_dropped_and_the_job_equals_one_without_that_node(tmp_path):
    from fedsqueeze.flower.server_app import run_rounds

    settings = FlowerSettings(make_config(n=3, k=3, rounds=len(KINDS)), round_timeout=5)
    run_rounds(HostileGrid(settings, 3), settings, tmp_path / "hostile")
    check_hostile_node_dropped(settings, tmp_path / "hostile", KINDS, tmp_path)


@pytest.mark.slow
def test_a_hostile_supernode_on_a_real_superlink(tmp_path, task_identity):
    from support.deployment import Stack

    cfg = make_config(n=3, k=3, rounds=len(FRAME_KINDS))
    settings = FlowerSettings(cfg, round_timeout=90, out_dir=str(tmp_path / "out"))
    # node 2 runs the hostile ClientApp's bad half: one kind of bad frame per round
    stack = Stack(tmp_path, 3, node_env={HOSTILE: {"FSQ_TEST_HOSTILE": "1"}})
    try:
        res = stack.flwr_run(settings, timeout=600, client_app="support.hostile_app:app")
        assert (tmp_path / "out" / "summary.json").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        stack.close()
    check_hostile_node_dropped(settings, tmp_path / "out", FRAME_KINDS, tmp_path, replied=[0, 1, 2])
