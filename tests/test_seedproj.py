from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateSpec, UsageError
from fedsqueeze.codecs import get
from fedsqueeze.codecs.baselines.seedproj import fwht, seedproj_dim, seedproj_directions
from fedsqueeze.wire.frame import HEADER_SIZE
from support.codec_cases import gaussian_update, refresh_crc, updates


def _hadamard(n: int) -> np.ndarray:
    try:
        from scipy.linalg import hadamard
    except ImportError:  # Sylvester's construction by Kronecker products
        h = np.ones((1, 1))
        while h.shape[0] < n:
            h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
        return h
    return hadamard(n).astype(np.float64)


def _flat(codec, upd: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    spec = UpdateSpec.from_tensors(upd)
    return spec.flatten(fedsqueeze.decode(codec.encode(upd, seed=seed), spec), torch.float64)


def _with_seed(blob: bytes, seed: int) -> bytes:
    """The frame with another header seed (the CRC covers the body only)."""
    return blob[:16] + struct.pack(">Q", seed) + blob[24:]


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64])
def test_fwht_is_the_hadamard_product_and_its_own_inverse_up_to_n(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n)
    h = _hadamard(n)
    assert np.allclose(fwht(x), h @ x, rtol=0, atol=1e-12 * n)
    assert np.allclose(fwht(fwht(x)) / n, x, rtol=0, atol=1e-12)
    assert np.array_equal(fwht(np.eye(n)[0]), np.ones(n))  # the first column of H
    assert not np.shares_memory(fwht(x), x)  # the input is not touched


def test_fwht_refuses_a_length_that_is_not_a_power_of_two() -> None:
    with pytest.raises(UsageError, match="power-of-two"):
        fwht(np.zeros(12))


def test_dim_and_directions() -> None:
    assert [seedproj_dim(d) for d in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025)] == [
        1,
        1,
        2,
        4,
        4,
        8,
        1024,
        1024,
        2048,
    ]
    signs, rows = seedproj_directions(1024, 100, 7)
    assert set(np.unique(signs)) == {-1.0, 1.0} and signs.shape == (1024,)
    assert rows.size == 100 and np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < 1024
    s2, r2 = seedproj_directions(1024, 100, 7)
    assert np.array_equal(signs, s2) and np.array_equal(rows, r2)
    s3, r3 = seedproj_directions(1024, 100, 8)
    assert not np.array_equal(signs, s3) and not np.array_equal(rows, r3)
    assert np.array_equal(seedproj_directions(8, 8, 1)[1], np.arange(8))
    assert seedproj_directions(8, 0, 1)[1].size == 0


@pytest.mark.parametrize("shape", [(1,), (3,), (64,), (40, 25), (7, 9, 5)])
def test_density_one_fp32_is_exact(shape: tuple[int, ...]) -> None:
    upd = gaussian_update({"a": shape}, 0)
    x = UpdateSpec.from_tensors(upd).flatten(upd, torch.float64)
    out = _flat(get("seedproj", density=1.0, value_bits=32), upd, 5)
    assert float((out - x).abs().max()) <= 1e-6 * float(x.abs().max())


