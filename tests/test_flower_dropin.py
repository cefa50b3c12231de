"""The Flower drop-in: ``compress_mod`` + ``Compressed`` on a stock quickstart-shaped app (FedAvg, BatchNorm).

Most tests drive the strategy and the ClientApp in-process with constructed Messages and Contexts; one runs
Flower's simulation runtime with several SuperNodes.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

import fedsqueeze
from fedsqueeze import ConfigError, UsageError
from fedsqueeze.flower import Compressed, compress_mod
from fedsqueeze.flower.frames import CODEC_KEY, FRAME_KEY, META_KEY, content_bytes
from fedsqueeze.flower.mods import NO_CODEC, load_ef_state
from support import dropin_app as qs

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("task_identity"),
]

N = 4
FLOATS = ["fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
          "fc2.weight", "fc2.bias"]  # fmt: skip
INT_BUFFER = "bn.num_batches_tracked"


class Grid:
    """The part of a Flower Grid that strategies' configure_* use."""

    def __init__(self, n: int = N) -> None:
        self.ids = [101 + i for i in range(n)]

    def get_node_ids(self):
        return list(self.ids)


def contexts(n: int = N) -> dict[int, Context]:
    return {101 + i: Context(7, 101 + i, {"partition-id": i}, RecordDict(), {}) for i in range(n)}


def configure(strategy, rnd: int = 1, arrays=None, n: int = N) -> list[Message]:
    arrays = qs.initial_arrays() if arrays is None else arrays
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1}), Grid(n)))
    msgs.sort(key=lambda m: m.metadata.dst_node_id)
    for i, m in enumerate(msgs):
        m.metadata.__dict__["_message_id"] = f"m{rnd}-{i}"
    return msgs


def send(app, msgs: list[Message], ctx: dict[int, Context]) -> list[Message]:
    return [app(m, ctx[m.metadata.dst_node_id]) for m in msgs]


def numpy_of(record) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def assert_close(got, want, tol: float = 1e-6) -> None:
    g, w = numpy_of(got), numpy_of(want)
    assert list(g) == list(w)
    for k in w:
        assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, k
        if k == INT_BUFFER:
            assert np.array_equal(g[k], w[k]), k
        else:
            assert float(np.max(np.abs(g[k].astype(np.float64) - w[k].astype(np.float64)))) < tol, k


def stock_round(n: int = N, only=None):
    """Stock FedAvg + stock ClientApp: (aggregated arrays, metrics, replies)."""
    strategy = qs.fedavg(n)
    msgs = configure(strategy, n=n)
    replies = send(qs.client_app(), msgs, contexts(n))
    if only is not None:
        replies = [r for r in replies if r.metadata.src_node_id in only]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return arrays, metrics, replies


# -- (a) identity through mod + wrapper == stock FedAvg ------------------------------------------------------
def test_identity_codec_equals_stock_fedavg():
    want, want_metrics, _ = stock_round()
    strategy = Compressed(qs.fedavg(N), codec="identity")
    replies = send(qs.client_app([compress_mod()]), configure(strategy), contexts())
    assert all(list(r.content["arrays"].keys()) == [FRAME_KEY, INT_BUFFER] for r in replies)
    got, metrics = strategy.aggregate_train(1, replies)
    assert_close(got, want)
    assert list(got.keys()) == [*FLOATS[:6], INT_BUFFER, *FLOATS[6:]]  # the sent key order
    assert metrics["train_loss"] == pytest.approx(want_metrics["train_loss"])
    assert metrics["fedsqueeze_compressed_replies"] == N and metrics["fedsqueeze_dropped_replies"] == 0


def test_identity_is_not_trivially_equal():
    # The comparison above can fail: a client that sends a different update shows up.
    want, _, _ = stock_round()
    strategy = Compressed(qs.fedavg(N), codec="fp16")
    got, _ = strategy.aggregate_train(
        1, send(qs.client_app([compress_mod()]), configure(strategy), contexts())
    )
    with pytest.raises(AssertionError):
        assert_close(got, want, tol=1e-9)


