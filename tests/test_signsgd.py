from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze import PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.wire.frame import HEADER_SIZE
from support.codec_cases import gaussian_update, refresh_crc, rel_error


def test_known_value_gaussian() -> None:
    """EF-sign on i.i.d. Gaussian has D = 1 - 2/π ≈ 0.363 at 1 bpp (E|u| = sqrt(2/π) σ)."""
    upd = gaussian_update({"u": (2**20,)}, 0)
    blob = get("signsgd").encode(upd)
    out = fedsqueeze.decode(blob, UpdateSpec.from_tensors(upd))
    assert rel_error(upd, out) == pytest.approx(1 - 2 / math.pi, abs=0.01)
    assert len(blob) == HEADER_SIZE + 4 + 2**20 // 8


def test_per_tensor_scale_and_sign_of_zero() -> None:
    upd = {
        "a": torch.tensor([[1.0, -3.0], [0.0, 2.0]]),
        "b": torch.tensor([-10.0, 0.0, 10.0]),
        "c": torch.zeros(0),
    }
    spec = UpdateSpec.from_tensors(upd)
    blob = get("signsgd").encode(upd)
    assert len(blob) == HEADER_SIZE + 4 * 3 + 1
    out = fedsqueeze.decode(blob, spec)
    assert torch.equal(out["a"], torch.tensor([[1.5, -1.5], [1.5, 1.5]]))
    assert torch.allclose(out["b"], torch.tensor([-20 / 3, 20 / 3, 20 / 3]))
    assert out["c"].shape == (0,)


def test_huge_values_do_not_overflow_the_scale() -> None:
    upd = {"a": torch.full((1000,), 3e38)}
    out = fedsqueeze.decode(get("signsgd").encode(upd), UpdateSpec.from_tensors(upd))
    assert torch.allclose(out["a"], upd["a"])


@pytest.mark.parametrize("scale", [np.nan, np.inf, -1.0])
def test_bad_scale_is_rejected(scale: float) -> None:
    upd = gaussian_update({"a": (64,)}, 1)
    blob = bytearray(get("signsgd").encode(upd))
    blob[HEADER_SIZE : HEADER_SIZE + 4] = np.array([scale], dtype=">f4").tobytes()
    with pytest.raises(PayloadError):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))


def test_nonzero_padding_is_rejected() -> None:
    upd = gaussian_update({"a": (63,)}, 2)  # 63 sign bits: one padding bit
    blob = bytearray(get("signsgd").encode(upd))
    blob[-1] |= 1
    with pytest.raises(PayloadError, match="padding"):
        fedsqueeze.decode(refresh_crc(bytes(blob)), UpdateSpec.from_tensors(upd))