def test_the_decoder_recomputes_the_directions_from_the_seed() -> None:
    upd = gaussian_update({"a": (40, 25)}, 1)
    spec = UpdateSpec.from_tensors(upd)
    x = spec.flatten(upd, torch.float64).numpy()
    codec = get("seedproj", density=0.1, value_bits=32)
    blob = codec.encode(upd, seed=123)
    n, k = 1024, 102
    assert len(blob) == HEADER_SIZE + 6 + 4 * k  # no positions or directions on the wire
    signs, rows = seedproj_directions(n, k, 123)
    coef = (fwht(signs * np.pad(x, (0, n - x.size))) / math.sqrt(n))[rows]
    sent = np.frombuffer(blob[HEADER_SIZE + 6 :], dtype=">f4").astype(np.float64)
    assert np.array_equal(sent, coef.astype(np.float32))
    z = np.zeros(n)
    z[rows] = sent
    want = (signs * fwht(z) / math.sqrt(n))[: x.size]
    out = spec.flatten(fedsqueeze.decode(blob, spec), torch.float64).numpy()
    assert np.allclose(out, want, rtol=0, atol=1e-6 * np.abs(want).max())
    # the same body read under another header seed is another reconstruction; another seed another frame
    other = spec.flatten(fedsqueeze.decode(_with_seed(blob, 124), spec), torch.float64).numpy()
    assert np.abs(other - out).max() > 0.1 * np.abs(out).max()
    assert codec.encode(upd, seed=124)[HEADER_SIZE:] != blob[HEADER_SIZE:]


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("shape", [(64, 64), (60, 50)])
def test_the_biased_reconstruction_is_an_orthogonal_projection(
    density: float, shape: tuple[int, ...]
) -> None:
    """With d = n, x_hat is the orthogonal projection of x. With d < n it is the first d entries of the
    projection p of the padded x: x_hat . (x - x_hat) = ||p[d:]||^2 >= 0, so the error is at most the
    projection's, ||x - x_hat||^2 <= ||x||^2 - ||x_hat||^2."""
    upd = gaussian_update({"a": shape}, 2)
    x = UpdateSpec.from_tensors(upd).flatten(upd, torch.float64)
    d = x.numel()
    n = seedproj_dim(d)
    for seed in range(3):
        xh = _flat(get("seedproj", density=density, value_bits=32), upd, seed)
        nx2 = float(x @ x)
        assert float(xh @ xh) <= nx2 * (1 + 1e-6)
        cross = float(xh @ (x - xh))
        if d == n:
            assert abs(cross) <= 1e-6 * nx2
        else:
            assert cross >= -1e-6 * nx2
            assert float((x - xh) @ (x - xh)) <= nx2 - float(xh @ xh) + 1e-6 * nx2
            # and the cross term is the projection's energy that fell into the padding
            signs, rows = seedproj_directions(n, math.floor(density * n), seed)
            q = fwht(signs * np.pad(x.numpy(), (0, n - d))) / math.sqrt(n)
            z = np.zeros(n)
            z[rows] = q[rows].astype(np.float32)
            p = signs * fwht(z) / math.sqrt(n)
            assert cross == pytest.approx(float(p[d:] @ p[d:]), rel=1e-4, abs=1e-6 * nx2)


def test_captured_energy_is_k_over_n() -> None:
    upd = gaussian_update({"a": (1 << 16,)}, 3)
    x = UpdateSpec.from_tensors(upd).flatten(upd, torch.float64)
    for density in (0.02, 0.1, 0.3):
        k = math.floor(density * (1 << 16))
        xh = _flat(get("seedproj", density=density), upd, 4)  # 8-bit values (the default)
        captured = float(xh @ xh) / float(x @ x)
        # the coefficients of a Gaussian vector are i.i.d. Gaussian: k of n squares, rel. std sqrt(2/k)
        assert captured == pytest.approx(k / (1 << 16), rel=5 * math.sqrt(2 / k))
        # the error is what the projection leaves out: 1 - k/n
        err = float((x - xh) @ (x - xh)) / float(x @ x)
        assert err == pytest.approx(1 - k / (1 << 16), abs=0.02)


def test_unbiased_scaling_and_expectation() -> None:
    upd = {"a": torch.linspace(-1.0, 1.0, 50)}  # d = 50, n = 64
    spec = UpdateSpec.from_tensors(upd)
    biased = get("seedproj", density=0.2, value_bits=32)
    unbiased = get("seedproj", density=0.2, value_bits=32, unbiased=True)
    k = 12
    assert biased.choose_k(50) == k
    b = _flat(biased, upd, 9)
    ub = _flat(unbiased, upd, 9)
    assert torch.allclose(ub, b * (64 / k), rtol=1e-5, atol=1e-6)
    draws = torch.stack([_flat(unbiased, upd, s) for s in range(800)])
    x = spec.flatten(upd, torch.float64)
    # one draw's per-coordinate std is about ||x|| / sqrt(k) = 1.2, so the mean of 800 has std about 0.04
    assert float((draws.mean(0) - x).abs().max()) < 0.25
    # the biased mean is k/n of x (shrunk), not x
    bmean = torch.stack([_flat(biased, upd, s) for s in range(200)]).mean(0)
    assert float((bmean - x * k / 64).abs().max()) < 0.1