# -- (b) topk replies are under 10 % of the stock reply bytes ------------------------------------------------
def test_topk_reply_bytes_under_ten_percent_of_stock():
    _, _, stock = stock_round()
    strategy = Compressed(qs.fedavg(N), codec="topk", density=0.02)
    replies = send(qs.client_app([compress_mod()]), configure(strategy), contexts())
    stock_bytes = [content_bytes(r.content) for r in stock]
    ours = [content_bytes(r.content) for r in replies]
    assert stock_bytes == [r.content["arrays"].count_bytes() for r in stock]  # dense: the arrays alone
    assert all(o < 0.10 * s for o, s in zip(ours, stock_bytes, strict=True)), (ours, stock_bytes)
    frames = [len(r.content["arrays"][FRAME_KEY].data) for r in replies]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["fedsqueeze_uplink_bytes"] == sum(ours)
    assert metrics["fedsqueeze_uplink_bytes_per_reply"] == ours
    assert metrics["fedsqueeze_frame_bytes"] == sum(frames)
    assert metrics["fedsqueeze_dense_uplink_bytes"] == sum(stock_bytes)  # the decoded records weigh as stock
    down = qs.initial_arrays().count_bytes()
    assert metrics["fedsqueeze_downlink_bytes"] == N * down
    assert metrics["fedsqueeze_downlink_bytes_per_node"] == [down] * N
    rb = strategy.history[-1]
    assert rb.server_round == 1 and sorted(rb.frame) == [101, 102, 103, 104]


