"""``fl.downlink_catch_up = "reencode"``: a client that missed rounds gets one frame coding the broadcast
state minus its copy; the server mirrors every client's copy exactly, and the coding error goes into the
client's next catch-up frame."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze import UpdateSpec
from fedsqueeze.codecs import decode_flat, get
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl.server import Downlink, state_sha256
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.seeding import derive_seed

D = 300
SPEC, HSPEC = UpdateSpec.from_shapes({"w": (D,)}), UpdateSpec.from_shapes({})


class Client:
    """A client's end: it applies exactly the bytes of its delivery to the copy it holds."""

    def __init__(self) -> None:
        self.copy = torch.zeros(D)

    def receive(self, delivery) -> torch.Tensor:
        if delivery.frames is None:
            self.copy = decode_flat(delivery.dense, SPEC)
        else:
            for frame in delivery.frames:
                self.copy = self.copy + decode_flat(frame, SPEC)
        return self.copy


def _global(r: int) -> dict[str, torch.Tensor]:
    return {"w": torch.randn(D, generator=torch.Generator().manual_seed(r)).cumsum(0) / 10}


def _downlink(catch_up: str, n: int | None = 5, codec: str = "topk") -> Downlink:
    opts = {"density": 0.05} if codec == "topk" else {"rate": 4.0}
    return Downlink(get(codec, **opts), SPEC, HSPEC, {"w": torch.zeros(D)}, n, catch_up=catch_up)


def _check_round(dl: Downlink, clients: dict[int, Client], sampled, held: torch.Tensor, got) -> None:
    for c in sampled:
        d = dl.deliveries[c]
        copy = clients[c].receive(d)
        start = dl.start(c)
        want = held if start is None else start["w"]
        assert torch.equal(copy, want)  # the client rebuilds exactly what the server mirrors
        assert (d.sha256 is None) == (start is None)
        assert state_sha256(copy) == (d.sha256 or state_sha256(held))
        assert d.frames is None or len(d.frames) <= 1  # never more than one frame
    assert torch.equal(got["w"], held)


def test_a_stale_client_gets_one_frame_and_an_in_sync_one_the_shared_frame():
    dl = _downlink("reencode")
    clients = {c: Client() for c in range(5)}
    schedule = [[0, 1], [0], [0, 2], [1, 0], [0, 1]]
    for r, sampled in enumerate(schedule, 1):
        got, _, cost = dl.broadcast(r, _global(r), {}, sampled, seed=r)
        _check_round(dl, clients, sampled, dl.held, got)
        shared = dl.frames[r]
        assert dl.deliveries[0].frames == [shared] and dl.deliveries[0].sha256 is None  # client 0: in sync
        assert cost[0] == len(shared)
    # client 1 missed rounds 2-3: one re-encoded frame in round 4, coded against its copy (round 1's θ̃)
    d = dl.deliveries  # round 5: client 1 holds its own copy from round 4, so it is re-encoded again
    assert d[1].frames is not None and len(d[1].frames) == 1 and d[1].frames[0] != dl.frames[5]
    cols = dl.row_columns()
    assert cols["downlink_reencoded"] == 1 and cols["downlink_start_lag"] > 0
    assert dl.protocol == "flasc:topk+reencode" and _downlink("frames").protocol == "flasc:topk"


def test_the_coding_error_goes_into_the_next_catch_up_frame():
    dl = _downlink("reencode")
    dl.broadcast(1, _global(1), {}, [0, 1], seed=1)
    dl.broadcast(2, _global(2), {}, [0], seed=2)
    dl.broadcast(3, _global(3), {}, [0, 1], seed=3)  # client 1 re-encoded against round 1's θ̃
    copy = dl.start(1)["w"]
    assert not torch.equal(copy, dl.held)
    before = dl.held
    dl.broadcast(4, _global(4), {}, [1], seed=4)
    # the frame codes θ̃_4 − copy, so copy's old error is corrected along with the new rounds
    (frame,) = dl.deliveries[1].frames
    seed = derive_seed(4, 4, 1, "catch-up")
    ours = get("topk", density=0.05).encode_with_spec(dl.held - copy, SPEC, seed=seed)
    assert frame == ours and not torch.equal(dl.held, before)


def test_reencoding_sends_fewer_bytes_than_every_missed_frame():
    costs = {}
    for mode in ("frames", "reencode"):
        dl = _downlink(mode, codec="wf_ecq")
        for r in range(1, 7):
            _, _, cost = dl.broadcast(r, _global(r), {}, [0] if r < 6 else [0, 1], seed=r)
        costs[mode] = cost
        assert costs[mode][0] == len(dl.frames[6])  # in sync: the round's frame either way
    assert len(_downlink("frames").frames) == 0
    assert costs["reencode"][1] < costs["frames"][1] / 3  # one frame instead of six


