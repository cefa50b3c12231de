from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.codecs.baselines.topk import index_bits_for_all_k
from fedsqueeze.wire.frame import HEADER_SIZE
from fedsqueeze.wire.index_coding import index_bits
from support.codec_cases import gaussian_update, refresh_crc, rel_error


def _round_trip(upd: dict, seed: int = 0, **opts) -> tuple[bytes, dict]:
    blob = get("topk", **opts).encode(upd, seed=seed)
    return blob, fedsqueeze.decode(blob, UpdateSpec.from_tensors(upd))


def test_known_value_gaussian_2_percent_fp32() -> None:
    """i.i.d. Gaussian, d = 2^20, 2 % fp32, 20-bit indices: D = D(0.02) = 0.856 at 1.04 bpp."""
    upd = gaussian_update({"u": (2**20,)}, 0)
    blob, out = _round_trip(upd)
    assert rel_error(upd, out) == pytest.approx(0.856, abs=0.01)
    k = math.floor(0.02 * 2**20)
    assert len(blob) == HEADER_SIZE + math.ceil((48 + k * (20 + 32)) / 8)
    assert len(blob) * 8 / 2**20 == pytest.approx(1.04, abs=0.005)


def test_keeps_exactly_the_largest_magnitudes() -> None:
    upd = gaussian_update({"a": (30, 20), "b": (400,)}, 1)
    _, out = _round_trip(upd, density=0.1)
    spec = UpdateSpec.from_tensors(upd)
    u, v = spec.flatten(upd), spec.flatten(out)
    k = math.floor(0.1 * spec.numel)
    top = set(torch.topk(u.abs(), k).indices.tolist())
    assert set(torch.nonzero(v).flatten().tolist()) == top
    assert torch.equal(v[list(top)], u[list(top)])  # fp32 values are exact


@pytest.mark.parametrize("positions", ["fixed", "elias_fano"])
def test_density_one_is_lossless(positions: str) -> None:
    upd = gaussian_update({"a": (7, 9), "b": (5,)}, 2)
    _, out = _round_trip(upd, density=1.0, positions=positions)
    assert all(torch.equal(out[k], upd[k]) for k in upd)


@pytest.mark.parametrize("bits", [2, 4, 8, 15, 16])
def test_quantized_values_error_bound(bits: int) -> None:
    upd = gaussian_update({"a": (5000,)}, 3)
    _, out = _round_trip(upd, density=0.05, value_bits=bits)
    u, v = upd["a"].double(), out["a"].double()
    kept = v != 0
    scale = float(u[torch.topk(u.abs(), 250).indices].abs().max())
    # fp16: half an ulp of a value <= 1 times the scale; b bits: half a level step.
    tol = scale * 2**-11 if bits == 16 else scale / (2 * ((1 << (bits - 1)) - 1)) * 1.0001
    top = torch.topk(u.abs(), 250).indices
    assert float((u[top] - v[top]).abs().max()) <= tol
    assert int(kept.sum()) <= 250


def test_stochastic_rounding_is_seeded_and_unbiased() -> None:
    upd = {"a": torch.linspace(-1, 1, 101)}
    spec = UpdateSpec.from_tensors(upd)
    codec = get("topk", density=1.0, value_bits=3, rounding="stochastic")
    assert codec.encode(upd, seed=5) == codec.encode(upd, seed=5)
    assert codec.encode(upd, seed=5) != codec.encode(upd, seed=6)
    mean = torch.stack([spec.flatten(fedsqueeze.decode(codec.encode(upd, seed=s), spec)) for s in range(400)])
    assert float((mean.mean(0) - upd["a"]).abs().max()) < 0.06  # grid step 1/3, std of the mean < 0.012


def test_elias_fano_positions_are_cheaper_at_low_density() -> None:
    upd = gaussian_update({"a": (1 << 16,)}, 4)
    fixed, out_f = _round_trip(upd)
    ef, out_e = _round_trip(upd, positions="elias_fano")
    assert len(ef) < len(fixed)
    assert torch.equal(out_f["a"], out_e["a"])


@pytest.mark.parametrize(
    ("rate", "opts"),
    [(0.3, {}), (1.0, {"positions": "elias_fano"}), (0.12, {"value_bits": 4, "positions": "elias_fano"})],
)
def test_rate_picks_the_largest_k_that_fits(rate: float, opts: dict) -> None:
    d = 20_000
    upd = gaussian_update({"a": (d,)}, 5)
    codec = get("topk", rate=rate, **opts)
    blob = codec.encode(upd, seed=0)
    assert len(blob) * 8 <= rate * d
    k = codec.choose_k(d)
    vb = codec.value_bits
    nxt = 48 + (32 if vb != 32 else 0) + index_bits(codec.positions, d, k + 1) + (k + 1) * vb
    assert HEADER_SIZE * 8 + 8 * math.ceil(nxt / 8) > rate * d  # one more entry would not fit


def test_vectorized_index_sizes_match_the_coder() -> None:
    for d in [1, 2, 3, 8, 1000, 1024, 4097]:
        for coder in ("fixed", "elias_fano"):
            sizes = index_bits_for_all_k(coder, d, d)
            assert [int(s) for s in sizes] == [index_bits(coder, d, k) for k in range(d + 1)]


def test_infeasible_rate_is_a_config_error() -> None:
    upd = gaussian_update({"a": (100,)}, 6)
    with pytest.raises(ConfigError, match="rate"):
        get("topk", rate=0.5).encode(upd)


@pytest.mark.parametrize(
    "opts",
    [
        {"density": 0},
        {"density": 1.5},
        {"value_bits": 1},
        {"value_bits": 24},
        {"positions": "golomb"},
        {"rounding": "up"},
        {"rate": -1.0},
        {"rate": float("nan")},
    ],
)
def test_bad_options(opts: dict) -> None:
    with pytest.raises(ConfigError):
        get("topk", **opts)


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, 0xFF), (3, 0xFF), (4, 1), (4, 33), (4, 17), (5, 2), (5, 0xFF)],
)
def test_tampered_header_fields_are_rejected(offset: int, value: int) -> None:
    """k > d, invalid value_bits, unknown coder id: PayloadError even with a valid CRC."""
    upd = gaussian_update({"a": (300,)}, 7)
    blob = bytearray(get("topk").encode(upd))
    blob[HEADER_SIZE + offset] = value
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))


def test_non_finite_scale_is_rejected() -> None:
    upd = gaussian_update({"a": (300,)}, 8)
    blob = bytearray(get("topk", value_bits=8).encode(upd))
    blob[HEADER_SIZE + 6 : HEADER_SIZE + 10] = np.array([np.nan], dtype=">f4").tobytes()
    with pytest.raises(PayloadError, match="scale"):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))
