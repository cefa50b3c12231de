"""The server's streaming round (:func:`fedsqueeze.fl.robust.screen_and_aggregate`).

Pinned against a frozen copy of the decode-everything-first path it replaced (``screen_replies`` on each
part, ``merge_screens``, then ``weighted_mean`` in float64 in client order): the same kept replies, the same
dropped records and bit-identical aggregates, for several K, with and without faulty replies, on one or
several decode threads. Also: the server holds O(d) (never more than one decoded reply per thread), and the
O(K·d) rules refuse above the memory budget.
"""

from __future__ import annotations

import math
import statistics
import weakref

import numpy as np
import pytest
import torch

import fedsqueeze.fl.robust as robust
from fedsqueeze.aggregation import WeightedSum, aggregate, aggregation_memory_bytes, check_memory
from fedsqueeze.codecs import decode_flat, get
from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.errors import ConfigError, FedsqueezeError
from fedsqueeze.fl.federation import Federation
from fedsqueeze.fl.robust import ReplyPart, screen_and_aggregate
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.spec import UpdateSpec
from fedsqueeze.wire.frame import pack_frame

LORA = UpdateSpec.from_shapes({"a": (16, 24), "b": (24, 16)})
HEAD = UpdateSpec.from_shapes({"h": (7,)})


# -- the path it replaced, frozen (fl/server.py weighted_mean and fl/robust.py screen_replies before it) ----
def old_weighted_mean(vectors, weights):
    total = float(sum(weights))
    acc = torch.zeros(vectors[0].numel(), dtype=torch.float64)
    for v, w in zip(vectors, weights, strict=True):
        acc += (float(w) / total) * v.to(torch.float64)
    return acc


def old_screen(payloads, weights, spec, *, norm_bound_factor=10.0, clients=None):
    ids = list(range(len(payloads))) if clients is None else list(clients)
    dropped, ok = [], []
    for i, (blob, w) in enumerate(zip(payloads, weights, strict=True)):
        if not (isinstance(w, int | float) and math.isfinite(float(w)) and float(w) > 0):
            dropped.append({"client": ids[i], "reason": f"invalid weight {w!r}"})
            continue
        if spec.numel == 0:
            if len(blob):
                dropped.append({"client": ids[i], "reason": f"{len(blob)} bytes where nothing is expected"})
                continue
            ok.append((i, torch.zeros(0), 0.0))
            continue
        try:
            flat = decode_flat(blob, spec)
        except FedsqueezeError as exc:
            dropped.append({"client": ids[i], "reason": f"undecodable: {exc}"})
            continue
        norm = float(flat.to(torch.float64).norm())
        if not math.isfinite(norm):
            dropped.append({"client": ids[i], "reason": "non-finite values"})
            continue
        ok.append((i, flat, norm))
    if norm_bound_factor and len(ok) >= 3:
        median = statistics.median(n for _, _, n in ok)
        bound = float(norm_bound_factor) * median
        if median > 0:
            for i, _, n in ok:
                if n > bound:
                    reason = f"norm {n:.4g} > {norm_bound_factor:g} x median {median:.4g}"
                    dropped.append({"client": ids[i], "reason": reason})
            ok = [item for item in ok if item[2] <= bound]
    order = {c: k for k, c in enumerate(ids)}
    dropped.sort(key=lambda d: order.get(d["client"], 0))
    return [i for i, _, _ in ok], [f for _, f, _ in ok], dropped


def old_round(parts, weights, *, method="mean", norm_bound_factor=10.0, clients=None, trim_fraction=0.1):
    screens = [
        old_screen(p, weights, s, norm_bound_factor=norm_bound_factor, clients=clients) for p, s in parts
    ]
    kept, vecs, dropped = robust.merge_screens(len(weights), screens, clients)
    if not kept:
        return kept, None, dropped
    kw = [weights[i] for i in kept]
    if method == "mean":
        return kept, [old_weighted_mean(v, kw) for v in vecs], dropped
    return kept, [aggregate(v, kw, method, trim_fraction) for v in vecs], dropped


