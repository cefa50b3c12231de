"""Faulty clients: screening (undecodable, non-finite, oversized replies), min_replies, robust aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import fedsqueeze.fl.loop as loop
from fedsqueeze.codecs import get
from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.fl.robust import aggregate, merge_screens, screen_replies
from fedsqueeze.fl.server import weighted_mean
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.spec import UpdateSpec
from fedsqueeze.wire.frame import pack_frame

SPEC = UpdateSpec.from_shapes({"a": (4, 8), "b": (8, 4)})
N = 6


def frames(vectors, codec="identity", spec=SPEC):
    return [get(codec).encode_with_spec(v, spec, seed=i) for i, v in enumerate(vectors)]


def nan_frame(spec: UpdateSpec = SPEC) -> bytes:
    # A hand-made identity frame with a valid CRC whose values are NaN: a client that went numerically wrong.
    return pack_frame(1, spec, 0, np.full(spec.numel, np.nan, dtype="<f4").tobytes())


def flip(blob: bytes, pos: int = -1) -> bytes:
    b = bytearray(blob)
    b[pos] ^= 0x10
    return bytes(b)


def vecs(n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SPEC.numel, generator=g) * scale for _ in range(n)]


# -- screen_replies ---------------------------------------------------------------------------------------
def test_clean_replies_are_all_kept_and_decoded_exactly() -> None:
    v = vecs(4)
    kept, dec, dropped = screen_replies(frames(v), [1, 2, 3, 4], SPEC)
    assert kept == [0, 1, 2, 3] and dropped == []
    assert all(torch.equal(a, b) for a, b in zip(dec, v, strict=True))


@pytest.mark.parametrize(
    "fault, reason",
    [
        ("corrupt", "undecodable"),
        ("truncated", "undecodable"),
        ("nan", "undecodable"),
        ("wrong_spec", "undecodable"),
        ("garbage", "undecodable"),
        ("huge", "norm"),
        ("weight", "invalid weight"),
    ],
)
def test_each_fault_kind_is_dropped_with_its_reason(fault: str, reason: str) -> None:
    v = vecs(5)
    p = frames(v, "topk")
    w: list[float] = [10, 20, 30, 40, 50]
    bad = 2
    if fault == "corrupt":
        p[bad] = flip(p[bad])
    elif fault == "truncated":
        p[bad] = p[bad][:-3]
    elif fault == "nan":
        p[bad] = nan_frame()
    elif fault == "wrong_spec":
        other = UpdateSpec.from_shapes({"x": (SPEC.numel,)})
        p[bad] = frames([v[bad]], spec=other)[0]
    elif fault == "garbage":
        p[bad] = b"\x00" * 7
    elif fault == "huge":
        p[bad] = frames([v[bad] * 1e4])[0]
    elif fault == "weight":
        w[bad] = float("nan")
    kept, dec, dropped = screen_replies(p, w, SPEC, clients=[10, 11, 12, 13, 14])
    assert kept == [0, 1, 3, 4]
    assert len(dec) == 4
    assert [d["client"] for d in dropped] == [12]
    assert reason in dropped[0]["reason"]


def test_norm_bound_is_relative_to_the_median_and_can_be_disabled() -> None:
    v = vecs(5)
    v[1] = v[1] * 12  # 12x the others' norm (within a factor ~1.5 of each other)
    _, _, dropped = screen_replies(frames(v), [1] * 5, SPEC, norm_bound_factor=10)
    assert [d["client"] for d in dropped] == [1]
    for off in (0, None):
        kept, _, dropped = screen_replies(frames(v), [1] * 5, SPEC, norm_bound_factor=off)
        assert kept == [0, 1, 2, 3, 4] and dropped == []
    kept, _, _ = screen_replies(frames(v), [1] * 5, SPEC, norm_bound_factor=50)
    assert kept == [0, 1, 2, 3, 4]


def test_no_norm_bound_with_two_replies_or_zero_median() -> None:
    v = vecs(2)
    v[1] = v[1] * 1e3
    assert screen_replies(frames(v), [1, 1], SPEC)[0] == [0, 1]  # two replies cannot outvote each other
    z = [torch.zeros(SPEC.numel)] * 3 + [torch.ones(SPEC.numel)]
    assert screen_replies(frames(z), [1] * 4, SPEC)[0] == [0, 1, 2, 3]  # median 0: no bound


def test_merge_screens_keeps_only_replies_every_part_kept() -> None:
    a = screen_replies(frames(vecs(3)), [1, 1, 1], SPEC, clients=[5, 6, 7])
    p = frames(vecs(3, seed=1))
    p[0] = b"junk"
    b = screen_replies(p, [1, 1, 1], SPEC, clients=[5, 6, 7])
    kept, (pa, pb), dropped = merge_screens(3, [a, b], [5, 6, 7])
    assert kept == [1, 2] and len(pa) == len(pb) == 2
    assert [d["client"] for d in dropped] == [5]


# -- aggregate ---------------------------------------------------------------------------------------------
def test_mean_is_bit_identical_to_weighted_mean() -> None:
    v, w = vecs(5), [3, 1, 4, 1, 5]
    assert torch.equal(aggregate(v, w, "mean"), weighted_mean(v, w))


def test_median_and_trimmed_mean_match_numpy_and_resist_an_outlier() -> None:
    v = vecs(7)
    arr = torch.stack(v).double().numpy()
    np.testing.assert_allclose(
        aggregate(v, [1] * 7, "median").numpy(), np.median(arr, axis=0), rtol=0, atol=0
    )
    srt = np.sort(arr, axis=0)
    np.testing.assert_allclose(
        aggregate(v, [1] * 7, "trimmed_mean", 0.2).numpy(), srt[1:6].mean(axis=0), rtol=1e-12
    )
    even = v[:6]
    np.testing.assert_allclose(
        aggregate(even, [1] * 6, "median").numpy(), np.median(torch.stack(even).double().numpy(), axis=0)
    )
    poisoned = [*v[:6], torch.full((SPEC.numel,), 1e6)]
    for method in ("median", "trimmed_mean"):
        out = aggregate(poisoned, [1] * 7, method, 0.2)
        assert float(out.abs().max()) < 10  # one client out of 7 cannot drag it away
    assert float(aggregate(poisoned, [1] * 7, "mean").abs().max()) > 1e5


def test_aggregate_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        aggregate(vecs(2), [1, 1], "mode")
    with pytest.raises(ConfigError):
        aggregate([], [], "median")
    with pytest.raises(ConfigError):
        aggregate(vecs(2), [1, 1], "trimmed_mean", 0.5)


def test_fl_config_validates_the_new_keys() -> None:
    for bad in ({"aggregation": "max"}, {"trim_fraction": 0.5}, {"norm_bound_factor": 0.5}):
        with pytest.raises(ConfigError):
            FLConfig(**bad)
    assert FLConfig(norm_bound_factor=0).norm_bound_factor == 0


# -- in the loop (test-only fault hook: wraps client_step, never in production code) ----------------------
def make_config(**fl) -> RunConfig:
    fl = {"rounds": 3, "clients_per_round": N, "seed": 2, "server_lr": 1.0, "server_momentum": 0.0, **fl}
    return RunConfig(
        model=ModelConfig(name="toy", lora_r=4, head="train"),  # the head goes up every round (faulted)
        data=DataConfig(num_clients=N),
        train=LocalTrainConfig(lr=0.05, max_steps=3, batch_size=8, optimizer="adam", head_lr=None),
        fl=FLConfig(**fl),
        codec=CodecConfig("topk", {"density": 0.25}),
    )


def install_faults(monkeypatch, faults: dict[int, str]) -> None:
    """Make client ``c`` misbehave as ``faults[c]`` in every round: corrupt / nan / huge / truncated."""
    real = loop.client_step

    def step(wl, c, lora, head, cfg, ef, **kw):
        rep = real(wl, c, lora, head, cfg, ef, **kw)
        kind = faults.get(c)
        if kind == "corrupt":
            rep.lora_payload = flip(rep.lora_payload, 40)
        elif kind == "truncated":
            rep.lora_payload = rep.lora_payload[:-1]
        elif kind == "nan":
            rep.lora_payload = nan_frame(wl.lora_spec)
        elif kind == "huge":
            rep.lora_payload = get("identity").encode_with_spec(rep.raw_update * 1e4, wl.lora_spec)
        elif kind == "nan_head":
            rep.head_payload = nan_frame(wl.head_spec)
        return rep

    monkeypatch.setattr(loop, "client_step", step)


def rows_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def finite(state) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (*state["lora"].values(), *state["head"].values()))


def test_faulty_clients_are_dropped_logged_and_counted(tmp_path, monkeypatch, caplog) -> None:
    faults = {0: "corrupt", 1: "nan", 2: "huge", 3: "nan_head"}
    install_faults(monkeypatch, faults)
    with caplog.at_level("WARNING", logger="fedsqueeze.fl.loop"):
        run(make_config(), tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    for row in rows:
        assert row["num_dropped"] == 4 and row["aggregated"] is True
        reasons = {d["client"]: d["reason"] for d in row["dropped"]}
        assert sorted(reasons) == [0, 1, 2, 3]
        assert "undecodable" in reasons[0] and "NaN" in reasons[1] and "norm" in reasons[2]
        assert "NaN" in reasons[3]
        assert row["train_loss"] is not None and math.isfinite(row["mean_update_norm"])
    assert "dropped the reply of client 2" in caplog.text
    state = load_checkpoint(tmp_path)
    assert finite(state)


def test_dropped_clients_equal_a_round_without_them(tmp_path, monkeypatch) -> None:
    """One round, client 4 corrupt: the new model equals the round aggregated over the 5 others only."""
    install_faults(monkeypatch, {4: "corrupt"})
    run(make_config(rounds=1), tmp_path / "faulty", workload=ToyWorkload(N))
    got = load_checkpoint(tmp_path / "faulty")
    monkeypatch.undo()

    replies = {}  # the clean round's replies, as the server receives them
    real = loop.client_step

    def spy(wl, c, *args, **kw):
        rep = real(wl, c, *args, **kw)
        replies[c] = rep
        return rep

    monkeypatch.setattr(loop, "client_step", spy)
    run(make_config(rounds=1), tmp_path / "clean", workload=ToyWorkload(N))
    wl = ToyWorkload(N)
    lora0, _ = wl.initial_params()
    reps = [replies[c] for c in sorted(replies)]
    w = [r.num_examples for r in reps]
    kept, dec, _ = screen_replies([r.lora_payload for r in reps], w, wl.lora_spec)
    assert len(kept) == N
    (row,) = rows_of(tmp_path / "faulty")
    assert [d["client"] for d in row["dropped"]] == [4]
    i = row["clients"].index(4)
    ref = weighted_mean(dec[:i] + dec[i + 1 :], w[:i] + w[i + 1 :])
    expect = wl.lora_spec.flatten(lora0, torch.float64) - ref
    assert torch.equal(wl.lora_spec.flatten(got["lora"]), expect.to(torch.float32))


def test_too_few_valid_replies_leave_the_model_unchanged(tmp_path, monkeypatch) -> None:
    install_faults(monkeypatch, dict.fromkeys(range(N - 1), "corrupt"))  # only client 5 is valid
    run(make_config(rounds=2, min_replies=2), tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    assert all(r["aggregated"] is False and r["num_dropped"] == N - 1 for r in rows)
    assert all(r["rel_error"] is None for r in rows)
    state = load_checkpoint(tmp_path)
    lora0, head0 = ToyWorkload(N).initial_params()
    assert all(torch.equal(state["lora"][k], lora0[k]) for k in lora0)
    assert all(torch.equal(state["head"][k], head0[k]) for k in head0)


def test_all_replies_bad_without_min_replies_skips_the_round(tmp_path, monkeypatch) -> None:
    install_faults(monkeypatch, dict.fromkeys(range(N), "truncated"))
    run(make_config(rounds=1), tmp_path, workload=ToyWorkload(N))
    (row,) = rows_of(tmp_path)
    assert row["aggregated"] is False and row["train_loss"] is None and row["num_dropped"] == N


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_robust_aggregation_in_the_loop(tmp_path, monkeypatch, method: str) -> None:
    # norm bound off: the robust rule alone must absorb the scaled-up client
    install_faults(monkeypatch, {1: "huge"})
    cfg = make_config(rounds=3, aggregation=method, trim_fraction=0.2, norm_bound_factor=0)
    summary = run(cfg, tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    assert all(r["num_dropped"] == 0 for r in rows)
    state = load_checkpoint(tmp_path)
    assert finite(state)
    lora0, _ = ToyWorkload(N).initial_params()
    drift = max(float((state["lora"][k] - lora0[k]).abs().max()) for k in lora0)
    assert drift < 5.0  # a 1e4-scaled mean would move the adapter by orders of magnitude more
    assert summary["final_metric"] is not None


def test_payload_hashes_are_recorded(tmp_path) -> None:
    run(make_config(rounds=1), tmp_path, workload=ToyWorkload(N))
    (row,) = rows_of(tmp_path)
    assert len(row["lora_sha256"]) == len(row["clients"]) == len(row["head_sha256"])
    assert all(len(h) == 64 for h in row["lora_sha256"])


def test_toy_model_is_selectable_from_config() -> None:
    cfg = RunConfig.from_dict(
        {"model": {"name": "toy", "lora_r": 3}, "data": {"num_clients": 4}, "fl": {"clients_per_round": 2}}
    )
    wl = loop.build_workload(cfg)
    assert isinstance(wl, ToyWorkload) and wl.num_clients() == 4
    assert dict(wl.lora_spec.entries)["layer.lora_A"][0] == 3
