"""Flower under churn (``tests/support/churn.py``): 20 real SuperNodes on loopback, 10 rounds, SuperNodes
SIGKILLed and restarted mid-round by a seeded schedule, the ServerApp SIGKILLed once and the job finished with
``--resume``; every sampled client the server did not use has a recorded reason, and the final adapter equals
an in-process replay with the same drops, bit for bit."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from fedsqueeze.flower import FlowerSettings
from support.churn import churn_config, make_schedule, replay_script, run_churn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_chaos_schedule_is_seeded_and_hits_sampled_nodes_mid_round():
    cfg = churn_config(20, 10, 6)
    a, b = make_schedule(0, cfg), make_schedule(0, cfg)
    assert a == b and a != make_schedule(1, cfg)
    assert 2 <= a.server_round <= 9 and all(2 <= k.round <= 10 for k in a.kills)
    assert any(k.sampled for k in a.kills) and {k.restart for k in a.kills} == {"immediately", "next round"}


def test_the_replay_script_sorts_each_drop_by_what_the_node_did():
    rows = [
        {
            "round": 3,
            "replied": [1],
            "dropped": [
                {"client": 0, "reason": "no SuperNode serves this partition"},
                {
                    "client": 1,
                    "reason": "undecodable: bad CRC",
                },  # arrived, screened: the replay screens it too
                {"client": 2, "reason": "no reply within 45 s"},
                {"client": 4, "reason": "client error: node unavailable"},
            ],
        }
    ]
    assert replay_script(rows, {(2, 3), (4, 2)}) == {3: {"absent": [0], "trained": [2], "lost": [4]}}


def test_a_node_the_superlink_declares_unavailable_is_dropped_with_that_reason(tmp_path, task_identity):
    """The SuperLink answers for a dead node itself (src = its own node id, reply_to = the message): the
    drop carries the SuperLink's reason, not a timeout that never happened."""
    from flwr.app import Error, Message
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

    from fedsqueeze.flower.server_app import run_rounds
    from support.flower import FakeGrid, make_config

    class Grid(FakeGrid):
        def send_and_receive(self, msgs, *, timeout=None):
            msgs = list(msgs)
            out = list(super().send_and_receive(msgs, timeout=timeout))
            for m in msgs:
                if m.metadata.message_type == "train" and m.metadata.dst_node_id - 100 in self.down:
                    err = Message(Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable"), reply_to=m)
                    err.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                    out.append(err)
            return out

    settings = FlowerSettings(make_config(n=4, k=4, rounds=1), round_timeout=5)
    grid = Grid(settings, 4)
    grid.down = {2}
    run_rounds(grid, settings, tmp_path)
    (row,) = (json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert row["kept"] == [0, 1, 3]
    assert row["dropped"] == [{"client": 2, "reason": "client error: Error: Node Unavailable"}]


@pytest.mark.slow
def test_flower_job_under_churn_resumes_and_equals_the_replay_with_the_same_drops(tmp_path):
    rep = run_churn(tmp_path, nodes=20, rounds=10, seed=0, clients=6, round_timeout=45, deadline_s=1200)
    assert rep["resumed"], rep["serverapp_kill"]  # the job finished, after the ServerApp was killed once
    kill = rep["serverapp_kill"]
    assert kill["pids"] and kill["rows_before"] == kill["rows_after"] == kill["round"] - 1
    assert [d["round"] for d in rep["drops"]] == list(range(1, 11))
    assert not rep["drops_without_reason"]
    assert any(k["sampled"] and k["was_alive"] for k in rep["kills"])
    assert any(d["dropped"] for d in rep["drops"])  # the churn cost the job replies
    assert rep["final_equal_to_replay"] and rep["rows_equal_to_replay"], rep["rows_differ_in_rounds"]
    assert all(v["group_peak_rss_bytes"] > 0 for v in rep["memory"]["per_node"].values())
