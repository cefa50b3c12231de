from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsqueeze import PayloadError
from fedsqueeze.wire.bitpack import BitReader, BitWriter, pack_uints, unpack_uints


@given(st.integers(1, 64), st.lists(st.integers(0, 2**64 - 1), max_size=50), st.data())
def test_fixed_width_round_trip(width: int, raw: list[int], data: st.DataObject) -> None:
    vals = np.array([v % (1 << width) if width < 64 else v for v in raw], dtype=np.uint64)
    blob = pack_uints(vals, width)
    assert len(blob) == (width * len(vals) + 7) // 8
    assert np.array_equal(unpack_uints(blob, len(vals), width), vals)


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**40 - 1)), max_size=60))
def test_variable_width_round_trip(pairs: list[tuple[int, int]]) -> None:
    widths = np.array([w for w, _ in pairs], dtype=np.int64)
    vals = np.array([v % (1 << w) if w else 0 for w, v in pairs], dtype=np.uint64)
    w = BitWriter()
    w.write_uint(5, 3)
    w.write_uints(vals, widths)
    w.write_f32(np.array([1.5, -2.25], dtype=np.float32))
    blob = w.getvalue()
    assert len(blob) * 8 - w.nbits < 8
    r = BitReader(blob)
    assert r.read_uint(3) == 5
    assert np.array_equal(r.read_uints(len(vals), widths), vals)
    assert np.array_equal(r.read_f32(2), np.array([1.5, -2.25], dtype=np.float32))
    r.expect_end()


def test_msb_first_layout_is_pinned() -> None:
    w = BitWriter()
    w.write_uint(0b101, 3)
    w.write_uint(0b11111, 5)
    w.write_uint(1, 1)
    assert w.getvalue() == bytes([0b10111111, 0b10000000])


def test_reader_refuses_before_allocating() -> None:
    r = BitReader(b"\x00\x01")
    with pytest.raises(PayloadError, match="truncated"):
        r.read_uints(10**12, 32)  # would be terabytes; must fail on the length check
    with pytest.raises(PayloadError):
        r.read_uints(1, 65)


def test_expect_end_detects_trailing_bytes_and_padding() -> None:
    r = BitReader(b"\xff\x00")
    r.read_uints(1, 8)
    with pytest.raises(PayloadError, match="trailing"):
        BitReader(b"\xff\x00\x00").expect_end()
    r2 = BitReader(b"\x81")
    r2.read_uint(4)
    with pytest.raises(PayloadError, match="padding"):
        r2.expect_end()


def test_value_too_wide_is_rejected_on_write() -> None:
    with pytest.raises(ValueError):
        pack_uints(np.array([8], dtype=np.uint64), 3)
