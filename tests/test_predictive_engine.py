"""Predictive coding in the engine: the reference is the last broadcast delta frame both ends hold."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fedsqueeze.config import CodecConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.federation import Federation
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE
from support.loop import N, make_config, rows_of

# "scalar": always predict where it lowers the energy (the toy's updates correlate only weakly with the
# broadcast step, so "auto" would rightly send plain frames here)
PRED = CodecConfig("predictive", {"inner": "topk", "inner_options": {"rate": 8.0}, "predictor": "scalar"})


def _config(rounds=5, downlink="topk"):
    cfg = make_config(rounds=rounds, downlink=downlink)
    return dataclasses.replace(cfg, codec=PRED)


def test_a_dense_downlink_has_no_reference_so_the_config_says_so():
    with pytest.raises(ConfigError, match="downlink.name"):
        _config(downlink="identity")
    with pytest.raises(ConfigError, match="downlink"):
        dataclasses.replace(make_config(), downlink=PRED)


def test_clients_predict_from_the_last_delta_frame_and_the_server_decodes_every_reply(tmp_path, monkeypatch):
    import fedsqueeze.fl.loop as loop

    ids, refs = [], []
    real = loop.client_step

    def spy(*args, **kwargs):
        rep = real(*args, **kwargs)
        ids.append(HEADER.unpack_from(rep.lora_payload[:HEADER_SIZE])[2])
        refs.append(kwargs.get("reference"))
        return rep

    monkeypatch.setattr(loop, "client_step", spy)
    run(_config(), tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    assert all(row["num_dropped"] == 0 for row in rows)  # every predictive frame decoded on the server
    assert ids.count(60) >= len(ids) // 2  # predictive frames (round 1 and dense deliveries: plain)
    assert refs[0] is None or float(refs[0].abs().sum()) == 0.0  # round 1: nothing broadcast yet
    assert any(r is not None and float(r.abs().sum()) > 0 for r in refs[2:])


def test_the_reference_is_the_decoded_last_frame_and_only_for_frame_deliveries():
    cfg = _config()
    fed = Federation(cfg, ToyWorkload(N))
    for r in (1, 2, 3):
        plan = fed.configure_round(r)
        for c in plan.clients:
            d = fed.downlink.deliveries[c]
            ref = plan.references[c]
            if d.frames:
                assert ref is not None and torch.equal(ref, fed.downlink.last_step)
            else:
                assert ref is None
        fed.rows.append({"round": r})  # skip training: only the broadcast is under test


def test_a_predictive_frame_with_the_wrong_reference_is_dropped(tmp_path, monkeypatch):
    import fedsqueeze.fl.loop as loop

    real = loop.client_step

    def wrong(*args, **kwargs):
        ref = kwargs.get("reference")
        if ref is not None:
            kwargs["reference"] = ref + 1.0  # the client predicts from something the server does not hold
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "client_step", wrong)
    run(_config(rounds=4), tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    reasons = [d["reason"] for row in rows for d in row["dropped"]]
    assert reasons and all("undecodable" in r for r in reasons)
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 4
