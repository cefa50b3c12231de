from __future__ import annotations

import math

import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.wire.frame import HEADER_SIZE
from fedsqueeze.wire.index_coding import index_bits
from support.codec_cases import gaussian_update, refresh_crc, rel_error


def _flat(blob: bytes, upd: dict) -> torch.Tensor:
    spec = UpdateSpec.from_tensors(upd)
    return spec.flatten(fedsqueeze.decode(blob, spec))


def test_values_are_mean_magnitude_times_sign_on_the_topk_support() -> None:
    upd = gaussian_update({"a": (50, 40), "b": (300,)}, 0)
    u = UpdateSpec.from_tensors(upd).flatten(upd)
    d, k = u.numel(), math.floor(0.05 * 2300)
    blob = get("compeft", density=0.05).encode(upd)
    assert len(blob) == HEADER_SIZE + math.ceil((72 + index_bits("elias_fano", d, k) + k) / 8)
    v = _flat(blob, upd)
    top = torch.topk(u.abs(), k).indices
    assert set(torch.nonzero(v).flatten().tolist()) == set(top.tolist())
    c = float(u[top].abs().double().mean())
    assert torch.allclose(v[top].double(), c * torch.sign(u[top]).double(), rtol=1e-6)


def test_scale_is_mse_optimal_and_alpha_is_a_gain() -> None:
    upd = gaussian_update({"a": (4000,)}, 1)
    base = rel_error(upd, {"a": _flat(get("compeft").encode(upd), upd)})
    for alpha in (0.9, 1.1):
        v = _flat(get("compeft", alpha=alpha).encode(upd), upd)
        assert rel_error(upd, {"a": v}) > base
    v1 = _flat(get("compeft").encode(upd), upd)
    v2 = _flat(get("compeft", alpha=2.0).encode(upd), upd)
    assert torch.allclose(v2, 2 * v1)
    # A sign per kept entry loses a little against fp32 TopK at the same k, and costs far fewer bits.
    topk = rel_error(upd, fedsqueeze.decode(get("topk").encode(upd), UpdateSpec.from_tensors(upd)))
    assert topk < base < 1.0


def test_fixed_positions_option() -> None:
    upd = gaussian_update({"a": (1 << 14,)}, 2)
    ef = get("compeft").encode(upd)
    fx = get("compeft", positions="fixed").encode(upd)
    assert len(ef) < len(fx)
    assert torch.equal(_flat(ef, upd), _flat(fx, upd))


@pytest.mark.parametrize(("rate", "positions"), [(0.05, "elias_fano"), (0.3, "elias_fano"), (0.5, "fixed")])
def test_rate_picks_the_largest_k(rate: float, positions: str) -> None:
    d = 30_000
    codec = get("compeft", rate=rate, positions=positions)
    blob = codec.encode(gaussian_update({"a": (d,)}, 3))
    assert len(blob) * 8 <= rate * d
    k = codec.choose_k(d)
    assert HEADER_SIZE * 8 + 8 * math.ceil((72 + index_bits(positions, d, k + 1) + k + 1) / 8) > rate * d


def test_infeasible_rate_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="rate"):
        get("compeft", rate=1.0).encode(gaussian_update({"a": (100,)}))
    for opts in ({"alpha": 0.0}, {"alpha": float("inf")}, {"positions": "bitmap"}, {"density": 2.0}):
        with pytest.raises(ConfigError):
            get("compeft", **opts)


@pytest.mark.parametrize(("offset", "value"), [(0, 1), (3, 0xFF), (4, 2), (5, 0xFF), (5, 0x7F)])
def test_tampered_header_fields_are_rejected(offset: int, value: int) -> None:
    """k > d, an unknown coder, a NaN/negative scale."""
    upd = gaussian_update({"a": (500,)}, 4)
    blob = bytearray(get("compeft").encode(upd))
    blob[HEADER_SIZE + offset] = value
    if offset == 5 and value == 0x7F:
        blob[HEADER_SIZE + 6] = 0xFF  # 0x7FFF.... : NaN
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))