def test_a_lost_copy_and_an_unknown_node_are_resynced_densely():
    dl = _downlink("reencode", n=None)
    dl.broadcast(1, _global(1), {}, [11, 12], seed=1)
    assert all(dl.deliveries[c].frames is None for c in (11, 12))
    dl.broadcast(2, _global(2), {}, [11], seed=2)
    dl.lost(11)
    dl.broadcast(3, _global(3), {}, [11, 12], seed=3)
    assert dl.deliveries[11].frames is None  # lost: dense
    assert dl.deliveries[12].frames is not None and dl.deliveries[12].sha256 is not None  # stale: one frame


def test_the_copies_survive_a_checkpoint():
    whole, cut = _downlink("reencode"), _downlink("reencode")
    schedule = [[0, 1], [2], [0, 3], [1, 2], [0, 4], [1, 3]]
    for r, sampled in enumerate(schedule, 1):
        if r == 4:
            state = cut.state_dict()
            cut = _downlink("reencode")
            cut.load_state_dict(state)
        a, _, ca = whole.broadcast(r, _global(r), {}, sampled, seed=r)
        b, _, cb = cut.broadcast(r, _global(r), {}, sampled, seed=r)
        assert ca == cb and torch.equal(a["w"], b["w"]) and whole.deliveries == cut.deliveries
    with pytest.raises(ConfigError, match="downlink_catch_up"):
        _downlink("reencode").load_state_dict(_downlink("frames").state_dict())
    with pytest.raises(ConfigError, match="catch-up is one of frames, reencode"):
        _downlink("resend")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.sets(st.integers(0, 4), min_size=1, max_size=3), min_size=1, max_size=8),
    st.sets(st.integers(1, 8)),
    st.sampled_from(["topk", "wf_ecq"]),
)
def test_every_client_rebuilds_what_the_server_mirrors(schedule, loss_rounds, codec):
    """Any sampling and loss pattern: each client's copy, built from its own bytes, is the server's mirror."""
    dl = _downlink("reencode", codec=codec)
    clients = {c: Client() for c in range(5)}
    for r, sampled in enumerate(schedule, 1):
        if r in loss_rounds:
            lost = min(sampled)
            dl.lost(lost)
            clients[lost] = Client()
        got, _, cost = dl.broadcast(r, _global(r), {}, sorted(sampled), seed=r)
        _check_round(dl, clients, sampled, dl.held, got)
        assert all(0 < cost[c] <= 32 + 4 * D for c in sampled)


def test_the_loop_trains_each_client_from_its_own_start_and_resumes_exactly(tmp_path):
    from fedsqueeze.fl import run
    from fedsqueeze.fl.checkpoint import load_checkpoint
    from support.loop import CrashError, CrashingToy, N, make_config, rows_of, strip_times

    cfg = make_config("topk", downlink="topk", rounds=5, downlink_catch_up="reencode")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(cfg, whole, workload=ToyWorkload(N))
    rows = rows_of(whole)
    assert sum(row["downlink_reencoded"] for row in rows) > 0
    frames = [n for row in rows for n in row["downlink_frames"].values()]
    assert max(frames) == 1  # nobody downloads a chain of missed frames
    with pytest.raises(CrashError):
        run(cfg, cut, workload=CrashingToy(crash_after_calls=2 * 3 + 1))
    run(cfg, cut, workload=ToyWorkload(N), resume=True)
    assert strip_times(rows_of(cut)) == strip_times(rows)
    a, b = load_checkpoint(whole), load_checkpoint(cut)
    assert all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])

    frames_cfg = make_config("topk", downlink="topk", rounds=5)
    run(frames_cfg, tmp_path / "frames", workload=ToyWorkload(N))
    frows = rows_of(tmp_path / "frames")
    assert all(row["downlink_reencoded"] is None for row in frows)
    reencoded, every_frame = (sum(row["downlink_bytes"] for row in rs) for rs in (rows, frows))
    assert reencoded < every_frame  # the same run, fewer downlink bytes


def test_reencoding_that_could_hold_too_many_copies_falls_back_to_frames(caplog):
    import logging

    from fedsqueeze.config import FLConfig, RunConfig
    from fedsqueeze.fl.server import REENCODE_MEMORY_BYTES, catch_up_mode

    cfg = RunConfig(fl=FLConfig(downlink_catch_up="reencode"))
    log = logging.getLogger("test")
    small = UpdateSpec.from_shapes({"w": (147_456,)})
    assert catch_up_mode(cfg, small, 20, log, compressed=True) == "reencode"
    huge = UpdateSpec.from_shapes({"w": (8_388_608,)})  # 1,000 clients × 8.4 M floats: 31 GiB of copies
    assert 4 * 1000 * huge.numel > REENCODE_MEMORY_BYTES
    with caplog.at_level(logging.WARNING):
        assert catch_up_mode(cfg, huge, 1000, log, compressed=True) == "frames"
    assert "frame by frame" in caplog.text
    assert (
        catch_up_mode(RunConfig(fl=FLConfig(downlink_catch_up="frames")), small, 20, log, compressed=True)
        == "frames"
    )
    assert catch_up_mode(cfg, huge, 1000, log, compressed=False) == "frames"  # a dense broadcast has none