# -- (c) a corrupted frame is dropped, the round aggregates the others ---------------------------------------
def _flip(arr):
    data = bytearray(arr.data)
    data[len(data) // 2] ^= 0xFF
    arr.data = bytes(data)


def _truncate(arr):
    arr.data = arr.data[:-7]
    arr.shape = (len(arr.data),)


def _bad_shape(arr):
    arr.shape = (len(arr.data) + 1,)


@pytest.mark.parametrize("corrupt", [_flip, _truncate, _bad_shape], ids=["flip", "truncate", "shape"])
def test_corrupted_frame_is_dropped_and_the_round_goes_on(corrupt, caplog):
    strategy = Compressed(qs.fedavg(N), codec="identity")
    replies = send(qs.client_app([compress_mod()]), configure(strategy), contexts())
    bad = replies[1]
    corrupt(bad.content["arrays"][FRAME_KEY])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        got, metrics = strategy.aggregate_train(1, replies)
    want, _, _ = stock_round(only={101, 103, 104})
    assert_close(got, want)
    assert metrics["fedsqueeze_dropped_replies"] == 1 and metrics["fedsqueeze_compressed_replies"] == N - 1
    assert list(strategy.history[-1].dropped) == [102]
    assert any("dropped the reply of node 102" in r.getMessage() for r in caplog.records)


def test_frame_for_other_arrays_is_dropped():
    # A client that encoded against other shapes (another model): a spec mismatch, dropped.
    strategy = Compressed(qs.fedavg(N), codec="identity")
    replies = send(qs.client_app([compress_mod()]), configure(strategy), contexts())
    other = fedsqueeze.codecs.get("identity").encode({"w": torch.zeros(3)})
    arr = replies[0].content["arrays"][FRAME_KEY]
    arr.data, arr.shape = other, (len(other),)
    replies[0].content[META_KEY]["spec"] = replies[1].content[META_KEY]["spec"]  # lie about the spec
    got, metrics = strategy.aggregate_train(1, replies)
    assert metrics["fedsqueeze_dropped_replies"] == 1
    assert "spec" in strategy.history[-1].dropped[101]
    assert_close(got, stock_round(only={102, 103, 104})[0])


# -- (d) error-feedback state persists across rounds in context.state ----------------------------------------
@pytest.mark.parametrize("codec", ["topk", "flm_topk"])
def test_error_feedback_state_persists_across_rounds(codec):
    ctx = contexts()
    app = qs.client_app([compress_mod()])
    strategy = Compressed(qs.fedavg(N), codec=codec)
    assert all(load_ef_state(c) is None for c in ctx.values())
    arrays, _ = strategy.aggregate_train(1, send(app, configure(strategy, 1), ctx))
    node = ctx[102]
    first = load_ef_state(node)
    assert first["round"] == 1
    r1 = first["ef"]["residual"].clone()
    assert float(r1.norm()) > 0  # the codec dropped something, and the mod kept it

    msgs = configure(strategy, 2, arrays)
    msg = next(m for m in msgs if m.metadata.dst_node_id == 102)
    received = {k: torch.from_numpy(a.numpy()).double() for k, a in msg.content["arrays"].items()}
    local = qs.train(msg, node).content["arrays"]  # what the stock app replies to this message
    u = torch.cat([(received[k] - torch.from_numpy(local[k].numpy()).double()).reshape(-1) for k in FLOATS])

    fresh = Context(7, 102, {"partition-id": 1}, RecordDict(), {})
    frame_fresh = bytes(app(msg, fresh).content["arrays"][FRAME_KEY].data)
    frame = bytes(app(msg, node).content["arrays"][FRAME_KEY].data)
    assert frame != frame_fresh  # round 2 encoded u + the round-1 residual, not u alone
    second = load_ef_state(node)
    assert second["round"] == 2
    spec = fedsqueeze.UpdateSpec.from_json(second["ef"]["spec"])
    decoded = fedsqueeze.codecs.decode_flat(frame, spec).double()
    # the residual was restored: what was sent plus what is kept equals this update plus the old residual
    assert torch.allclose(decoded + second["ef"]["residual"], u + r1, atol=1e-9, rtol=0)
    if codec == "flm_topk":  # a stateful codec: its state travels with the residual
        assert second["ef"]["codec_state"]


def test_error_feedback_starts_fresh_for_another_codec():
    ctx = contexts(1)
    app = qs.client_app([compress_mod()])
    for codec in ("topk", "randk"):
        strategy = Compressed(qs.fedavg(1), codec=codec)
        (msg,) = configure(strategy, n=1)
        app(msg, ctx[101])
        state = load_ef_state(ctx[101])
        assert state["round"] == 1
    # the randk round did not add the topk residual: it equals a fresh node's residual
    fresh = contexts(1)
    app(msg, fresh[101])
    assert torch.equal(state["ef"]["residual"], load_ef_state(fresh[101])["ef"]["residual"])


# -- (e) the mod without the wrapper and without codec= -----------------------------------------------------
def test_mod_without_wrapper_or_codec_replies_with_a_clear_error():
    calls = []

    def spy(msg, ctx, call_next):
        calls.append(msg)
        return call_next(msg, ctx)

    app = qs.client_app([compress_mod(), spy])
    replies = send(app, configure(qs.fedavg(N)), contexts())
    assert all(r.has_error() for r in replies)
    assert {r.error.code for r in replies} == {ErrorCode.MOD_FAILED_PRECONDITION}
    assert replies[0].error.reason == NO_CODEC
    assert "Compressed" in NO_CODEC and "codec=" in NO_CODEC
    assert calls == []  # refused before the app trained


def test_mod_with_its_own_codec_compresses_without_the_wrapper():
    replies = send(qs.client_app([compress_mod("topk", density=0.05)]), configure(qs.fedavg(N)), contexts())
    assert all(FRAME_KEY in r.content["arrays"] and r.content[META_KEY]["codec"] == "topk" for r in replies)
    # ... and the wrapper decodes them (it decodes any codec): the server's own codec name is not needed
    strategy = Compressed(qs.fedavg(N), codec="identity")
    msgs = configure(strategy)
    _, metrics = strategy.aggregate_train(1, send(qs.client_app([compress_mod()]), msgs, contexts()))
    assert metrics["fedsqueeze_compressed_replies"] == N


def test_the_server_codec_wins_over_the_mod_argument():
    strategy = Compressed(qs.fedavg(N), codec="identity")
    replies = send(qs.client_app([compress_mod("topk")]), configure(strategy), contexts())
    assert {r.content[META_KEY]["codec"] for r in replies} == {"identity"}


# -- (f) non-train messages pass through unchanged -----------------------------------------------------------
@pytest.mark.parametrize("kind", [MessageType.EVALUATE, MessageType.QUERY])
def test_non_train_messages_pass_through(kind):
    calls = []

    def spy(msg, ctx, call_next):
        calls.append(msg)
        out = call_next(msg, ctx)
        calls.append(out)
        return out

    app = qs.client_app([compress_mod("topk"), spy])
    if kind == MessageType.QUERY:
        app.query()(lambda msg, ctx: Message(RecordDict({"q": ConfigRecord({"x": 1})}), reply_to=msg))
    content = RecordDict({"arrays": qs.initial_arrays(), "config": ConfigRecord({"server-round": 1})})
    msg = Message(content, dst_node_id=101, message_type=kind)
    msg.metadata.__dict__["_message_id"] = "e1"
    ctx = contexts(1)[101]
    reply = app(msg, ctx)
    assert calls[0] is msg and calls[1] is reply  # the mod handed on the message and the reply themselves
    assert META_KEY not in reply.content and len(ctx.state) == 0
    stock = qs.client_app()
    if kind == MessageType.QUERY:
        return
    want = stock(msg, contexts(1)[101])
    assert reply.content["metrics"]["accuracy"] == want.content["metrics"]["accuracy"]


def test_evaluate_goes_through_the_wrapper_unchanged():
    strategy = Compressed(qs.fedavg(N), codec="topk")
    arrays = qs.initial_arrays()
    msgs = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), Grid()))
    assert all(CODEC_KEY not in m.content["config"] and m.content["arrays"] is arrays for m in msgs)