@pytest.mark.parametrize(("rate", "vb"), [(0.5, 8), (0.25, 16), (3.0, 32), (0.1, 4), (0.05, 2)])
def test_rate_picks_the_largest_k(rate: float, vb: int) -> None:
    d = 10_000
    codec = get("seedproj", rate=rate, value_bits=vb)
    blob = codec.encode(gaussian_update({"a": (d,)}, 4), seed=0)
    assert len(blob) * 8 <= rate * d
    k = codec.choose_k(d)
    assert 0 < k < seedproj_dim(d)
    head = 48 + (0 if vb == 32 else 32)
    assert len(blob) == HEADER_SIZE + math.ceil((head + k * vb) / 8)
    assert HEADER_SIZE * 8 + 8 * math.ceil((head + (k + 1) * vb) / 8) > rate * d


def test_a_rate_that_buys_every_direction_stops_at_n() -> None:
    d = 100  # n = 128: 128 fp16 coefficients take 2384 bits with the header, 23.84 bits/param
    upd = gaussian_update({"a": (d,)}, 5)
    x = UpdateSpec.from_tensors(upd).flatten(upd, torch.float64)
    frames = set()
    for rate in (24.0, 30.0, 34.0):
        codec = get("seedproj", rate=rate, value_bits=16)
        assert codec.choose_k(d) == 128
        frames.add(codec.encode(upd, seed=0))
    assert len(frames) == 1 and len(frames.pop()) * 8 == 2384
    out = _flat(get("seedproj", rate=30.0, value_bits=16), upd, 0)
    assert float((out - x).norm() / x.norm()) < 1e-3
    assert get("seedproj", rate=23.8, value_bits=16).choose_k(d) == 127  # 2368 bits fit, 2384 do not


def test_infeasible_rate_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="rate"):
        get("seedproj", rate=1.0).encode(gaussian_update({"a": (50,)}))
    for opts, word in (
        ({"value_bits": 12}, "value_bits"),
        ({"value_bits": 0}, "value_bits"),
        ({"value_bits": True}, "value_bits"),
        ({"value_bits": 8.0}, "value_bits"),
        ({"unbiased": 1}, "unbiased"),
        ({"unbiased": "yes"}, "unbiased"),
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"rate": -1.0}, "rate"),
        ({"rate": 1.0, "density": 0.1}, "density or rate"),
    ):
        with pytest.raises(ConfigError, match=word) as exc:
            get("seedproj", **opts)
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("offset", "value"), [(0, 0x7F), (3, 0xFF), (4, 12), (4, 0), (4, 64), (5, 2), (6, 0xFF), (6, 0x80)]
)
def test_tampered_header_fields_are_rejected(offset: int, value: int) -> None:
    upd = gaussian_update({"a": (400,)}, 5)
    blob = bytearray(get("seedproj", density=0.05).encode(upd))  # 8-bit values: the scale sits at 6..9
    blob[HEADER_SIZE + offset] = value
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))


def test_a_zero_update_decodes_to_zeros_and_huge_values_stay_finite() -> None:
    spec = UpdateSpec.from_shapes({"a": (300,)})
    for vb in (32, 16, 8, 2):
        out = _flat(get("seedproj", value_bits=vb), {"a": torch.zeros(300)}, 1)
        assert bool((out == 0).all())
        huge = {"a": torch.full((300,), 3.0e38)}  # coefficients beyond the float32 range saturate
        blob = get("seedproj", density=1.0, value_bits=vb).encode(huge, seed=2)
        assert bool(torch.isfinite(spec.flatten(fedsqueeze.decode(blob, spec))).all())


@settings(max_examples=40, deadline=None)
@given(
    case=updates(),
    rate=st.sampled_from([0.05, 0.25, 1.0, 4.0, 20.0]),
    vb=st.sampled_from([32, 16, 8, 4, 2]),
    unbiased=st.booleans(),
)
def test_property_finite_and_within_the_rate(
    case: tuple[dict[str, torch.Tensor], int], rate: float, vb: int, unbiased: bool
) -> None:
    upd, seed = case
    spec = UpdateSpec.from_tensors(upd)
    codec = get("seedproj", rate=rate, value_bits=vb, unbiased=unbiased)
    try:
        blob = codec.encode(upd, seed=seed)
    except ConfigError as exc:  # a budget below the smallest frame is refused, with the rate named
        assert "rate" in str(exc)
        assert math.floor(rate * spec.numel) < HEADER_SIZE * 8 + 48 + (0 if vb == 32 else 32)
        return
    assert len(blob) * 8 <= rate * spec.numel
    assert len(blob) - HEADER_SIZE <= type(codec).max_body_bytes(spec)
    out = spec.flatten(fedsqueeze.decode(blob, spec))
    assert bool(torch.isfinite(out).all())
