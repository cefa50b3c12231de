"""The one client-side state store (versions per part and round) and the downlink layout's head part
(version 2): a fedsqueeze job's delivery packed by the server and rebuilt by the one ``rebuild``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, RecordDict

from fedsqueeze.codecs import get
from fedsqueeze.errors import PayloadError
from fedsqueeze.fl.server import Downlink, state_sha256
from fedsqueeze.flower.downlink import DOWN_META_KEY, HEAD_KEY, Layout, frame_arrays, pack_delivery, rebuild
from fedsqueeze.flower.store import KEEP_VERSIONS, StateStore
from fedsqueeze.spec import UpdateSpec


def _context() -> Context:
    return Context(1, 2, {}, RecordDict(), {})


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_store_reads_the_newest_version_before_a_round_and_keeps_two(tmp_path, on_disk):
    ctx = _context()
    store = StateStore(ctx, tmp_path / "n0" if on_disk else None, "job-p0")
    assert store.load("ef", before=1) is None
    for r in (1, 2, 3):
        store.save("ef", r, {"x": torch.full((2,), float(r))})
    assert store.load("ef", before=3)["round"] == 2  # a replayed round 3 starts from round 2's state
    assert store.load("ef")["round"] == 3 and store.load("ef", before=2) is None  # round 1 was dropped
    assert torch.equal(store.load("ef", before=4)["x"], torch.full((2,), 3.0))
    assert store.load("downlink") is None  # parts are separate
    assert StateStore(ctx, store.root, "other-job").load("ef") is None  # another owner's state is not read
    if on_disk:
        assert sorted(p.name for p in (tmp_path / "n0").iterdir()) == ["ef-job-p0-r2.pt", "ef-job-p0-r3.pt"]
    else:
        assert sorted(ctx.state.array_records["fedsqueeze.ef"].keys()) == ["r2", "r3"]
    assert KEEP_VERSIONS == 2


def _job_downlink(codec=None):
    lspec = UpdateSpec.from_shapes({"a.lora_A": (2, 3), "a.lora_B": (3, 2)})
    hspec = UpdateSpec.from_shapes({"score.weight": (2, 2)})
    lora = {n: torch.randn(s, generator=torch.Generator().manual_seed(1)) for n, s in lspec.entries}
    head = {n: torch.randn(s, generator=torch.Generator().manual_seed(2)) for n, s in hspec.entries}
    down = Downlink(codec, lspec, hspec, lora, 2, head, window=4)
    layout = Layout.of_specs(lspec, hspec)
    initial = {
        "round": 0, "theta": lspec.flatten(lora), "layout": layout.to_json(), "layout-digest": layout.digest,
        "head": hspec.flatten(head), "head-version": 0,
    }  # fmt: skip
    return down, layout, lora, head, initial


def _message(down, layout, r, client, lora_out, head_out):
    common = {
        "record": "arrays", "protocol": down.protocol, "round": r,
        "sha256": state_sha256(down.lora_spec.flatten(lora_out)),
        "head-version": down.head_version, "head-sha256": state_sha256(down.head_spec.flatten(head_out)),
    }  # fmt: skip
    arrays, meta = pack_delivery(down.deliveries[client], layout, common, {}, frame_arrays())
    return RecordDict({"arrays": arrays, DOWN_META_KEY: meta, "config": ConfigRecord({"server-round": r})})


def test_a_job_delivery_with_a_head_part_rebuilds_from_the_initial_state_and_frames():
    down, layout, lora, head, initial = _job_downlink(get("topk", density=0.5))
    assert layout.version == 2 and layout.spec == down.lora_spec and layout.head_spec == down.head_spec
    held = None
    for r in (1, 2, 3):
        new_lora = {k: v + 0.1 * r for k, v in lora.items()}
        new_head = head if r < 3 else {k: v * 2 for k, v in head.items()}  # the head changes in round 3
        lora_out, head_out, _ = down.broadcast(r, new_lora, new_head, [0], seed=r)
        d = down.deliveries[0]
        content = _message(down, layout, r, 0, lora_out, head_out)
        assert (HEAD_KEY in content["arrays"]) == (r == 3)  # the head goes out only when stale
        key, record, copy = rebuild(content, held, lambda: initial)
        assert key == "arrays" and list(record.keys()) == list(layout.order)
        for name, value in lora_out.items():
            assert torch.equal(torch.from_numpy(record[f"lora.{name}"].numpy()), value)
        for name, value in head_out.items():
            assert torch.equal(torch.from_numpy(record[f"head.{name}"].numpy()), value)
        assert d.frames is not None and torch.equal(copy["step"], down.last_step)  # the predictive reference
        held = copy
    # a node that holds nothing cannot apply frames past round 0 and says it needs a resync
    down.broadcast(4, lora, head, [0], seed=4)
    with pytest.raises(PayloadError, match="resync"):
        rebuild(_message(down, layout, 4, 0, lora, head), None, lambda: initial)


@pytest.mark.usefixtures("task_identity")
def test_compress_mod_codes_a_version_2_reply_in_parts_with_the_seed_sent_as_text():
    import json

    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    from fedsqueeze.codecs import ErrorFeedback
    from fedsqueeze.errors import ConfigError
    from fedsqueeze.flower import Compressed
    from fedsqueeze.flower.frames import PARTS_KEY, ROUND_KEY, SEED_KEY, read_parts_reply, read_parts_round
    from fedsqueeze.flower.mods import compress_mod

    with pytest.raises(ConfigError, match="codec=None"):
        Compressed(FedAvg(), codec=None)  # only a strategy that decodes its own frames names no codec
    seed = (1 << 64) - 5  # a uint64 past Flower's sint64: it travels as text
    theta = {
        "lora.a": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "head.w": np.ones(2, np.float32),
    }
    parts = [
        {
            "name": "lora",
            "prefix": "lora.",
            "codec": "topk",
            "options": {"density": 0.5},
            "error-feedback": True,
        },
        {"name": "head", "prefix": "head.", "codec": "identity", "options": {}, "send": False},
    ]
    conf = ConfigRecord({"server-round": 3, SEED_KEY: str(seed), PARTS_KEY: json.dumps(parts)})
    sent = ArrayRecord({k: Array(v) for k, v in theta.items()})
    msg = Message(RecordDict({"arrays": sent, "config": conf}), dst_node_id=5, message_type="train")
    # The round alone (what the job ClientApp's codec needs), as read_parts_config gives it.
    assert read_parts_round(msg.content) == 3
    assert read_parts_round(RecordDict({"config": ConfigRecord({ROUND_KEY: 7, PARTS_KEY: "[]"})})) == 7
    assert read_parts_round(RecordDict({"config": ConfigRecord({"server-round": 3})})) is None  # no parts
    local = {k: (v * 0.5).astype(np.float32) for k, v in theta.items()}

    def app(m, ctx):
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in local.items()}),
                              "metrics": MetricRecord({"num-examples": 4})})  # fmt: skip
        return Message(content, reply_to=m)

    ctx = _context()
    reply = compress_mod()(msg, ctx, app)
    got = read_parts_reply(reply.content)
    assert got.frames["head"] == b"" and got.info["head"]["sent"] is False
    assert got.info["lora"]["round"] == 3 and got.info["lora"]["state-from"] == "fresh"
    spec = UpdateSpec.from_shapes({"a": (3, 4)})
    u = torch.from_numpy(theta["lora.a"]).reshape(-1) - torch.from_numpy(local["lora.a"]).reshape(-1)
    want = ErrorFeedback(get("topk", density=0.5)).encode_flat(u, spec, seed=seed)
    assert got.frames["lora"] == want  # the engine's frame, byte for byte
    assert StateStore(ctx).load("ef")["round"] == 3  # the residual is kept as round 3's version