# -- (g) a reply without the mod passes through the wrapper --------------------------------------------------
def test_plain_replies_pass_through_the_wrapper():
    strategy = Compressed(qs.fedavg(N), codec="identity")
    msgs = configure(strategy)
    ctx = contexts()
    with_mod, without = qs.client_app([compress_mod()]), qs.client_app()
    replies = [
        (without if m.metadata.dst_node_id == 103 else with_mod)(m, ctx[m.metadata.dst_node_id]) for m in msgs
    ]
    plain = replies[2]
    before = {k: bytes(a.data) for k, a in plain.content["arrays"].items()}
    got, metrics = strategy.aggregate_train(1, replies)
    assert {k: bytes(a.data) for k, a in plain.content["arrays"].items()} == before
    assert metrics["fedsqueeze_plain_replies"] == 1 and metrics["fedsqueeze_compressed_replies"] == N - 1
    assert_close(got, stock_round()[0])
    # a plain reply's uplink is its dense size
    assert metrics["fedsqueeze_uplink_bytes_per_reply"][2] == plain.content["arrays"].count_bytes()


# -- the wrapper's contract ----------------------------------------------------------------------------------
def test_configure_train_copies_the_shared_record_and_keeps_the_callers_config():
    strategy = Compressed(qs.fedavg(N), codec="topk", density=0.05)
    arrays, config = qs.initial_arrays(), ConfigRecord({"lr": 0.1})
    msgs = list(strategy.configure_train(3, arrays, config, Grid()))
    assert CODEC_KEY not in config
    assert len({id(m.content) for m in msgs}) == 1  # still one RecordDict for all (as FedAvg built it)
    cfg = msgs[0].content["config"]
    assert cfg[CODEC_KEY] == "topk" and cfg["fedsqueeze-codec-options"] == '{"density": 0.05}'
    assert cfg["fedsqueeze-round"] == 3 and cfg["lr"] == 0.1
    assert msgs[0].content["arrays"] is arrays


@pytest.mark.parametrize(
    ("codec", "options", "match"),
    [
        ("nope", {}, "unknown codec 'nope'"),
        ("topk", {"densty": 0.1}, "no option"),
        ("topk", {"density": 2.0}, "density"),
        ("topk", {"density": object()}, "JSON"),
        ("cg_fedllm", {}, "trained model"),
    ],
)
def test_a_bad_codec_fails_at_construction_in_one_line(codec, options, match):
    for build in (
        lambda: Compressed(qs.fedavg(N), codec=codec, **options),
        lambda: compress_mod(codec, **options),
    ):
        with pytest.raises(ConfigError, match=match) as info:
            build()
        assert "\n" not in str(info.value)


