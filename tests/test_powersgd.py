from __future__ import annotations

import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.wire.frame import HEADER_SIZE
from support.codec_cases import gaussian_update, refresh_crc, rel_error


def _low_rank(n: int, m: int, r: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, r, generator=g) @ torch.randn(r, m, generator=g)) * scale


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_recovers_a_low_rank_matrix_at_any_magnitude(scale: float) -> None:
    upd = {"w": _low_rank(64, 48, 2, scale=scale), "bias": torch.randn(10) * scale}
    out = fedsqueeze.decode(get("powersgd", rank=2).encode(upd, seed=1), UpdateSpec.from_tensors(upd))
    assert rel_error(upd, out) < 1e-9
    assert torch.equal(out["bias"], upd["bias"])  # 1-D tensors travel dense fp32


def test_frame_size_and_dense_fallback() -> None:
    upd = gaussian_update({"a": (8, 512), "b": (3, 3), "c": (2, 4, 4), "v": (7,)}, 1)
    blob = get("powersgd", rank=1).encode(upd)
    # a: rank 1 (8 + 512 < 4096); b: 1*(3+3) < 9 rank 1; c as (2, 16): 18 >= 32? no, rank 1; v dense.
    bits = 8 + 16 * 4 + (32 + 32 * 520) + (32 + 32 * 6) + (32 + 32 * 18) + 32 * 7
    assert len(blob) == HEADER_SIZE + (bits + 7) // 8
    blob3 = get("powersgd", rank=3).encode(upd)  # b: 3*6 >= 9 -> dense; c: rank 2 cap, 2*18 >= 32 -> dense
    bits3 = 8 + 16 * 4 + (32 + 32 * 3 * 520) + 32 * 9 + 32 * 32 + 32 * 7
    assert len(blob3) == HEADER_SIZE + (bits3 + 7) // 8
    out = fedsqueeze.decode(blob3, UpdateSpec.from_tensors(upd))
    assert torch.equal(out["b"], upd["b"]) and torch.equal(out["c"], upd["c"])


def test_warm_start_improves_and_lives_in_state() -> None:
    g = torch.Generator().manual_seed(2)
    u_, _, v_ = torch.linalg.svd(torch.randn(60, 40, generator=g), full_matrices=False)
    sv = 0.6 ** torch.arange(40.0)  # decaying spectrum
    m = (u_ * sv) @ v_
    best = float((sv[2:] ** 2).sum() / (sv**2).sum())  # Eckart–Young error at rank 2
    upd = {"w": m}
    spec = UpdateSpec.from_tensors(upd)
    codec = get("powersgd", rank=2).fresh()
    errs = []
    for r in range(6):
        out = fedsqueeze.decode(codec.encode(upd, seed=r), spec)
        errs.append(rel_error(upd, out))
    assert errs[-1] < errs[0] and errs[-1] == pytest.approx(best, rel=0.02)
    assert set(codec.state) == {"w"} and codec.state["w"].shape == (40, 2)
    clone = get("powersgd", rank=2).fresh()
    clone.load_state_dict(codec.state_dict())
    assert clone.encode(upd, seed=9) == codec.encode(upd, seed=9)
    assert get("powersgd").fresh().state == {}


def test_fp16_factors_are_close_to_fp32() -> None:
    upd = gaussian_update({"w": (100, 80)}, 3)
    spec = UpdateSpec.from_tensors(upd)
    e32 = rel_error(upd, fedsqueeze.decode(get("powersgd", rank=4).encode(upd), spec))
    blob16 = get("powersgd", rank=4, factor_bits=16).encode(upd)
    e16 = rel_error(upd, fedsqueeze.decode(blob16, spec))
    assert abs(e16 - e32) < 1e-3
    assert len(blob16) < len(get("powersgd", rank=4).encode(upd))


@pytest.mark.parametrize("rate", [1.0, 4.0, 9.0])
def test_rate_picks_the_largest_rank(rate: float) -> None:
    upd = gaussian_update({"a": (64, 128), "b": (128, 64)}, 4)
    spec = UpdateSpec.from_tensors(upd)
    codec = get("powersgd", rate=rate)
    blob = codec.encode(upd)
    assert len(blob) * 8 <= rate * spec.numel
    r = codec.choose_rank(spec)
    assert len(get("powersgd", rank=r + 1).encode(upd)) * 8 > rate * spec.numel


def test_infeasible_rate_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="rate"):
        get("powersgd", rate=8.0).encode(gaussian_update({"v": (1000,)}))  # dense 1-D alone is 32 bpp
    for opts in ({"rank": 0}, {"power_iters": 0}, {"factor_bits": 8}, {"rate": 0.0}):
        with pytest.raises(ConfigError):
            get("powersgd", **opts)


@pytest.mark.parametrize(("offset", "value"), [(0, 8), (0, 0), (1, 0x01), (2, 0x09), (2, 0x00), (2, 0x02)])
def test_tampered_header_fields_are_rejected(offset: int, value: int) -> None:
    """factor_bits and ranks: a rank above min(n, m), a rank that would not compress, or a dense switch."""
    upd = gaussian_update({"w": (8, 16)}, 5)
    blob = bytearray(get("powersgd").encode(upd))
    blob[HEADER_SIZE + offset] = value
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))
