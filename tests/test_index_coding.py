from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsqueeze import PayloadError
from fedsqueeze.wire.bitpack import BitReader, BitWriter
from fedsqueeze.wire.index_coding import elias_fano_bits, fixed_width, index_bits, read_indices, write_indices


@st.composite
def sorted_indices(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    d = draw(st.integers(1, 5000))
    k = draw(st.integers(0, min(d, 300)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return d, np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)


@pytest.mark.parametrize("coder", ["fixed", "elias_fano"])
@given(case=sorted_indices())
def test_round_trip_and_exact_size(coder: str, case: tuple[int, np.ndarray]) -> None:
    d, idx = case
    w = BitWriter()
    write_indices(w, idx, d, coder)
    assert w.nbits == index_bits(coder, d, idx.size)
    r = BitReader(w.getvalue())
    assert np.array_equal(read_indices(r, idx.size, d, coder), idx)


def test_elias_fano_is_near_entropy() -> None:
    d, k = 2**20, 20_971
    # k (2 + log2(d/k)) bits, far below the fixed 20 bits per index
    assert elias_fano_bits(d, k) / k < 2 + np.log2(d / k) + 0.01
    assert fixed_width(d) == 20
    assert fixed_width(2**20 + 1) == 21


def test_corrupt_elias_fano_rejected() -> None:
    d = 1000
    idx = np.array([3, 10, 500], dtype=np.int64)
    w = BitWriter()
    write_indices(w, idx, d, "elias_fano")
    blob = bytearray(w.getvalue())
    blob[-1] ^= 0xFF
    blob[-2] ^= 0xFF
    with pytest.raises(PayloadError):
        read_indices(BitReader(bytes(blob)), 3, d, "elias_fano")
    with pytest.raises(PayloadError):
        read_indices(BitReader(b""), 1001, d, "fixed")


def test_fixed_out_of_range_rejected() -> None:
    w = BitWriter()
    w.write_uints(np.array([5, 1000], dtype=np.uint64), fixed_width(600))
    with pytest.raises(PayloadError, match="range"):
        read_indices(BitReader(w.getvalue()), 2, 600, "fixed")