def test_compressed_wraps_only_strategies():
    with pytest.raises(UsageError, match="Strategy"):
        Compressed(object(), codec="topk")
    with pytest.raises(ConfigError, match="no codec="):
        compress_mod(density=0.1)


def test_mod_refuses_a_reply_that_drops_a_float_array():
    def drop_fc2(msg, ctx, call_next):
        out = call_next(msg, ctx)
        del out.content["arrays"]["fc2.bias"]
        return out

    strategy = Compressed(qs.fedavg(N), codec="topk")
    replies = send(qs.client_app([compress_mod(), drop_fc2]), configure(strategy), contexts())
    assert all(r.has_error() and "fc2.bias" in r.error.reason for r in replies)


# -- with Flower's DP client-side clipping: compress_mod first (outermost), Compressed outermost -------------
def test_with_client_side_dp_clipping():
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    def dp():
        return DifferentialPrivacyClientSideFixedClipping(
            qs.fedavg(N), noise_multiplier=0.0, clipping_norm=0.05, num_sampled_clients=N
        )

    stock = dp()
    want, _ = stock.aggregate_train(1, send(qs.client_app([fixedclipping_mod]), configure(stock), contexts()))
    strategy = Compressed(dp(), codec="identity")
    app = qs.client_app([compress_mod(), fixedclipping_mod])
    got, _ = strategy.aggregate_train(1, send(app, configure(strategy), contexts()))
    assert_close(got, want)
    # the other order compresses first: the clipping mod then sees a frame, not the arrays, and refuses
    wrong = qs.client_app([fixedclipping_mod, compress_mod()])
    assert all(r.has_error() for r in send(wrong, configure(Compressed(dp(), codec="identity")), contexts()))


# -- Flower's simulation runtime: 3 SuperNodes, 2 rounds, FedAvg wrapped -------------------------------------
def test_simulation_runtime_with_three_supernodes(monkeypatch):
    def make_strategy():
        return Compressed(qs.fedavg(3), codec="topk", density=0.05)

    results = qs.run_in_simulation(
        monkeypatch, make_strategy, qs.client_app([qs.ef_probe_mod, compress_mod()]), 2
    )
    ((strategy, result),) = results
    train = result.train_metrics_clientapp
    assert sorted(train) == [1, 2]
    for rnd, m in train.items():
        assert m["fedsqueeze_compressed_replies"] == 3 and m["fedsqueeze_dropped_replies"] == 0
        assert m["fedsqueeze_uplink_bytes"] < 0.10 * m["fedsqueeze_dense_uplink_bytes"]
        assert m["fedsqueeze_dense_uplink_bytes"] == m["fedsqueeze_downlink_bytes"]  # same arrays both ways
        assert m["ef-prev-round"] == pytest.approx(rnd - 1)  # each node's residual survived in context.state
    assert [rb.server_round for rb in strategy.history] == [1, 2]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]  # evaluate went through untouched
    assert list(result.arrays.keys()) == list(qs.initial_arrays().keys())


def test_error_feedback_off_keeps_no_state():
    ctx = contexts()
    app = qs.client_app([compress_mod()])
    strategy = Compressed(qs.fedavg(N), codec="topk", error_feedback=False)
    assert (
        strategy.configure_train(1, qs.initial_arrays(), ConfigRecord(), Grid())[0].content["config"][
            "fedsqueeze-error-feedback"
        ]
        is False
    )
    arrays, _ = strategy.aggregate_train(1, send(app, configure(strategy, 1), ctx))
    assert all(len(c.state) == 0 for c in ctx.values())
    msg = next(m for m in configure(strategy, 2, arrays) if m.metadata.dst_node_id == 102)
    fresh = Context(7, 102, {"partition-id": 1}, RecordDict(), {})
    assert bytes(app(msg, ctx[102]).content["arrays"][FRAME_KEY].data) == bytes(
        app(msg, fresh).content["arrays"][FRAME_KEY].data
    )
    with pytest.raises(ConfigError, match="error_feedback"):
        Compressed(qs.fedavg(N), codec="topk", error_feedback="no")


