"""Fast encoder/decoder paths of issue #33: fed_cvlc's ``search="fast"``, qsgd's narrow fixed coding and the
narrow-width packer. Each is checked against the path it replaces (same plan cost bound, same bytes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze import ConfigError, PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.codecs.flm import _plan
from fedsqueeze.codecs.flm._packets import (
    _run_costs,
    decode_body,
    plan_packets,
    plan_packets_fast,
)
from fedsqueeze.wire import bitpack


def _n_of_b(b_min: int, b_max: int, s: int = 20) -> dict[int, int]:
    return {b: (8 * 1500 - 82) // (s + 1 + b) for b in range(b_min, b_max + 1)}


def _sorted_candidates(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    x = {
        "gauss": lambda: rng.standard_normal(n),
        "t2": lambda: rng.standard_t(2, n),
        "lognormal": lambda: rng.lognormal(0, 3, n),
        "ties": lambda: np.round(rng.standard_normal(n)),
        "zeros": lambda: np.where(rng.random(n) < 0.7, 0.0, rng.standard_normal(n)),
    }[kind]()
    return np.sort(np.abs(x))[::-1].astype(np.float64)[None, :].copy()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["gauss", "t2", "lognormal", "ties", "zeros"]),
    r=st.integers(1, 12),
    widths=st.sampled_from([(4, 10), (1, 15), (2, 8), (5, 5)]),
    frac=st.sampled_from([0.05, 0.5, 0.9, 1.0]),
)
def test_fast_plan_is_valid_and_bounded_by_the_dp(
    seed: int, kind: str, r: int, widths: tuple[int, int], frac: float
) -> None:
    rng = np.random.default_rng(seed)
    n_of_b = _n_of_b(*widths)
    kc = max(1, int(r * max(n_of_b.values()) * frac))
    a = _sorted_candidates(rng, kind, kc)
    ns, bs, err = plan_packets_fast(a, r, n_of_b)
    _, _, err_dp = plan_packets(a, r, n_of_b)
    used = ns[0] > 0
    n, b = ns[0][used], bs[0][used]
    assert used.sum() <= r and n.sum() <= kc
    assert all(int(m) == n_of_b[int(w)] for m, w in zip(n[:-1], b[:-1], strict=True))  # only the last is cut
    assert n[-1] <= n_of_b[int(b[-1])]
    if n[-1] < n_of_b[int(b[-1])]:
        assert n.sum() == kc  # a cut run ends at the last candidate
    x = a[0]
    sq = np.concatenate([[0.0], np.cumsum(x * x)])
    tail = sq[-1] - sq
    tol = 1e-12 * max(sq[-1], 1e-300)  # tail energies are differences of prefix sums
    assert abs(_run_costs(x, tail, n, b)[2] - err[0]) <= tol
    assert err[0] >= err_dp[0] - tol  # the DP is optimal
    for w, m in n_of_b.items():  # never worse than the best single-width plan
        assert err[0] <= _run_costs(x, tail, np.full(r, m), np.full(r, w))[2] + tol


def test_fast_plan_equals_the_dp_on_gaussian_tails() -> None:
    rng = np.random.default_rng(0)
    for r in (3, 20, 60):
        n_of_b = _n_of_b(4, 10)
        kc = r * max(n_of_b.values())
        a = np.sort(np.abs(rng.standard_normal(25 * kc)))[::-1][:kc].astype(np.float64)[None, :].copy()
        ns, bs, err = plan_packets_fast(a, r, n_of_b)
        ns_dp, bs_dp, err_dp = plan_packets(a, r, n_of_b)
        assert np.array_equal(ns[ns > 0], ns_dp[ns_dp > 0]) and np.array_equal(bs[ns > 0], bs_dp[ns_dp > 0])
        assert np.isclose(err[0], err_dp[0], rtol=1e-12)


@contextlib.contextmanager
def _heuristic_everywhere() -> Iterator[None]:
    """Force search="fast" onto its large-vector paths (sampled candidates, heuristic plan) at any size."""
    saved = _plan._EXACT_DP_MAX, _plan._EXACT_BELOW
    _plan._EXACT_DP_MAX, _plan._EXACT_BELOW = 0, 0
    try:
        yield
    finally:
        _plan._EXACT_DP_MAX, _plan._EXACT_BELOW = saved


def _flat(x: np.ndarray) -> tuple[torch.Tensor, UpdateSpec]:
    t = torch.from_numpy(x.astype(np.float32))
    spec = UpdateSpec.from_tensors({"w": t})
    return spec.flatten({"w": t}), spec


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(2, 30_000),
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([None, 0.5, 2.0, 6.0]),
    ties=st.booleans(),
)
def test_fed_cvlc_fast_round_trip(d: int, seed: int, rate: float | None, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * np.exp(rng.uniform(-3, 3, d))
    if ties:
        x = np.round(x)
    flat, spec = _flat(x)
    with _heuristic_everywhere():
        codec = get("fed_cvlc", rate=rate)
        try:
            body = codec.encode_flat(flat, spec, seed=seed % 1000)
        except ConfigError:
            return  # budget below the headers: refused as by search="exact"
    budget = codec.budget(d) if hasattr(codec, "budget") else None
    idx, vals = decode_body(body, d)
    out = codec.decode_flat(body, spec, seed=0)
    assert torch.isfinite(out).all()
    if budget is not None:
        assert 8 * (len(body) + 32) <= budget
    if idx.size:  # the kept entries are a top set of |u|
        mags = np.abs(flat.numpy())
        assert mags[idx].min() >= np.sort(mags)[::-1][idx.size - 1]
        assert np.all(np.sign(vals[vals != 0]) == np.sign(flat.numpy()[idx][vals != 0]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fed_cvlc_fast_frames_decode_or_reject_when_corrupted(seed: int) -> None:
    rng = np.random.default_rng(seed)
    flat, spec = _flat(rng.standard_normal(20_000))
    with _heuristic_everywhere():
        body = bytearray(get("fed_cvlc", rate=2.0).encode_flat(flat, spec, seed=1))
    for _ in range(int(rng.integers(1, 9))):
        pos = int(rng.integers(0, len(body)))
        body[pos] ^= 1 << int(rng.integers(0, 8))
    cut = len(body) if rng.random() < 0.7 else int(rng.integers(0, len(body) + 1))
    try:
        out = get("fed_cvlc").decode_flat(bytes(body[:cut]), spec, seed=0)
    except PayloadError:
        return
    assert out.shape == (spec.numel,) and torch.isfinite(out).all()


def test_fed_cvlc_fast_matches_exact_error_on_a_large_gaussian() -> None:
    # 2^19 values at 1 bit/param: 44 packets, so search="fast" takes the sampled candidates and the
    # heuristic plan; it finds the DP's plan, and only equal magnitudes may travel in another order.
    d = 1 << 19
    flat = torch.from_numpy(np.random.default_rng(5).standard_normal(d).astype(np.float32))
    spec = UpdateSpec.from_tensors({"w": flat})
    errs = {}
    for search in ("fast", "exact"):
        codec = get("fed_cvlc", rate=1.0, search=search)
        body = codec.encode_flat(flat, spec, seed=3)
        info: dict = {}
        idx, _ = decode_body(body, d, info=info)
        out = codec.decode_flat(body, spec, seed=0)
        errs[search] = (np.sort(idx), info["b"], info["n"], float(((out - flat).double() ** 2).sum()))
    assert np.array_equal(errs["fast"][0], errs["exact"][0])
    assert np.array_equal(errs["fast"][1], errs["exact"][1]) and np.array_equal(
        errs["fast"][2], errs["exact"][2]
    )
    assert errs["fast"][3] == pytest.approx(errs["exact"][3], rel=1e-6)


def test_fed_cvlc_search_option() -> None:
    assert get("fed_cvlc").search == "fast"
    with pytest.raises(ConfigError, match="search"):
        get("fed_cvlc", search="greedy")


@settings(max_examples=80, deadline=None)
@given(
    width=st.integers(1, 8),
    raw=st.lists(st.integers(0, 255), max_size=70),
    chunk=st.sampled_from([1, 3, 1 << 17]),
)
def test_narrow_pack_equals_the_bit_packer(width: int, raw: list[int], chunk: int) -> None:
    vals = np.array([v % (1 << width) for v in raw], dtype=np.uint64)
    generic = np.packbits(bitpack._to_bit_array(vals, width)).tobytes()
    saved = bitpack._GROUP_CHUNK
    bitpack._GROUP_CHUNK = chunk
    try:
        blob = bitpack.pack_uints(vals, width)
        back = bitpack.unpack_uints(blob, len(vals), width)
    finally:
        bitpack._GROUP_CHUNK = saved
    assert blob == generic
    assert np.array_equal(back, vals)
    if vals.size:
        with pytest.raises(PayloadError):
            bitpack.unpack_uints(blob[:-1], len(vals), width)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([1, 3, 8, 127]),
    bucket=st.sampled_from([1, 7, 128]),
)
def test_qsgd_narrow_decoder_on_corrupted_bodies(seed: int, levels: int, bucket: int) -> None:
    rng = np.random.default_rng(seed)
    flat, spec = _flat(rng.standard_normal(1001))
    codec = get("qsgd", levels=levels, bucket=bucket)
    body = bytearray(codec.encode_flat(flat, spec, seed=2))
    out = codec.decode_flat(bytes(body), spec, seed=0)
    assert torch.isfinite(out).all()
    head = 8 + 4 * -(-1001 // bucket)
    for _ in range(int(rng.integers(1, 5))):  # flip bits among the codes (lengths stay right)
        pos = head + int(rng.integers(0, len(body) - head))
        body[pos] ^= 1 << int(rng.integers(0, 8))
    try:
        out = codec.decode_flat(bytes(body), spec, seed=0)
    except PayloadError:
        return
    assert out.shape == (1001,) and torch.isfinite(out).all()


def test_qsgd_narrow_decoder_rejects_padding_bits() -> None:
    flat, spec = _flat(np.random.default_rng(0).standard_normal(1001))  # 1001 * 5 bits: 3 padding bits
    body = bytearray(get("qsgd").encode_flat(flat, spec, seed=0))
    body[-1] |= 1
    with pytest.raises(PayloadError, match="padding"):
        get("qsgd").decode_flat(bytes(body), spec, seed=0)
