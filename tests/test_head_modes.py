"""``model.head``: the head trained every round, in round 1 only, or never; its bytes and its values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedsqueeze.config import ModelConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.fl.toy import ToyWorkload
from support.loop import N, make_config, rows_of


def _run(tmp_path, head: str, rounds: int = 4):
    cfg = make_config("identity", rounds=rounds, clients_per_round=3)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head=head))
    wl = ToyWorkload(N)
    run(cfg, tmp_path, workload=wl)
    return wl, rows_of(tmp_path), load_checkpoint(tmp_path)


def _head_frame(wl) -> int:
    return 32 + 4 * wl.head_spec.numel


def test_frozen_head_is_never_sent_nor_changed(tmp_path):
    wl, rows, state = _run(tmp_path, "frozen")
    init_lora, init_head = wl.initial_params()
    for name, t in init_head.items():
        assert torch.equal(state["head"][name], t)
    assert not all(torch.equal(state["lora"][k], v) for k, v in init_lora.items())  # LoRA learned
    lora_down = 32 + 4 * wl.lora_spec.numel
    for row in rows:
        assert row["uplink_head_bytes"] == 0
        assert row["downlink_bytes"] == 3 * lora_down


def test_first_round_head_trains_once_and_is_downloaded_once_per_client(tmp_path):
    wl, rows, state = _run(tmp_path, "first_round", rounds=5)
    assert rows[0]["uplink_head_bytes"] == 3 * _head_frame(wl)
    assert all(row["uplink_head_bytes"] == 0 for row in rows[1:])
    # the head downloaded: once to each client sampled after round 1 that had not fetched it yet
    lora_down = 32 + 4 * wl.lora_spec.numel
    fetched: set[int] = set()
    for row in rows:
        new = [c for c in row["clients"] if c not in fetched] if row["round"] > 1 else []
        fetched.update(new if row["round"] > 1 else ())
        assert row["downlink_bytes"] == 3 * lora_down + len(new) * _head_frame(wl)
    # the head after round 5 equals the head after round 1 (a run of one round)
    _, _, one = _run(tmp_path / "one", "first_round", rounds=1)
    for name in state["head"]:
        assert torch.equal(state["head"][name], one["head"][name])


def test_train_head_changes_every_round(tmp_path):
    wl, rows, _ = _run(tmp_path, "train")
    assert all(row["uplink_head_bytes"] == 3 * _head_frame(wl) for row in rows)


def test_a_head_frame_sent_for_a_fixed_head_is_dropped(tmp_path, monkeypatch):
    import fedsqueeze.fl.loop as loop

    real = loop.client_step

    def confused(*args, **kwargs):
        rep = real(*args, **kwargs)
        rep.head_payload = b"\x00" * 40
        return rep

    monkeypatch.setattr(loop, "client_step", confused)
    _, rows, _ = _run(tmp_path, "frozen", rounds=1)
    assert rows[0]["num_dropped"] == 3
    assert all("nothing is expected" in d["reason"] for d in rows[0]["dropped"])


def test_unknown_head_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="head"):
        ModelConfig(head="sometimes")