def test_the_quickstart_example_in_process(monkeypatch):
    # examples/quickstart-pytorch, driven in-process (its run.py does the same on the simulation runtime)
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "examples" / "quickstart-pytorch"
    monkeypatch.syspath_prepend(str(folder))
    for name in ("task", "client_app", "server_app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import client_app
    import server_app
    import torch as _torch
    from flwr.app import ArrayRecord

    try:
        assert client_app.app._mods[0].__name__ == "compress_mod"
        strategy = server_app.make_strategy()
        assert isinstance(strategy, Compressed) and strategy.codec_name == "flm_topk"
        _torch.manual_seed(0)
        arrays = ArrayRecord(client_app.Net().state_dict())
        msgs = configure(strategy, 1, arrays, n=2)
        ctx = {101 + i: Context(7, 101 + i, {"partition-id": i, "num-partitions": 2}, RecordDict(), {})
               for i in range(2)}  # fmt: skip
        _, metrics = strategy.aggregate_train(1, send(client_app.app, msgs, ctx))
        assert metrics["fedsqueeze_compressed_replies"] == 2
        assert metrics["fedsqueeze_uplink_bytes"] < 0.05 * metrics["fedsqueeze_dense_uplink_bytes"]
    finally:
        for name in ("task", "client_app", "server_app"):
            sys.modules.pop(name, None)


# -- a real deployment on 127.0.0.1: one SuperLink, two SuperNodes, `flwr run` of a stock-shaped app
DEPLOY_APP = '''"""The drop-in test app for `flwr run` (generated by tests/test_flower_dropin.py)."""

import json
from pathlib import Path

from flwr.app import ConfigRecord
from flwr.serverapp import ServerApp
from support import dropin_app as qs

from fedsqueeze.flower import Compressed, compress_mod

clientapp = qs.client_app([qs.ef_probe_mod, compress_mod()])
serverapp = ServerApp()


@serverapp.main()
def main(grid, context):
    strategy = Compressed(qs.fedavg(2), codec="topk", density=0.05)
    result = strategy.start(grid=grid, initial_arrays=qs.initial_arrays(), num_rounds=2,
                            train_config=ConfigRecord({"lr": 0.1}), timeout=60)
    rows = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    Path(context.run_config["out"]).write_text(json.dumps(rows))
'''


@pytest.mark.slow  # ~90 s on 2 busy cores: SuperLink, SuperNodes and a process per message
def test_deployment_superlink_two_supernodes(tmp_path):
    import json
    import subprocess

    from fedsqueeze.flower.deploy import flower_exe, write_connection
    from test_flower import Stack

    app = tmp_path / "app"
    app.mkdir()
    (app / "dropin_deploy_app.py").write_text(DEPLOY_APP)
    out = tmp_path / "train-metrics.json"
    (app / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedsqueeze-dropin-test"
version = "0.0.1"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedsqueeze"

[tool.flwr.app.components]
serverapp = "dropin_deploy_app:serverapp"
clientapp = "dropin_deploy_app:clientapp"

[tool.flwr.app.config]
out = {json.dumps(str(out))}
""")
    stack = Stack(tmp_path, 2)
    try:
        write_connection(tmp_path / "flwr-home", "t", f"127.0.0.1:{stack.port}", insecure=True)
        res = subprocess.run([flower_exe("flwr"), "run", str(app), "t", "--stream"],
                             env=stack.env, capture_output=True, text=True, timeout=240)  # fmt: skip
        assert out.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        stack.close()
    rows = json.loads(out.read_text())
    assert sorted(rows) == ["1", "2"]
    for rnd, m in rows.items():
        assert m["fedsqueeze_compressed_replies"] == 2 and m["fedsqueeze_dropped_replies"] == 0
        assert m["fedsqueeze_uplink_bytes"] < 0.10 * m["fedsqueeze_dense_uplink_bytes"]
        # the residual survived in context.state between the ClientApp processes of a SuperNode
        assert m["ef-prev-round"] == pytest.approx(int(rnd) - 1)