# -- replies ------------------------------------------------------------------------------------------------
def make_replies(k: int, seed: int, codec: str = "identity", faults: dict[int, str] | None = None):
    """``k`` replies (LoRA + head frames) from random updates of random scales, with optional faults."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    lora, head, weights = [], [], []
    for i in range(k):
        scale = float(rng.uniform(0.2, 3.0))
        u = torch.randn(LORA.numel, generator=g) * scale
        h = torch.randn(HEAD.numel, generator=g) * scale
        lora.append(get(codec).encode_with_spec(u, LORA, seed=i))
        head.append(get("identity").encode_with_spec(h, HEAD, seed=i))
        weights.append(int(rng.integers(1, 500)) if i % 3 else float(rng.uniform(0.5, 40.0)))
    for i, kind in (faults or {}).items():
        if kind == "corrupt":
            b = bytearray(lora[i])
            b[-1] ^= 0x10
            lora[i] = bytes(b)
        elif kind == "nan_head":
            head[i] = pack_frame(1, HEAD, 0, np.full(HEAD.numel, np.nan, dtype="<f4").tobytes())
        elif kind == "huge":
            lora[i] = get("identity").encode_with_spec(torch.full((LORA.numel,), 1e4), LORA, seed=i)
        elif kind == "weight":
            weights[i] = 0
        elif kind == "empty":
            lora[i] = b""
    return lora, head, weights


def assert_same(new, old) -> None:
    kept, means, dropped = old
    assert new.kept == kept
    assert new.dropped == dropped
    if means is None:
        assert new.means is None
        return
    assert new.means is not None and len(new.means) == len(means)
    for a, b in zip(new.means, means, strict=True):
        assert a.dtype == b.dtype == torch.float64
        assert torch.equal(a, b)  # bit for bit


@pytest.mark.parametrize("k", [1, 2, 3, 7, 20, 64])
@pytest.mark.parametrize("codec", ["identity", "wf_ecq", "topk"])
def test_clean_rounds_are_bit_identical_to_decoding_everything_first(k: int, codec: str) -> None:
    lora, head, w = make_replies(k, seed=k, codec=codec)
    clients = [100 + 3 * i for i in range(k)]
    new = screen_and_aggregate([ReplyPart(lora, LORA), ReplyPart(head, HEAD)], w, clients=clients)
    assert_same(new, old_round([(lora, LORA), (head, HEAD)], w, clients=clients))
    assert new.passes == 1  # nothing dropped: the one optimistic pass is final


FAULTS = [
    {0: "corrupt"},
    {2: "huge"},
    {1: "nan_head", 4: "weight"},
    {0: "corrupt", 3: "huge", 5: "nan_head", 6: "weight", 7: "empty"},
    {9: "huge"},  # the last reply: the optimistic sum is complete before the norm bound drops it
]


@pytest.mark.parametrize("faults", FAULTS)
@pytest.mark.parametrize("k", [10, 33])
def test_rounds_with_dropped_replies_are_bit_identical(k: int, faults: dict[int, str]) -> None:
    lora, head, w = make_replies(k, seed=7 * k, faults=faults)
    new = screen_and_aggregate([ReplyPart(lora, LORA), ReplyPart(head, HEAD)], w)
    assert_same(new, old_round([(lora, LORA), (head, HEAD)], w))
    assert len(new.dropped) == len(faults)
    only_weight = all(kind == "weight" for kind in faults.values())
    assert new.passes == (1 if only_weight else 2)  # a reply lost after decoding: decoded again


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_parallel_decoding_gives_the_same_bits(workers: int) -> None:
    lora, head, w = make_replies(25, seed=3, codec="wf_ecq", faults={4: "huge", 11: "corrupt"})
    parts = [ReplyPart(lora, LORA), ReplyPart(head, HEAD)]
    one = screen_and_aggregate(parts, w)
    many = screen_and_aggregate(parts, w, workers=workers)
    assert one.kept == many.kept and one.dropped == many.dropped and one.norms == many.norms
    assert one.means is not None and many.means is not None
    assert all(torch.equal(a, b) for a, b in zip(one.means, many.means, strict=True))
    clean = make_replies(25, seed=4, codec="wf_ecq")
    a = screen_and_aggregate([ReplyPart(clean[0], LORA)], clean[2], workers=1)
    b = screen_and_aggregate([ReplyPart(clean[0], LORA)], clean[2], workers=workers)
    assert a.means is not None and b.means is not None and torch.equal(a.means[0], b.means[0])


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_robust_rules_match_the_old_path(method: str) -> None:
    lora, head, w = make_replies(9, seed=5, faults={2: "corrupt", 6: "huge"})
    new = screen_and_aggregate(
        [ReplyPart(lora, LORA), ReplyPart(head, HEAD)], w, method=method, trim_fraction=0.2
    )
    assert_same(new, old_round([(lora, LORA), (head, HEAD)], w, method=method, trim_fraction=0.2))


def test_too_few_kept_replies_aggregate_nothing() -> None:
    lora, head, w = make_replies(4, seed=1, faults={0: "corrupt", 1: "corrupt", 2: "corrupt"})
    res = screen_and_aggregate([ReplyPart(lora, LORA), ReplyPart(head, HEAD)], w, min_replies=2)
    assert res.kept == [3] and res.means is None and len(res.dropped) == 3
    assert screen_and_aggregate([ReplyPart(lora, LORA)], w).means is not None  # min_replies 1


def test_the_screen_keeps_norms_only() -> None:
    lora, head, w = make_replies(6, seed=2, faults={1: "corrupt"})
    res = screen_and_aggregate([ReplyPart(lora, LORA), ReplyPart(head, HEAD)], w)
    assert res.norms[0][1] is None
    for i in (0, 2, 3, 4, 5):
        assert res.norms[0][i] == float(decode_flat(lora[i], LORA).to(torch.float64).norm())


@pytest.mark.parametrize("workers", [1, 2])
def test_the_server_holds_o_of_d_not_k_decoded_updates(monkeypatch, workers: int) -> None:
    """Every decoded vector is counted while alive: never more than one per decode thread (+1 in hand)."""
    k = 40
    lora, _, w = make_replies(k, seed=9, faults={5: "huge"})  # a drop: two passes
    alive: list[weakref.ref] = []
    most = 0
    real = robust.decode_flat

    def counting(blob, spec, **kw):
        nonlocal most
        out = real(blob, spec, **kw)
        alive.append(weakref.ref(out))
        most = max(most, sum(r() is not None for r in alive))
        return out

    monkeypatch.setattr(robust, "decode_flat", counting)
    res = screen_and_aggregate([ReplyPart(lora, LORA)], w, workers=workers)
    assert res.passes == 2 and len(alive) == k + (k - 1)
    assert most <= (1 if workers == 1 else workers + 1), most
    monkeypatch.undo()
    assert_same(res, old_round([(lora, LORA)], w))


def test_weighted_sum_is_weighted_mean_one_vector_at_a_time() -> None:
    g = torch.Generator().manual_seed(0)
    vecs = [torch.randn(1000, generator=g) * (i + 1) for i in range(13)]
    w = [3, 1.5, 7, 2, 9, 1, 1, 4, 0.25, 6, 5, 8, 2]
    acc = WeightedSum(1000, float(sum(w)))
    for v, x in zip(vecs, w, strict=True):
        acc.add(v, x)
    assert torch.equal(acc.sum, old_weighted_mean(vecs, w))
    assert torch.equal(robust.aggregate(vecs, w, "mean"), old_weighted_mean(vecs, w))
    with pytest.raises(ConfigError):
        WeightedSum(3, 0.0)


@pytest.mark.parametrize("d", [1, 31, 1_000_003])
def test_weighted_sum_is_bit_identical_at_any_length(d: int) -> None:
    """The in-place copy / multiply / add equals the old expression on every vector-width tail."""
    g = torch.Generator().manual_seed(d)
    vecs = [torch.randn(d, generator=g) * 10 ** float(torch.rand(1, generator=g) * 6 - 3) for _ in range(5)]
    w = [17, 0.3, 1e-3, 2**40, 7.77]
    assert torch.equal(robust.aggregate(vecs, w, "mean"), old_weighted_mean(vecs, w))


# -- the memory budget of the O(K·d) rules ------------------------------------------------------------------
def test_robust_rules_refuse_above_the_budget_before_decoding(monkeypatch) -> None:
    monkeypatch.setattr(robust, "decode_flat", lambda *a, **k: pytest.fail("decoded before the check"))
    part = ReplyPart([b"x"] * 1000, UpdateSpec.from_shapes({"w": (1 << 20,)}))
    for method in ("median", "trimmed_mean"):
        with pytest.raises(ConfigError, match="aggregation_memory_mb") as err:
            screen_and_aggregate([part], [1] * 1000, method=method, memory_mb=8192)
        assert "\n" not in str(err.value) and "O(K·d)" in str(err.value)
    assert aggregation_memory_bytes("median", 1000, 1 << 20) == 28 * 1000 * (1 << 20)
    assert aggregation_memory_bytes("mean", 1000, 1 << 20) == aggregation_memory_bytes("mean", 1, 1 << 20)
    check_memory("mean", 10**6, 10**9, 1)  # mean streams: never refused
    check_memory("median", 1000, 1 << 20, None)  # no budget
    check_memory("median", 10, 1000, 8192)
    with pytest.raises(ConfigError, match="aggregation_memory_mb"):
        aggregate([torch.zeros(1000)] * 50, [1] * 50, "median", memory_mb=1)


def _config(**fl) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="toy", lora_r=4),
        data=DataConfig(num_clients=6),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8),
        fl=FLConfig(**{"rounds": 1, "clients_per_round": 6, **fl}),
        codec=CodecConfig("topk", {"density": 0.25}),
    )


def test_the_federation_refuses_a_robust_rule_above_the_budget_at_start() -> None:
    with pytest.raises(ConfigError, match="fl.aggregation_memory_mb"):
        Federation(_config(aggregation="median", aggregation_memory_mb=1e-4), ToyWorkload(6))
    Federation(_config(aggregation="mean", aggregation_memory_mb=1e-4), ToyWorkload(6))
    with pytest.raises(ConfigError):
        FLConfig(aggregation_memory_mb=0)
    with pytest.raises(ConfigError):
        FLConfig(decode_workers=0)


def test_decode_workers_do_not_change_a_run(tmp_path) -> None:
    from fedsqueeze.fl import run
    from fedsqueeze.fl.checkpoint import load_checkpoint

    run(_config(rounds=2), tmp_path / "one", workload=ToyWorkload(6))
    run(_config(rounds=2, decode_workers=3), tmp_path / "three", workload=ToyWorkload(6))
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "three")
    assert all(torch.equal(a["lora"][n], b["lora"][n]) for n in a["lora"])
    assert all(torch.equal(a["head"][n], b["head"][n]) for n in a["head"])
