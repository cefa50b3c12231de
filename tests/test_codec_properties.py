"""Properties every registered codec must have (learned codecs that need decoder context are skipped)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsqueeze
from fedsqueeze import ConfigError, ErrorFeedback, PayloadError, SpecMismatchError, UpdateSpec
from fedsqueeze.codecs import codec_class, get
from fedsqueeze.wire.frame import HEADER_SIZE, parse_frame
from support.codec_cases import BASELINES, BLOCKWISE, gaussian_update, plain_codecs, refresh_crc, updates

CODECS = plain_codecs()
RATED = [n for n in CODECS if codec_class(n).rate_option is not None]
MINE = [n for n in (*BASELINES, *BLOCKWISE) if n in CODECS]


def _decode(blob: bytes, spec: UpdateSpec) -> dict[str, torch.Tensor]:
    return fedsqueeze.decode(blob, spec)


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=25, deadline=None)
@given(case=updates())
def test_round_trip_shape_dtype_finite_and_length(codec: str, case: tuple[dict, int]) -> None:
    upd, seed = case
    spec = UpdateSpec.from_tensors(upd)
    blob = get(codec).encode(upd, seed=seed)
    header, body = parse_frame(blob, spec)
    assert header.codec_id == codec_class(codec).codec_id and header.seed == seed
    assert len(blob) == HEADER_SIZE + header.body_length == HEADER_SIZE + len(body)
    assert len(body) <= codec_class(codec).max_body_bytes(spec)
    out = _decode(blob, spec)
    assert list(out) == list(upd)
    for name, t in out.items():
        assert t.shape == upd[name].shape and t.dtype == torch.float32
        assert bool(torch.isfinite(t).all())
    if all(bool((t == 0).all()) for t in upd.values()):
        assert all(bool((t == 0).all()) for t in out.values()), "a zero update must decode to zeros"


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=15, deadline=None)
@given(case=updates())
def test_same_seed_same_bytes(codec: str, case: tuple[dict, int]) -> None:
    upd, seed = case
    c = get(codec)
    # Fresh instances: stateful codecs (PowerSGD's warm start) must not leak state between clients.
    assert c.fresh().encode(upd, seed=seed) == c.fresh().encode(upd, seed=seed)


@settings(max_examples=30, deadline=None)
@given(case=updates())
def test_identity_is_exact(case: tuple[dict, int]) -> None:
    upd, seed = case
    out = _decode(get("identity").encode(upd, seed=seed), UpdateSpec.from_tensors(upd))
    assert all(torch.equal(out[k], upd[k]) for k in upd)


@pytest.mark.parametrize("codec", RATED)
@settings(max_examples=20, deadline=None)
@given(case=updates(), rate=st.sampled_from([0.05, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 20.0]))
def test_rate_budget_respected(codec: str, rate: float, case: tuple[dict, int]) -> None:
    upd, seed = case
    spec = UpdateSpec.from_tensors(upd)
    c = get(codec, **{codec_class(codec).rate_option: rate})
    try:
        blob = c.encode(upd, seed=seed)
    except ConfigError as exc:  # documented: infeasible rates are refused at encode time
        assert "rate" in str(exc)
        return
    assert len(blob) * 8 <= rate * spec.numel
    assert bool(torch.isfinite(spec.flatten(_decode(blob, spec))).all())


@pytest.mark.parametrize("codec", RATED)
def test_generous_rate_is_feasible(codec: str) -> None:
    spec = {"a": (64, 48), "b": (48, 64)}
    upd = gaussian_update(spec, 3)
    blob = get(codec, **{codec_class(codec).rate_option: 12.0}).encode(upd, seed=1)
    assert len(blob) * 8 <= 12.0 * UpdateSpec.from_tensors(upd).numel


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=10, deadline=None)
@given(case=updates(max_numel=600), data=st.data())
def test_corrupted_frames_are_rejected(codec: str, case: tuple[dict, int], data: st.DataObject) -> None:
    upd, seed = case
    spec = UpdateSpec.from_tensors(upd)
    blob = get(codec).encode(upd, seed=seed)
    with pytest.raises(PayloadError):
        _decode(blob[:-1], spec)  # truncated
    with pytest.raises(PayloadError):
        _decode(blob + b"\x00", spec)  # extended
    if len(blob) > HEADER_SIZE:
        with pytest.raises(PayloadError):  # self-consistent frame with an empty body
            _decode(refresh_crc(blob[:HEADER_SIZE]), spec)
        bit = data.draw(st.integers(0, 8 * (len(blob) - HEADER_SIZE) - 1))
        flipped = bytearray(blob)
        flipped[HEADER_SIZE + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(PayloadError, match="CRC"):
            _decode(bytes(flipped), spec)
    other = UpdateSpec.from_shapes({**{k: tuple(v.shape) for k, v in upd.items()}, "extra": (3,)})
    with pytest.raises(SpecMismatchError):
        _decode(blob, other)


def _tampered_decodes_or_rejects(blob: bytes, spec: UpdateSpec) -> None:
    try:
        out = _decode(blob, spec)
    except PayloadError:
        return
    assert list(out) == list(spec.names)
    assert all(
        bool(torch.isfinite(t).all()) and t.shape == s for t, s in zip(out.values(), spec.shapes, strict=True)
    )


@pytest.mark.parametrize("codec", MINE)
@settings(max_examples=40, deadline=None)
@given(
    case=updates(max_numel=800),
    pos=st.integers(0, 15),
    value=st.sampled_from([0, 1, 2, 7, 8, 15, 16, 31, 32, 33, 64, 127, 128, 200, 255]),
    tail=st.booleans(),
)
def test_tampered_body_header_with_valid_crc(
    codec: str, case: tuple[dict, int], pos: int, value: int, tail: bool
) -> None:
    """Header fields of the body rewritten and the CRC recomputed: decode correctly or raise PayloadError."""
    upd, seed = case
    spec = UpdateSpec.from_tensors(upd)
    blob = bytearray(get(codec).encode(upd, seed=seed))
    body_len = len(blob) - HEADER_SIZE
    if body_len == 0:
        return
    at = HEADER_SIZE + (body_len - 1 - pos % body_len if tail else pos % body_len)
    blob[at] = value
    _tampered_decodes_or_rejects(refresh_crc(bytes(blob)), spec)


@pytest.mark.parametrize("codec", CODECS)
def test_error_feedback_invariant_and_state_dict(codec: str) -> None:
    spec = UpdateSpec.from_shapes({"a": (24, 16), "b": (16, 24), "bias": (40,)})
    g = torch.Generator().manual_seed(11)
    ef = ErrorFeedback(get(codec))
    carried = torch.zeros(spec.numel, dtype=torch.float64)
    for r in range(4):
        u = {k: torch.randn(*s, generator=g) * 10.0 ** (r - 2) for k, s in spec.entries}
        p = spec.flatten(u, torch.float64) + carried
        blob = ef.encode(u, seed=r)
        dec = spec.flatten(_decode(blob, spec), torch.float64)
        assert ef.residual is not None
        assert torch.equal(dec + ef.residual, p), f"round {r}: û + e_new != u + e_old"
        carried = ef.residual.clone()
    clone = ErrorFeedback(get(codec))
    clone.load_state_dict(ef.state_dict())
    assert torch.equal(clone.residual, ef.residual) and clone.spec == spec
    u = {k: torch.randn(*s, generator=g) for k, s in spec.entries}
    assert clone.encode(u, seed=7) == ef.encode(u, seed=7)


def test_every_codec_has_a_unique_id_and_a_summary() -> None:
    ids = [codec_class(n).codec_id for n in CODECS]
    assert len(ids) == len(set(ids))
    for n in CODECS:
        cls = codec_class(n)
        assert cls.summary and dataclasses.is_dataclass(cls)
        assert np.isscalar(cls.codec_id)
