from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.wire.frame import HEADER_SIZE
from support.codec_cases import gaussian_update, refresh_crc, rel_error


def _dec(blob: bytes, upd: dict) -> torch.Tensor:
    spec = UpdateSpec.from_tensors(upd)
    return spec.flatten(fedsqueeze.decode(blob, spec))


def test_fixed_size_and_grid() -> None:
    upd = gaussian_update({"a": (1000,)}, 0)
    blob = get("qsgd", bucket=100, levels=5).encode(upd, seed=1)
    nb, width = 10, 3
    assert len(blob) == HEADER_SIZE + math.ceil((64 + 32 * nb + 1000 * (1 + width)) / 8)
    v, u = _dec(blob, upd).double(), upd["a"].double()
    norms = u.abs().reshape(10, 100).max(1).values.float().double().repeat_interleave(100)
    levels = v.abs() / norms * 5
    assert torch.allclose(levels, levels.round(), atol=1e-4) and float(levels.max()) <= 5 + 1e-6
    assert bool(((v == 0) | (torch.sign(v) == torch.sign(u))).all())


@pytest.mark.parametrize("norm", ["max", "l2"])
def test_elias_decodes_identically_and_is_smaller_for_l2(norm: str) -> None:
    upd = gaussian_update({"a": (40, 50), "b": (333,)}, 1)
    fixed = get("qsgd", norm=norm, bucket=256).encode(upd, seed=4)
    elias = get("qsgd", norm=norm, bucket=256, coding="elias").encode(upd, seed=4)
    assert torch.equal(_dec(fixed, upd), _dec(elias, upd))  # same dither, same levels
    if norm == "l2":
        assert len(elias) < len(fixed)


def test_unbiased() -> None:
    upd = {"a": torch.linspace(-1, 1, 64)}
    codec = get("qsgd", bucket=16, levels=2, norm="l2")
    mean = torch.stack([_dec(codec.encode(upd, seed=s), upd) for s in range(500)]).mean(0)
    assert float((mean - upd["a"]).abs().max()) < 0.12


def test_l2_large_bucket_has_high_variance() -> None:
    """s = 8, bucket 512, L2 norm: relative error ≈ 1.27 on Gaussian data; max-norm is far lower."""
    upd = gaussian_update({"a": (1 << 17,)}, 2)
    l2 = _dec(get("qsgd", bucket=512, levels=8, norm="l2", coding="elias").encode(upd, seed=0), upd)
    mx = _dec(get("qsgd", bucket=512, levels=8).encode(upd, seed=0), upd)
    assert rel_error(upd, {"a": l2}) == pytest.approx(1.27, abs=0.03)
    assert rel_error(upd, {"a": mx}) < 0.05


@pytest.mark.parametrize(("rate", "coding"), [(2.5, "fixed"), (4.0, "fixed"), (1.9, "elias"), (3.0, "elias")])
def test_rate_picks_the_largest_levels(rate: float, coding: str) -> None:
    d = 8192
    upd = gaussian_update({"a": (d,)}, 3)
    blob = get("qsgd", rate=rate, coding=coding).encode(upd, seed=5)
    assert len(blob) * 8 <= rate * d
    s = int.from_bytes(blob[HEADER_SIZE + 4 : HEADER_SIZE + 6], "big")
    if s < 65535:
        more = get("qsgd", levels=s + 1 if coding == "elias" else 2 * s + 1, coding=coding).encode(
            upd, seed=5
        )
        assert len(more) * 8 > rate * d


def test_infeasible_rate_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="rate"):
        get("qsgd", rate=1.0).encode(gaussian_update({"a": (1000,)}))
    for opts in ({"bucket": 0}, {"levels": 0}, {"levels": 70000}, {"norm": "l1"}, {"coding": "huffman"}):
        with pytest.raises(ConfigError):
            get("qsgd", **opts)


@pytest.mark.parametrize("coding", ["fixed", "elias"])
@pytest.mark.parametrize(("offset", "value"), [(0, 0xFF), (3, 0), (5, 0), (6, 2), (7, 2)])
def test_tampered_header_fields(coding: str, offset: int, value: int) -> None:
    upd = gaussian_update({"a": (700,)}, 6)
    blob = bytearray(get("qsgd", coding=coding).encode(upd, seed=1))
    blob[HEADER_SIZE + offset] = value
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))


def test_level_above_s_is_rejected() -> None:
    upd = {"a": torch.ones(8)}
    blob = bytearray(get("qsgd", levels=5, bucket=8).encode(upd))  # codes 0b0101 (3 bits + sign), s = 5
    body_start = HEADER_SIZE + 8 + 4
    blob[body_start] = 0b0111_0111  # level 7 > 5
    with pytest.raises(PayloadError, match="level"):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))


def test_norms_must_be_finite() -> None:
    upd = gaussian_update({"a": (64,)}, 7)
    blob = bytearray(get("qsgd").encode(upd))
    blob[HEADER_SIZE + 8 : HEADER_SIZE + 12] = np.array([np.inf], dtype=">f4").tobytes()
    with pytest.raises(PayloadError, match="norm"):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))
