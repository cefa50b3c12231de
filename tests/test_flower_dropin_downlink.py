"""The drop-in's compressed downlink: ``Compressed(..., downlink=...)`` + ``downlink_mod`` on the stock
quickstart-shaped app of ``tests/test_flower_dropin.py`` (FedAvg, BatchNorm), driven in-process.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg

import fedsqueeze
from fedsqueeze import ConfigError, UpdateSpec
from fedsqueeze.fl.server import Downlink
from fedsqueeze.flower import Compressed, compress_mod, downlink_mod
from fedsqueeze.flower.downlink import DENSE_KEY, DOWN_META_KEY, DOWN_STYPE, frame_key
from fedsqueeze.flower.frames import is_float
from fedsqueeze.flower.mods import NEEDS_DOWNLINK_MOD, load_downlink_state
from support import dropin_app as qs
from test_flower_dropin import FLOATS, INT_BUFFER, Grid, N, assert_close, contexts, send

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("task_identity"),
]

BUDGET = {"downlink": "wf_ecq", "downlink_options": {"rate": 1.0}}


def configure(strategy, rnd: int, arrays, nodes: list[int] | None = None):
    grid = Grid()
    if nodes is not None:
        grid.ids = list(nodes)
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1}), grid))
    msgs.sort(key=lambda m: m.metadata.dst_node_id)
    for i, m in enumerate(msgs):
        m.metadata.__dict__["_message_id"] = f"m{rnd}-{i}"
    return msgs


def fedavg_min2() -> FedAvg:
    """FedAvg that trains every available node, with as few as two (so a round can skip nodes)."""
    return FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=2, min_available_nodes=2)


def app(spy: list | None = None):
    def record(msg, ctx, call_next):
        spy.append(msg.metadata.dst_node_id)
        return call_next(msg, ctx)

    return qs.client_app([downlink_mod(), compress_mod(), *([record] if spy is not None else [])])


def run_rounds(strategy, rounds: int, ctx=None, application=None):
    """``rounds`` rounds in-process: the aggregated arrays and metrics of each."""
    ctx = contexts() if ctx is None else ctx
    application = app() if application is None else application
    arrays, out = qs.initial_arrays(), []
    for rnd in range(1, rounds + 1):
        replies = send(application, configure(strategy, rnd, arrays), ctx)
        assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
        arrays, metrics = strategy.aggregate_train(rnd, replies)
        out.append((arrays, metrics))
    return out


def delivery(msg) -> tuple[int, int]:
    meta = msg.content[DOWN_META_KEY]
    return int(meta["since"]), int(meta["frames"])


# -- identity downlink == the dense drop-in ------------------------------------------------------------------
def test_identity_downlink_equals_the_dense_dropin():
    dense = run_rounds(Compressed(qs.fedavg(N), codec="topk", density=0.1), 3, application=qs.client_app(
        [compress_mod()]))  # fmt: skip
    strategy = Compressed(qs.fedavg(N), codec="topk", density=0.1, downlink="identity")
    ours = run_rounds(strategy, 3)
    for (want, _), (got, metrics) in zip(dense, ours, strict=True):
        assert_close(got, want)
        assert metrics["fedsqueeze_dropped_replies"] == 0
        assert metrics["fedsqueeze_downlink_dense_deliveries"] == N  # identity: the dense state every round
    # what went out in round 1: no float array in the clear, one dense frame, the int buffer as it was
    msg = configure(Compressed(qs.fedavg(N), codec="topk", downlink="identity"), 1, qs.initial_arrays())[0]
    record = msg.content["arrays"]
    assert list(record.keys()) == [INT_BUFFER, DENSE_KEY]
    assert not any(is_float(a) for a in record.values()) and record[DENSE_KEY].stype == DOWN_STYPE
    assert delivery(msg) == (-1, -1) and "layout" in msg.content[DOWN_META_KEY]
    # later rounds: FedAvg averaged the int buffer into a float64 scalar, which is not in the state (the
    # state is fixed by the first round's float arrays) and travels as it is
    record = configure(strategy, 4, ours[-1][0])[0].content["arrays"]
    assert [k for k, a in record.items() if is_float(a)] == [INT_BUFFER] and record[INT_BUFFER].shape == ()


def test_downlink_mod_restores_keys_dtypes_and_order():
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    seen = {}

    def look(msg, ctx, call_next):
        seen[msg.metadata.dst_node_id] = msg.content
        return call_next(msg, ctx)

    initial = qs.initial_arrays()
    send(qs.client_app([downlink_mod(), look]), configure(strategy, 1, initial), contexts())
    content = seen[101]
    assert DOWN_META_KEY not in content and list(content.keys()) == ["arrays", "config"]
    assert list(content["arrays"].keys()) == list(initial.keys())
    for k, a in initial.items():  # round 1: the dense fp32 state, exact
        assert np.array_equal(content["arrays"][k].numpy(), a.numpy()), k
    assert {k: a.dtype for k, a in content["arrays"].items()} == {k: a.dtype for k, a in initial.items()}


# -- a budget codec: bytes well under dense, training still progresses -------------------------------------
def test_budget_downlink_cuts_bytes_and_training_progresses():
    stock = run_rounds(Compressed(qs.fedavg(N), codec="identity"), 4, application=qs.client_app(
        [compress_mod()]))  # fmt: skip
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    ours = run_rounds(strategy, 4)
    dense = ours[0][1]["fedsqueeze_dense_downlink_bytes"]
    assert dense == stock[0][1]["fedsqueeze_downlink_bytes"] == N * qs.initial_arrays().count_bytes()
    first = ours[0][1]
    assert first["fedsqueeze_downlink_dense_deliveries"] == N  # nobody holds a copy before round 1
    for _, m in ours[1:]:
        assert m["fedsqueeze_downlink_dense_deliveries"] == 0
        assert m["fedsqueeze_downlink_bytes"] < 0.10 * m["fedsqueeze_dense_downlink_bytes"], m
        assert m["fedsqueeze_dropped_replies"] == 0 and m["fedsqueeze_compressed_replies"] == N
    assert [rb.delivery for rb in strategy.history[1:]] == [dict.fromkeys(range(101, 105), 1)] * 3
    losses = [m["train_loss"] for _, m in ours]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    stock_losses = [m["train_loss"] for _, m in stock]
    assert losses[-1] < stock_losses[0] - 0.5 * (stock_losses[0] - stock_losses[-1])  # at least half the way


def test_replies_are_rebuilt_on_the_global_state_not_on_the_lagging_broadcast():
    # θ_i = θ_global − û_i, with û_i = θ̃ − θ_local_i (what the node trained from θ̃): FedAvg then aggregates
    # θ_global − ū, as the engine does, and what the downlink frame dropped (θ_global − θ̃) is kept.
    # Node 104 has no compress_mod: its plain reply is moved onto θ_global the same way.
    strategy = Compressed(qs.fedavg(N), codec="identity", downlink="wf_ecq", downlink_options={"rate": 0.5})
    ctx = contexts()
    arrays, _ = strategy.aggregate_train(1, send(app(), configure(strategy, 1, qs.initial_arrays()), ctx))
    got: dict[int, tuple] = {}

    def spy(msg, c, call_next):
        reply = call_next(msg, c)
        got[msg.metadata.dst_node_id] = (
            msg.content["arrays"],
            reply.content["arrays"],
            reply.content["metrics"],
        )
        return reply

    msgs = configure(strategy, 2, arrays)
    with_mod = qs.client_app([downlink_mod(), compress_mod(), spy])
    plain = qs.client_app([downlink_mod(), spy])
    replies = [
        (plain if m.metadata.dst_node_id == 104 else with_mod)(m, ctx[m.metadata.dst_node_id]) for m in msgs
    ]
    agg, metrics = strategy.aggregate_train(2, replies)
    assert metrics["fedsqueeze_plain_replies"] == 1 and metrics["fedsqueeze_compressed_replies"] == N - 1
    lag = max(float(np.max(np.abs(got[101][0][k].numpy() - arrays[k].numpy()))) for k in FLOATS)
    assert lag > 1e-4  # θ̃ really lags θ_global at this rate: the test can tell the two bases apart
    weights = {n: float(m["num-examples"]) for n, (_, _, m) in got.items()}
    total = sum(weights.values())
    for k in FLOATS:
        base = arrays[k].numpy().astype(np.float64)
        parts = [
            weights[n] * (base - theta[k].numpy() + local[k].numpy()) for n, (theta, local, _) in got.items()
        ]
        want = sum(parts) / total
        assert float(np.max(np.abs(agg[k].numpy() - want))) < 1e-6, k


def test_downlink_bytes_are_the_bytes_sent():
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    ctx, arrays = contexts(), qs.initial_arrays()
    for rnd in (1, 2):
        msgs = configure(strategy, rnd, arrays)
        frames = [bytes(m.content["arrays"][frame_key(0)].data) for m in msgs] if rnd == 2 else []
        sent = {
            m.metadata.dst_node_id: m.content["arrays"].count_bytes() + m.content[DOWN_META_KEY].count_bytes()
            for m in msgs
        }
        arrays, metrics = strategy.aggregate_train(rnd, send(app(), msgs, ctx))
        assert strategy.history[-1].downlink == sent
        assert metrics["fedsqueeze_downlink_bytes"] == sum(sent.values())
        assert metrics["fedsqueeze_downlink_bytes_per_node"] == list(sent.values())
    frame = sum(map(len, frames))
    assert frame < metrics["fedsqueeze_downlink_bytes"] < frame + N * 600  # frames + int buffer + metadata


# -- faults: a lost copy, a corrupt frame, a wrong hash, no reply --------------------------------------------
def test_a_node_that_lost_its_copy_gets_an_error_then_a_dense_resync():
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    ctx, trained = contexts(), []
    arrays, _ = strategy.aggregate_train(
        1, send(app(trained), configure(strategy, 1, qs.initial_arrays()), ctx)
    )
    ctx[102] = Context(7, 102, {"partition-id": 1}, RecordDict(), {})  # a restarted SuperNode
    trained.clear()
    msgs = configure(strategy, 2, arrays)
    assert [delivery(m) for m in msgs] == [(1, 1)] * N  # the server believes every node holds round 1
    replies = send(app(trained), msgs, ctx)
    bad = replies[1]
    assert bad.has_error() and bad.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "downlink_mod" in bad.error.reason and "dense resync" in bad.error.reason
    assert 102 not in trained and sorted(trained) == [101, 103, 104]  # refused before the app trained
    arrays, metrics = strategy.aggregate_train(2, replies)
    assert strategy.history[-1].resync == [102] and metrics["fedsqueeze_downlink_resyncs"] == 1
    msgs = configure(strategy, 3, arrays)
    assert [delivery(m) for m in msgs] == [(2, 1), (-1, -1), (2, 1), (2, 1)]
    replies = send(app(), msgs, ctx)
    assert not any(r.has_error() for r in replies)
    assert load_downlink_state(ctx[102])["round"] == 3


def _flip_frame(msg):
    arr = msg.content["arrays"][frame_key(0)]
    data = bytearray(arr.data)
    data[len(data) // 2] ^= 0x5A
    arr.data = bytes(data)


def _wrong_hash(msg):
    msg.content[DOWN_META_KEY]["sha256"] = "0" * 64


@pytest.mark.parametrize(("tamper", "reason"), [(_flip_frame, "downlink_mod"), (_wrong_hash, "SHA-256")],
                         ids=["corrupt-frame", "wrong-hash"])  # fmt: skip
def test_a_bad_delivery_is_refused_not_trained_on(tamper, reason):
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    ctx = contexts()
    arrays, _ = strategy.aggregate_train(1, send(app(), configure(strategy, 1, qs.initial_arrays()), ctx))
    msgs = configure(strategy, 2, arrays)
    tamper(msgs[2])  # node 103
    trained: list[int] = []
    replies = send(app(trained), msgs, ctx)
    assert replies[2].has_error() and reason in replies[2].error.reason
    assert 103 not in trained and not any(r.has_error() for i, r in enumerate(replies) if i != 2)
    assert load_downlink_state(ctx[103])["round"] == 1  # its copy was not replaced
    arrays, metrics = strategy.aggregate_train(2, replies)
    assert metrics["fedsqueeze_compressed_replies"] == N - 1 and strategy.history[-1].resync == [103]
    assert delivery(configure(strategy, 3, arrays)[2]) == (-1, -1)  # dense next time


def test_a_node_that_did_not_reply_is_resynced_densely():
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    ctx = contexts()
    arrays, _ = strategy.aggregate_train(1, send(app(), configure(strategy, 1, qs.initial_arrays()), ctx))
    replies = send(app(), configure(strategy, 2, arrays), ctx)
    arrays, _ = strategy.aggregate_train(2, [r for r in replies if r.metadata.src_node_id != 104])
    assert strategy.history[-1].resync == [104]
    assert [delivery(m) for m in configure(strategy, 3, arrays)] == [(2, 1), (2, 1), (2, 1), (-1, -1)]


# -- per-node content --------------------------------------------------------------------------------------
def test_deliveries_are_per_node():
    strategy = Compressed(fedavg_min2(), codec="topk", density=0.1, **BUDGET)
    ctx = contexts()
    arrays, _ = strategy.aggregate_train(1, send(app(), configure(strategy, 1, qs.initial_arrays()), ctx))
    arrays, _ = strategy.aggregate_train(2, send(app(), configure(strategy, 2, arrays, [101, 102]), ctx))
    msgs = configure(strategy, 3, arrays)
    assert len({id(m.content) for m in msgs}) == N  # one RecordDict per message
    assert [delivery(m) for m in msgs] == [(2, 1), (2, 1), (1, 2), (1, 2)]  # 103 and 104 missed round 2
    records = [m.content["arrays"] for m in msgs]
    assert sorted(records[2].keys()) == sorted([frame_key(0), frame_key(1), INT_BUFFER])
    assert bytes(records[0][frame_key(0)].data) == bytes(records[2][frame_key(1)].data)  # round 3's frame
    seen = {}

    def look(msg, c, call_next):
        seen[msg.metadata.dst_node_id] = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        return call_next(msg, c)

    replies = send(qs.client_app([downlink_mod(), look, compress_mod()]), msgs, ctx)
    assert not any(r.has_error() for r in replies)
    for node in (102, 103, 104):  # every node rebuilt the same θ̃, whatever it was sent
        for k in FLOATS:
            assert np.array_equal(seen[node][k], seen[101][k]), (node, k)
    _, metrics = strategy.aggregate_train(3, replies)
    down = strategy.history[-1].downlink
    assert down[101] == down[102] < down[103] == down[104]  # two frames cost more than one
    assert metrics["fedsqueeze_compressed_replies"] == N and metrics["fedsqueeze_dropped_replies"] == 0


# -- without downlink_mod: a clear failure, never training on frames ---------------------------------------
def test_without_downlink_mod_the_client_fails_clearly():
    strategy = Compressed(qs.fedavg(N), codec="identity", **BUDGET)
    msgs = configure(strategy, 1, qs.initial_arrays())
    for mods in ([compress_mod()], [compress_mod(), downlink_mod()]):  # no downlink_mod, or after it
        reply = qs.client_app(mods)(msgs[0], contexts()[101])
        assert reply.has_error() and reply.error.reason == NEEDS_DOWNLINK_MOD
    assert "downlink_mod() before compress_mod" in NEEDS_DOWNLINK_MOD
    with pytest.raises(Exception, match="fedsqueeze.downlink|Missing key|state_dict"):
        qs.client_app()(msgs[0], contexts()[101])  # a stock app: its load_state_dict finds no weights


# -- configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"downlink": "nope"}, "unknown codec 'nope'"),
        ({"downlink": "wf_ecq", "downlink_options": {"rat": 1.0}}, "no option"),
        ({"downlink_options": {"rate": 1.0}}, "no downlink="),
        ({"downlink": "wf_ecq", "downlink_window": 0}, "downlink_window"),
        ({"downlink": "predictive"}, "reference"),
    ],
)
def test_a_bad_downlink_fails_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        Compressed(qs.fedavg(N), codec="topk", **kwargs)
    assert "\n" not in str(info.value)


def test_default_downlink_is_dense_and_unchanged():
    strategy = Compressed(qs.fedavg(N), codec="topk")
    arrays = qs.initial_arrays()
    msgs = configure(strategy, 1, arrays)
    assert all(m.content["arrays"] is arrays and DOWN_META_KEY not in m.content for m in msgs)
    assert strategy.sender is None and "downlink=None" in repr(strategy)


# -- the engine's Downlink, generalised to clients known by id ---------------------------------------------
def test_engine_downlink_by_node_id():
    spec = UpdateSpec.from_shapes({"w": (64,)})
    theta = {"w": torch.linspace(-1, 1, 64)}
    codec = fedsqueeze.codecs.get("fp16")
    dl = Downlink(codec, spec, UpdateSpec.from_shapes({}), theta, None, window=2)
    step = {"w": theta["w"] + 0.1}
    dl.broadcast(1, step, {}, [10**12, 7], seed=1)
    assert all(dl.deliveries[c].frames is None for c in (10**12, 7))  # never served: dense
    dl.broadcast(2, step, {}, [7, 99], seed=2)
    assert dl.deliveries[7].frames is not None and len(dl.deliveries[7].frames) == 1
    assert dl.deliveries[99].frames is None
    assert dict(dl.last_sync) == {10**12: 1, 7: 2, 99: 2}  # one int per node served, nothing d-sized
    state = dl.state_dict()
    again = Downlink(codec, spec, UpdateSpec.from_shapes({}), theta, None, window=2)
    again.load_state_dict(state)
    assert again.catch_up(7, 2) == [] and again.last_sync[5] == -1


# -- Flower's simulation runtime: the copy survives in context.state, the frames survive serialisation ------
@pytest.mark.slow  # ~85 s on 2 busy cores (Ray); the in-process tests above cover the protocol itself
def test_simulation_runtime_with_a_compressed_downlink(monkeypatch):
    def make_strategy():
        return Compressed(qs.fedavg(3), codec="topk", density=0.05, **BUDGET)

    results = qs.run_in_simulation(
        monkeypatch, make_strategy, qs.client_app([downlink_mod(), compress_mod()]), 3
    )
    ((strategy, result),) = results
    train = result.train_metrics_clientapp
    assert sorted(train) == [1, 2, 3]
    assert train[1]["fedsqueeze_downlink_dense_deliveries"] == 3
    for rnd in (2, 3):  # every node rebuilt θ̃ from the copy it kept in context.state plus one frame
        m = train[rnd]
        assert m["fedsqueeze_downlink_dense_deliveries"] == 0 and m["fedsqueeze_downlink_resyncs"] == 0
        assert m["fedsqueeze_compressed_replies"] == 3 and m["fedsqueeze_dropped_replies"] == 0
        assert m["fedsqueeze_downlink_bytes"] < 0.10 * m["fedsqueeze_dense_downlink_bytes"]
    assert [set(rb.delivery.values()) for rb in strategy.history] == [{-1}, {1}, {1}]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2, 3]  # evaluate went through, dense


def test_with_client_side_dp_clipping():
    # downlink_mod first, then compress_mod, then Flower's clipping mod; Compressed outermost on the server
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    def dp():
        return DifferentialPrivacyClientSideFixedClipping(
            qs.fedavg(N), noise_multiplier=0.0, clipping_norm=0.05, num_sampled_clients=N
        )

    dense = Compressed(dp(), codec="identity")
    want = run_rounds(dense, 2, application=qs.client_app([compress_mod(), fixedclipping_mod]))
    strategy = Compressed(dp(), codec="identity", downlink="identity")
    got = run_rounds(
        strategy, 2, application=qs.client_app([downlink_mod(), compress_mod(), fixedclipping_mod])
    )
    for (w, _), (g, _) in zip(want, got, strict=True):
        assert_close(g, w)
