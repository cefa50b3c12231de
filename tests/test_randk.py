from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.codecs.baselines.randk import randk_indices
from fedsqueeze.wire.frame import HEADER_SIZE
from support.codec_cases import gaussian_update, refresh_crc, rel_error


def test_mask_comes_from_the_seed_and_values_are_exact() -> None:
    upd = gaussian_update({"a": (40, 25)}, 0)
    spec = UpdateSpec.from_tensors(upd)
    blob = get("randk", density=0.1).encode(upd, seed=123)
    assert len(blob) == HEADER_SIZE + 6 + 4 * 100  # no positions on the wire
    v = spec.flatten(fedsqueeze.decode(blob, spec))
    idx = randk_indices(1000, 100, 123)
    assert np.array_equal(np.flatnonzero(v.numpy()), idx)
    assert torch.equal(v[idx], spec.flatten(upd)[idx])
    other = spec.flatten(fedsqueeze.decode(get("randk", density=0.1).encode(upd, seed=124), spec))
    assert not np.array_equal(np.flatnonzero(other.numpy()), idx)


def test_biased_error_is_one_minus_density() -> None:
    upd = gaussian_update({"a": (1 << 16,)}, 1)
    blob = get("randk", density=0.05).encode(upd, seed=3)
    out = fedsqueeze.decode(blob, UpdateSpec.from_tensors(upd))
    assert rel_error(upd, out) == pytest.approx(0.95, abs=0.01)


def test_unbiased_scaling_and_expectation() -> None:
    upd = {"a": torch.linspace(-1.0, 1.0, 50)}
    spec = UpdateSpec.from_tensors(upd)
    biased = get("randk", density=0.2)
    unbiased = get("randk", density=0.2, unbiased=True)
    b = spec.flatten(fedsqueeze.decode(biased.encode(upd, seed=9), spec))
    ub = spec.flatten(fedsqueeze.decode(unbiased.encode(upd, seed=9), spec))
    assert torch.allclose(ub, b * 5.0)
    mean = torch.stack(
        [spec.flatten(fedsqueeze.decode(unbiased.encode(upd, seed=s), spec)) for s in range(600)]
    )
    # per-coordinate std of one draw is |u| * 2, so the mean of 600 has std <= 0.082
    assert float((mean.mean(0) - upd["a"]).abs().max()) < 0.35


def test_fp16_values_keep_range_for_huge_and_tiny() -> None:
    for scale in (1e-30, 1e30):
        upd = {"a": torch.randn(500, generator=torch.Generator().manual_seed(2)) * scale}
        spec = UpdateSpec.from_tensors(upd)
        v = spec.flatten(fedsqueeze.decode(get("randk", density=0.5, value_bits=16).encode(upd), spec))
        kept = v != 0
        rel = ((v - upd["a"])[kept].abs() / upd["a"][kept].abs().max()).max()
        assert float(rel) < 1e-3


@pytest.mark.parametrize(("rate", "vb"), [(0.5, 32), (0.25, 16), (3.0, 32)])
def test_rate_picks_the_largest_k(rate: float, vb: int) -> None:
    d = 10_000
    codec = get("randk", rate=rate, value_bits=vb)
    blob = codec.encode(gaussian_update({"a": (d,)}, 4), seed=0)
    assert len(blob) * 8 <= rate * d
    k = codec.choose_k(d)
    head = 48 + (32 if vb == 16 else 0)
    assert HEADER_SIZE * 8 + 8 * math.ceil((head + (k + 1) * vb) / 8) > rate * d


def test_infeasible_rate_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="rate"):
        get("randk", rate=1.0).encode(gaussian_update({"a": (50,)}))
    for opts in ({"value_bits": 8}, {"density": 0.0}, {"unbiased": 1}):
        with pytest.raises(ConfigError):
            get("randk", **opts)


@pytest.mark.parametrize(("offset", "value"), [(0, 0x7F), (3, 0xFF), (4, 8), (5, 2)])
def test_tampered_header_fields_are_rejected(offset: int, value: int) -> None:
    upd = gaussian_update({"a": (400,)}, 5)
    blob = bytearray(get("randk").encode(upd))
    blob[HEADER_SIZE + offset] = value
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))
