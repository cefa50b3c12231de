"""Pieces of the federated loop: seeds, sampling, aggregation, client step, downlink, ledger."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fedsqueeze import ErrorFeedback, UpdateSpec
from fedsqueeze.codecs import decode_flat, get
from fedsqueeze.config import LocalTrainConfig
from fedsqueeze.fl import (
    Downlink,
    apply_update,
    derive_seed,
    sample_clients,
    weighted_mean,
)
from fedsqueeze.fl.client import client_step, encode_dense, relative_error
from fedsqueeze.fl.ledger import TrafficLedger
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.fl.workload import Workload


def test_derive_seed_is_uint64_deterministic_and_distinct():
    seeds = {
        derive_seed(7, r, c, p) for r in range(1, 20) for c in range(-1, 10) for p in ("encode", "train")
    }
    assert len(seeds) == 19 * 11 * 2
    assert all(0 <= s < 2**64 for s in seeds)
    assert derive_seed(7, 3, 2, "encode") == derive_seed(7, 3, 2, "encode")
    assert derive_seed(7, 3, 2, "encode") != derive_seed(8, 3, 2, "encode")


def test_sampling_is_seeded_distinct_and_uniform():
    n, k, rounds = 10, 3, 3000
    draws = [sample_clients(5, r, n, k) for r in range(1, rounds + 1)]
    assert draws[:50] == [sample_clients(5, r, n, k) for r in range(1, 51)]  # seeded
    assert draws[:50] != [sample_clients(6, r, n, k) for r in range(1, 51)]
    for d in draws:
        assert d == sorted(set(d)) and len(d) == k and all(0 <= c < n for c in d)
    counts = np.bincount(np.concatenate(draws), minlength=n)
    expected = rounds * k / n  # 900; binomial sd = sqrt(3000 * 0.3 * 0.7) ~ 25
    assert np.all(np.abs(counts - expected) < 5 * 25.1), counts
    pairs = np.zeros((n, n))
    for d in draws:
        pairs[np.ix_(d, d)] += 1
    off = pairs[~np.eye(n, dtype=bool)]  # each pair: 3000 * (3*2)/(10*9) = 200 expected
    assert np.all(np.abs(off - 200) < 5 * 14), off
    with pytest.raises(ValueError):
        sample_clients(0, 1, 3, 4)


def test_weighted_mean_and_aggregate_match_hand_computation():
    spec = UpdateSpec.from_shapes({"a": (2, 2), "b": (3,)})
    u1 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    u2 = torch.tensor([-1.0, 0.0, 1.0, 0.5, 0.0, 2.0, -4.0])
    payloads = [encode_dense(u1, spec), encode_dense(u2, spec)]
    mean = weighted_mean([decode_flat(p, spec) for p in payloads], [10, 30])
    hand = torch.tensor([(10 * a + 30 * b) / 40 for a, b in zip(u1.tolist(), u2.tolist(), strict=True)])
    assert torch.allclose(mean, hand.double(), atol=1e-12)
    assert torch.equal(weighted_mean([u1, u2], [10, 30]), mean)  # dense frames decode exactly
    params = spec.unflatten(torch.ones(7))
    new = apply_update(params, mean, spec, server_lr=0.5)
    assert torch.allclose(spec.flatten(new), 1 - 0.5 * hand, atol=1e-6)
    assert torch.equal(params["a"], torch.ones(2, 2))  # inputs untouched


def test_relative_error_edge_cases():
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.zeros(3), torch.ones(3)) is None
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(16 / 25)


def test_toy_is_a_deterministic_workload():
    wl = ToyWorkload(seed=3)
    assert isinstance(wl, Workload)
    lora, head = wl.initial_params()
    cfg = LocalTrainConfig(lr=0.05, max_steps=3)
    a = wl.train_client(1, lora, head, cfg, seed=11)
    b = wl.train_client(1, lora, head, cfg, seed=11)
    c = wl.train_client(1, lora, head, cfg, seed=12)
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[2] == b[2]
    assert not all(torch.equal(a[0][k], c[0][k]) for k in a[0])
    assert torch.equal(lora["layer.lora_A"], wl.initial_params()[0]["layer.lora_A"])  # input not modified
    assert 0.0 <= wl.evaluate(lora, head)["accuracy"] <= 1.0
    assert len({wl.client_num_examples(c) for c in range(wl.num_clients())}) > 1  # unequal FedAvg weights


def test_client_step_encodes_with_error_feedback():
    wl = ToyWorkload()
    lora, head = wl.initial_params()
    ef = ErrorFeedback(get("topk", density=0.1))
    cfg = LocalTrainConfig(lr=0.05, max_steps=3)
    rep = client_step(wl, 2, lora, head, cfg, ef, train_seed=1, encode_seed=2)
    new_lora, new_head, loss = wl.train_client(2, lora, head, cfg, seed=1)
    u = wl.lora_spec.flatten(lora) - wl.lora_spec.flatten(new_lora)
    assert torch.equal(rep.raw_update, u) and rep.train_loss == loss
    dec = decode_flat(rep.lora_payload, wl.lora_spec)
    assert torch.allclose(dec.double() + ef.residual, u.double(), atol=1e-7)  # û + e = u
    assert rep.residual_norm == pytest.approx(float(ef.residual.norm()))
    head_u = decode_flat(rep.head_payload, wl.head_spec)
    assert torch.equal(head_u, wl.head_spec.flatten(head) - wl.head_spec.flatten(new_head))
    assert rep.uplink_bytes == len(rep.lora_payload) + len(rep.head_payload)
    assert rep.num_examples == wl.client_num_examples(2)
    assert 0 < rep.rel_error < 1


def test_dense_downlink_costs_two_identity_frames():
    wl = ToyWorkload()
    lora, head = wl.initial_params()
    dl = Downlink(None, wl.lora_spec, wl.head_spec, lora, wl.num_clients())
    got_lora, got_head, cost = dl.broadcast(1, lora, head, [0, 3], seed=5)
    per = 32 + 4 * wl.lora_spec.numel + 32 + 4 * wl.head_spec.numel
    assert cost == {0: per, 3: per}
    assert all(torch.equal(got_lora[k], lora[k]) for k in lora)
    assert all(torch.equal(got_head[k], head[k]) for k in head)


def test_flasc_downlink_sends_deltas_and_charges_catch_up():
    spec = UpdateSpec.from_shapes({"w": (200,)})
    hspec = UpdateSpec.from_shapes({})
    codec = get("topk", density=0.05)
    theta = {"w": torch.zeros(200)}
    dl = Downlink(codec, spec, hspec, theta, num_clients=3)
    gen = torch.Generator().manual_seed(0)
    frames = []
    held = torch.zeros(200)
    for r in range(1, 5):
        theta = {"w": theta["w"] + torch.randn(200, generator=gen)}
        clients = [0] if r < 4 else [0, 1]
        got, _, cost = dl.broadcast(r, theta, {}, clients, seed=r)
        frame = codec.encode_with_spec(theta["w"] - held, spec, seed=r)
        held = held + decode_flat(frame, spec)
        frames.append(len(frame))
        assert torch.equal(got["w"], held)  # clients hold the broadcast state, not the server's
        assert cost[0] == len(frame)  # client 0 is in sync: one delta frame
    assert cost[1] == min(sum(frames), 32 + 4 * 200)  # client 1 catches up on all four (or gets it dense)
    assert not torch.equal(held, theta["w"])  # what the deltas dropped stays on the server for later


def test_flasc_downlink_reports_how_far_the_clients_start_from_the_global_state():
    spec, hspec = UpdateSpec.from_shapes({"w": (100,)}), UpdateSpec.from_shapes({})
    codec = get("topk", density=0.1)
    theta0 = {"w": torch.zeros(100)}
    dl = Downlink(codec, spec, hspec, theta0, num_clients=3)
    step = torch.arange(1.0, 101.0)  # top 10 % by magnitude: the ten largest entries, 91..100
    got, _, _ = dl.broadcast(1, {"w": step}, {}, [0], seed=1)
    cols = dl.row_columns()
    dropped = step[:90]  # what the frame left out is exactly the distance the client starts from
    assert torch.equal(got["w"][90:], step[90:]) and torch.equal(got["w"][:90], torch.zeros(90))
    assert cols["downlink_delta_norm"] == pytest.approx(float(step.norm()))
    assert cols["downlink_lag_norm"] == pytest.approx(float(dropped.norm()))
    assert cols["downlink_rel_error"] == pytest.approx(float(dropped.square().sum() / step.square().sum()))
    assert cols["downlink_frames"] == {"0": 1}
    dl.broadcast(2, {"w": step}, {}, [0, 1], seed=2)  # no new step: the frame codes the carried residual
    cols = dl.row_columns()
    assert cols["downlink_delta_norm"] == pytest.approx(float(dropped.norm()))
    assert cols["downlink_frames"] == {"0": 1, "1": 2}  # client 1 missed round 1: two frames
    dense = Downlink(None, spec, hspec, theta0, num_clients=3)
    dense.broadcast(1, {"w": step}, {}, [2], seed=1)
    assert dense.row_columns() == {
        "downlink_delta_norm": None,
        "downlink_lag_norm": None,
        "downlink_rel_error": None,
        "downlink_frames": {"2": -1},
        "downlink_reencoded": None,
        "downlink_start_lag": None,
    }


def test_ledger_totals():
    led = TrafficLedger()
    led.record(1, {0: 10, 2: 12}, {0: 5, 2: 5}, {0: 100, 2: 100})
    led.record(2, {1: 7}, {1: 5}, {1: 90})
    assert [r.uplink_bytes for r in led.rounds] == [32, 12]
    assert led.total_uplink == 44 and led.total_downlink == 290
    assert TrafficLedger.from_dict(led.to_dict()) == led


def test_loop_imports_no_transformers_or_flower():
    code = (
        "import sys, fedsqueeze.fl, fedsqueeze.cli.run, fedsqueeze.fl.toy; "
        "bad = [m for m in ('transformers', 'flwr', 'peft') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_default_downlink_falls_back_to_dense_where_it_cannot_code_the_lora(caplog):
    import logging

    from fedsqueeze.config import CodecConfig, RunConfig
    from fedsqueeze.errors import ConfigError
    from fedsqueeze.fl.server import downlink_codec
    from fedsqueeze.spec import UpdateSpec

    tiny = UpdateSpec((("a", (4, 12)), ("b", (16, 4))))  # d = 112: 0.25 bits/param cannot hold a header
    big = UpdateSpec((("a", (64, 1024)),))
    log = logging.getLogger("test-downlink")
    cfg = RunConfig()
    with caplog.at_level(logging.WARNING, logger="test-downlink"):
        assert downlink_codec(cfg, tiny, log) is None
    assert "broadcast is dense fp32" in caplog.text
    assert downlink_codec(cfg, big, log).name == "wf_ecq"
    explicit = RunConfig(downlink=CodecConfig("wf_ecq", {"rate": 0.05}))
    with pytest.raises(ConfigError, match=r"^downlink \(the broadcast\): wf_ecq: budget"):
        downlink_codec(explicit, tiny, log)
    assert downlink_codec(RunConfig(downlink=CodecConfig("identity")), tiny, log).name == "identity"


def test_an_uplink_codec_that_cannot_code_the_lora_is_refused_before_training_by_name():
    from fedsqueeze.config import load_config
    from fedsqueeze.errors import ConfigError
    from fedsqueeze.fl.federation import Federation

    cfg = load_config("smoke", ["model.name=toy", "codec.name=wf_ecq", "codec.options.rate=0.1"])
    wl = ToyWorkload(cfg.data.num_clients, rank=cfg.model.lora_r, alpha=cfg.data.alpha, seed=cfg.fl.seed)
    with pytest.raises(ConfigError, match=r"^codec \(the uplink\): wf_ecq: budget of \d+ bits for d=\d+"):
        Federation(cfg, wl)
    ok = load_config("smoke", ["model.name=toy", "codec.name=topk"])
    assert Federation(ok, wl).codec_options["density"] == pytest.approx(0.05)  # smoke's own density
