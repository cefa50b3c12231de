"""The compressed downlink under Flower: nodes rebuild the broadcast state from the frames they missed,
check it by hash, and refuse to train on a copy they lost or a corrupted frame (then get a resync)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from flwr.app import Array, RecordDict

from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.downlink import DENSE_KEY, DOWN_META_KEY, DOWN_STYPE, frame_key
from support.flower import FakeGrid, make_config

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("task_identity"),
]


class RecordingGrid(FakeGrid):
    """A FakeGrid that records each train message's delivery and can tamper with it first."""

    def __init__(self, *args, tamper=None, forget=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[dict] = []
        self.tamper, self.forget = tamper, forget or {}  # forget: round -> partition whose state is lost

    def send_and_receive(self, msgs, *, timeout=None):
        for m in msgs:
            if m.metadata.message_type != "train":
                continue
            req, down = m.content.config_records["config"], m.content.config_records[DOWN_META_KEY]
            glob = m.content.array_records["arrays"]
            r, c = int(req["server-round"]), int(req["client"])
            if self.forget.get(r) == c:  # the node restarted: its in-memory state is gone
                self.ctx[m.metadata.dst_node_id].state = RecordDict()
            d = {"round": r, "client": c, "frames": int(down["frames"]), "since": int(down["since"])}
            self.log.append({**d, "keys": sorted(glob)})
            if self.tamper is not None:
                self.tamper(r, c, glob)
        return super().send_and_receive(msgs, timeout=timeout)


def _run(tmp_path, grid_kwargs, rounds=6):
    from fedsqueeze.flower.server_app import run_rounds

    cfg = make_config(rounds=rounds, downlink=("topk", {"density": 0.2}), downlink_window=3)
    settings = FlowerSettings(cfg, round_timeout=5)
    grid = RecordingGrid(settings, 4, **grid_kwargs)
    run_rounds(grid, settings, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return grid, rows


def test_nodes_catch_up_from_frames_and_the_bytes_sent_are_the_bytes_charged(tmp_path):
    grid, rows = _run(tmp_path, {})
    assert any(d["frames"] > 0 for d in grid.log)  # some clients caught up frame by frame
    assert all(row["num_dropped"] == 0 for row in rows)  # and every rebuilt state matched its hash
    for d in grid.log:
        assert (DENSE_KEY in d["keys"]) == (d["frames"] < 0)


def test_a_node_that_lost_its_copy_refuses_and_is_resynced_densely(tmp_path):
    # find a client that catches up by frames, then make its node forget its state right before
    probe, _ = _run(tmp_path / "probe", {})
    hit = next(d for d in probe.log if d["frames"] > 0 and d["since"] > 0)  # it must hold a copy
    grid, rows = _run(tmp_path / "run", {"forget": {hit["round"]: hit["client"]}})
    row = rows[hit["round"] - 1]
    assert [d["client"] for d in row["dropped"]] == [hit["client"]]
    assert "resync" in row["dropped"][0]["reason"]
    later = [d for d in grid.log if d["client"] == hit["client"] and d["round"] > hit["round"]]
    assert later and later[0]["frames"] == -1  # its next delivery is the dense state
    assert all(r["num_dropped"] == 0 for r in rows[hit["round"] :])


def test_a_corrupted_downlink_frame_is_refused_not_trained_on(tmp_path):
    probe, _ = _run(tmp_path / "probe", {})
    hit = next(d for d in probe.log if d["frames"] > 0)

    def tamper(r, c, glob):
        if (r, c) == (hit["round"], hit["client"]):
            data = bytearray(glob[frame_key(0)].data)
            data[-1] ^= 0xFF
            glob[frame_key(0)] = Array(dtype="uint8", shape=(len(data),), stype=DOWN_STYPE, data=bytes(data))

    _, rows = _run(tmp_path / "run", {"tamper": tamper})
    row = rows[hit["round"] - 1]
    assert [d["client"] for d in row["dropped"]] == [hit["client"]]
    assert row["kept"] and hit["client"] not in row["kept"]  # the round went on with the others


def test_nodes_rebuild_their_own_copy_from_a_reencoded_catch_up_and_check_its_hash(tmp_path):
    """``fl.downlink_catch_up = "reencode"``: a stale node's one frame gives it a copy of its own, whose
    SHA-256 the server sends with it."""
    from fedsqueeze.flower.server_app import run_rounds

    cfg = make_config(rounds=6, downlink=("topk", {"density": 0.2}), downlink_catch_up="reencode")
    settings = FlowerSettings(cfg, round_timeout=5)
    grid = RecordingGrid(settings, 4)
    run_rounds(grid, settings, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(row["downlink_reencoded"] for row in rows) > 0  # some nodes got a frame of their own
    assert max(d["frames"] for d in grid.log) == 1  # and nobody a chain of missed frames
    assert all(row["num_dropped"] == 0 for row in rows)  # every rebuilt copy matched its hash