# fl.downlink_catch_up_rate = "by_staleness": a re-encoded frame gets more bits the larger its gap.
def _reencoding(
    rate: float, *, by_staleness: bool, codec: str = "wf_ecq", mode: str = "reencode"
) -> Downlink:
    return Downlink(
        get(codec, **({"rate": rate} if rate else {})),
        SPEC,
        HSPEC,
        {"w": torch.zeros(D)},
        5,
        catch_up=mode,
        rate_by_staleness=by_staleness,
    )


def test_rate_by_staleness_gives_a_larger_gap_more_bits_and_less_error():
    fixed, stale = _reencoding(2.0, by_staleness=False), _reencoding(2.0, by_staleness=True)
    for dl in (fixed, stale):  # client 1 takes part in round 1, then misses rounds 2-6
        for r in range(1, 8):
            dl.broadcast(r, _global(r), {}, [0, 1] if r in (1, 7) else [0], seed=r)
    copy = stale.start(1)["w"]
    gap = float((stale.steps[1] + (stale.held - copy)).to(torch.float64).norm())  # what the frame coded
    want = 2.0 + min(3.0, round(4 * math.log2(gap / stale.last_norms[0])) / 4)
    assert stale.rates == {1: want} and want > 2.0  # client 0 is in sync: the shared frame, no rate
    cost_fixed, cost_stale = (len(dl.deliveries[1].frames[0]) for dl in (fixed, stale))
    assert cost_stale > cost_fixed  # more bits ...
    err_fixed = float((fixed.held - fixed.start(1)["w"]).norm())
    err_stale = float((stale.held - copy).norm())
    assert err_stale < err_fixed  # ... and a copy closer to θ̃
    assert stale.row_columns()["downlink_catch_up_rate"] == want
    assert "downlink_catch_up_rate" not in fixed.row_columns()
    assert stale.protocol == "flasc:wf_ecq+reencode+by_staleness"


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sets(st.integers(0, 4), min_size=1, max_size=3), min_size=1, max_size=8))
def test_rate_by_staleness_stays_within_three_extra_bits_and_mirrors_exactly(schedule):
    dl, clients = _reencoding(2.0, by_staleness=True), {c: Client() for c in range(5)}
    for r, sampled in enumerate(schedule, 1):
        got, _, _ = dl.broadcast(r, _global(r), {}, sorted(sampled), seed=r)
        _check_round(dl, clients, sorted(sampled), dl.held, got)
        assert all(2.0 <= v <= 5.0 and 4 * v == int(4 * v) for v in dl.rates.values())
        assert set(dl.rates) == set(dl.steps)  # a rate for every re-encoded frame, and only for those


def test_rate_by_staleness_needs_a_codec_with_a_rate():
    with pytest.raises(ConfigError, match="downlink_catch_up_rate = 'by_staleness' needs a downlink codec"):
        _reencoding(0, by_staleness=True, codec="signsgd")
    frames = _reencoding(0, by_staleness=True, codec="signsgd", mode="frames")
    assert frames.base_rate is None  # frame-by-frame catch-up has no re-encoded frame to raise


def test_the_loop_records_the_rate_by_staleness_and_rejects_a_rateless_broadcast(tmp_path):
    import dataclasses

    from fedsqueeze.config import CodecConfig
    from fedsqueeze.fl import run
    from support.loop import N, make_config, rows_of

    base = make_config("topk", downlink="topk", rounds=5, downlink_catch_up="reencode")
    cfg = dataclasses.replace(
        base,
        fl=dataclasses.replace(base.fl, downlink_catch_up_rate="by_staleness"),
        downlink=CodecConfig("topk", {"rate": 4.0}),
    )
    run(cfg, tmp_path / "stale", workload=ToyWorkload(N))
    rows = rows_of(tmp_path / "stale")
    rates = [row["downlink_catch_up_rate"] for row in rows if row["downlink_reencoded"]]
    assert rates and all(4.0 <= v <= 7.0 for v in rates)
    summary = json.loads((tmp_path / "stale" / "summary.json").read_text())
    assert summary["downlink_protocol"] == "flasc:topk+reencode+by_staleness"
    rateless = dataclasses.replace(cfg, downlink=CodecConfig("signsgd", {}))
    with pytest.raises(ConfigError, match="'signsgd' has none"):
        run(rateless, tmp_path / "signs", workload=ToyWorkload(N))
