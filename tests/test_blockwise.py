"""blockwise8, nf4 and fp4: levels, nearest-level rounding, block layout, frame length and hostile bodies."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateError, UpdateSpec
from fedsqueeze.cli import main as cli_main
from fedsqueeze.codecs import codec_class, get
from fedsqueeze.codecs.blockwise._levels import FP4_CODES, NF4_CODES
from fedsqueeze.wire.frame import HEADER_SIZE, pack_frame
from support.codec_cases import BLOCKWISE, gaussian_update, refresh_crc

LEVELS = {"nf4": NF4_CODES, "fp4": FP4_CODES}
BITS = {"blockwise8": 8, "nf4": 4, "fp4": 4}


def _round_trip(codec: str, u: dict[str, torch.Tensor], **options: object) -> tuple[bytes, dict]:
    blob = get(codec, **options).encode(u, seed=3)
    return blob, fedsqueeze.decode(blob, UpdateSpec.from_tensors(u))


def _blocks(t: torch.Tensor, block: int) -> list[torch.Tensor]:
    """A tensor's blocks in flat order, float64 (the last one may be short)."""
    return list(t.reshape(-1).double().split(block))


def _body(blob: bytes) -> bytes:
    return blob[HEADER_SIZE:]


def _scales(blob: bytes, nb: int) -> np.ndarray:
    return np.frombuffer(_body(blob), dtype=">f4", count=nb, offset=4).astype(np.float64)


def _nibbles(data: bytes, d: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    return np.stack([b >> 4, b & 15], axis=1).reshape(-1)[:d]


# -- the level tables ----------------------------------------------------------------------------------------
def test_level_tables_are_bitsandbytes_constants() -> None:
    assert NF4_CODES.dtype == np.float32 and NF4_CODES.size == 16
    assert np.all(np.diff(NF4_CODES) > 0) and NF4_CODES[0] == -1 and NF4_CODES[7] == 0 and NF4_CODES[15] == 1
    assert float(NF4_CODES[8]) == float(np.float32(0.07958029955625534))
    # FP4: sign bit 3, e2m1 magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12 in bitsandbytes' code order
    mags = np.float32([0, 0.0625, 8, 12, 4, 6, 2, 3]) / np.float32(12)
    assert np.array_equal(FP4_CODES[:8], mags) and np.array_equal(FP4_CODES[8:], -mags)
    assert sorted({float(v) for v in FP4_CODES}) == sorted(
        {
            s * float(np.float32(m))
            for m in (0, 1 / 192, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1)
            for s in (1, -1)
        }
    )


# -- values on the levels decode exactly ---------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["nf4", "fp4"])
def test_values_on_the_levels_decode_exactly(codec: str) -> None:
    levels = LEVELS[codec].astype(np.float64)
    rng = np.random.default_rng(0)
    absmax = [float(np.float32(a)) for a in (3.5, 1e-20, 7.25e30, 0.1)]  # float32 scales: exact
    # four blocks of 16: each holds every level times its absmax, shuffled (level ±1 makes the scale exact)
    x = np.concatenate([rng.permutation(levels) * a for a in absmax]).astype(np.float32)
    u = {"w": torch.from_numpy(x)}
    blob, out = _round_trip(codec, u, block=16)
    assert torch.equal(out["w"], u["w"])
    assert np.array_equal(_scales(blob, 4), np.float32(absmax).astype(np.float64))


def test_blockwise8_values_on_the_grid_decode_exactly() -> None:
    q = np.arange(-127, 128, dtype=np.float64)
    x = np.concatenate([q * a / 127 for a in (2.0, 2.0**-22 * 1.25, 2.0**116)]).astype(
        np.float32
    )  # the decoder's formula
    u = {"w": torch.from_numpy(x)}
    blob, out = _round_trip("blockwise8", u, block=255)
    assert torch.equal(out["w"], u["w"])
    codes = np.frombuffer(_body(blob), dtype=np.int8, offset=4 + 4 * 3)
    assert np.array_equal(codes, np.tile(q, 3).astype(np.int8))  # two's complement bytes, flat order


# -- rounding ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [64, 7, 1000])
def test_blockwise8_error_is_at_most_half_a_step(block: int) -> None:
    u = gaussian_update({"a": (48, 33), "b": (33, 48), "c": (5,)}, 4)
    u["b"] = u["b"] * 1e-6
    u["c"] = u["c"] * 1e12
    _, out = _round_trip("blockwise8", u, block=block)
    for k in u:
        for x, y in zip(_blocks(u[k], block), _blocks(out[k], block), strict=True):
            half_step = float(x.abs().max()) / 254
            # exact arithmetic gives <= half a step; allow the final float32 rounding of the decoded value
            assert float((y - x).abs().max()) <= half_step * (1 + 1e-6)


@pytest.mark.parametrize("codec", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [64, 5])
def test_4bit_codes_are_the_nearest_level(codec: str, block: int) -> None:
    table = LEVELS[codec].astype(np.float64)
    x = gaussian_update({"w": (301,)}, 5)["w"]
    blob, out = _round_trip(codec, {"w": x}, block=block)
    blocks = _blocks(x, block)
    absmax = np.array([float(b.abs().max()) for b in blocks])
    assert np.array_equal(_scales(blob, len(blocks)), absmax)
    r = x.double().numpy() / np.repeat(absmax, [b.numel() for b in blocks])
    nearest = np.abs(r[:, None] - table[None, :]).argmin(axis=1)  # brute force over the 16 codes
    want = table[nearest] * np.repeat(absmax, [b.numel() for b in blocks])
    assert np.array_equal(out["w"].numpy(), want.astype(np.float32))
    codes = _nibbles(_body(blob)[4 + 4 * len(blocks) :], 301)
    assert np.array_equal(table[codes], table[nearest])  # the first value of a byte is its high nibble
    if codec == "nf4":
        assert np.array_equal(codes, nearest)  # NF4's code is the level's index


def test_nf4_tie_goes_to_the_lower_level() -> None:
    up = (float(NF4_CODES[9]) + float(NF4_CODES[10])) / 2  # these two midpoints are float32 numbers
    down = (float(NF4_CODES[2]) + float(NF4_CODES[3])) / 2
    x = torch.tensor([1.0, up, down])
    assert x[1:].double().tolist() == [up, down]
    _, out = _round_trip("nf4", {"w": x})
    assert out["w"].tolist() == [1.0, float(NF4_CODES[9]), float(NF4_CODES[2])]


@pytest.mark.parametrize("codec", ["blockwise8", "fp4"])
def test_symmetric_grids_are_sign_symmetric(codec: str) -> None:
    u = gaussian_update({"w": (500,)}, 6)
    _, a = _round_trip(codec, u)
    _, b = _round_trip(codec, {"w": -u["w"]})
    assert torch.equal(a["w"], -b["w"])


# -- blocks and frame length ---------------------------------------------------------------------------------
def test_blocks_restart_at_each_tensor_and_the_last_block_is_short() -> None:
    a = torch.arange(1, 71, dtype=torch.float32)  # 70 values: blocks of 64 and 6
    b = torch.tensor([0.5, -2.0, 1.0])  # one block of 3, its own scale
    u = {"a": a, "z": torch.zeros(130), "b": b, "e": torch.zeros(0)}
    blob, out = _round_trip("fp4", u)  # 0.25, 0.5 and 1 are FP4 levels
    assert _scales(blob, 2 + 3 + 1).tolist() == [64.0, 70.0, 0.0, 0.0, 0.0, 2.0]
    assert out["a"][63] == 64.0 and out["a"][69] == 70.0 and out["b"].tolist() == [0.5, -2.0, 1.0]
    assert torch.equal(out["z"], torch.zeros(130)) and out["e"].shape == (0,)


@pytest.mark.parametrize("codec", BLOCKWISE)
@pytest.mark.parametrize("block", [1, 3, 64, 100, 4096])
def test_frame_length_is_header_block_scales_and_codes(codec: str, block: int) -> None:
    shapes = {"a": (8, 48), "b": (48, 8), "bias": (7,), "c": (3, 5, 11)}
    u = gaussian_update(shapes, 7)
    spec = UpdateSpec.from_tensors(u)
    nb = sum(math.ceil(n / block) for n in spec.sizes)
    blob, _ = _round_trip(codec, u, block=block)
    assert len(blob) == HEADER_SIZE + 4 + 4 * nb + math.ceil(BITS[codec] * spec.numel / 8)
    limit = codec_class(codec).max_body_bytes(spec)
    assert limit == 4 + 4 * spec.numel + math.ceil(BITS[codec] * spec.numel / 8)
    assert len(blob) - HEADER_SIZE <= limit and (block != 1 or len(blob) - HEADER_SIZE == limit)


@pytest.mark.parametrize("codec", BLOCKWISE)
def test_extreme_magnitudes_stay_finite(codec: str) -> None:
    fmax = float(torch.finfo(torch.float32).max)
    x = torch.tensor([fmax, -fmax, 1e38, 1e-45, -1e-45, 0.0] * 3)
    _, out = _round_trip(codec, {"w": x}, block=6)
    assert bool(torch.isfinite(out["w"]).all())
    assert out["w"][0] == fmax and out["w"][1] == -fmax


# -- options and the CLI -------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", BLOCKWISE)
@pytest.mark.parametrize("bad", [0, -1, 2**24 + 1, 1.5, True, "64", None])
def test_block_option_is_validated(codec: str, bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        get(codec, block=bad)
    assert str(exc.value) == f"{codec}: block must be an int in 1..16777216, got {bad!r}"


@pytest.mark.parametrize("codec", BLOCKWISE)
def test_fixed_rate_no_rate_option(codec: str) -> None:
    assert codec_class(codec).rate_option is None and get(codec).options() == {"block": 64}
    with pytest.raises(ConfigError, match="no option.*rate"):
        get(codec, rate=4.0)


def test_codecs_cli_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["codecs", "--plain"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    for codec in BLOCKWISE:
        _, cid, knob, summary, opts = rows[codec]
        assert cid == str(codec_class(codec).codec_id) and knob == "-" and opts == "block=64" and summary


def test_non_finite_input_is_refused() -> None:
    for codec in BLOCKWISE:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(UpdateError, match="NaN or Inf"):
                get(codec).encode({"w": torch.tensor([1.0, bad])})


# -- hostile bodies ------------------------------------------------------------------------------------------
SPEC = UpdateSpec.from_shapes({"a": (10, 7), "b": (9,)})  # d = 79 (odd: one padding nibble in 4-bit codes)


def _frame(codec: str, body: bytes) -> bytes:
    return pack_frame(codec_class(codec).codec_id, SPEC, 0, body)


def _valid_body(codec: str, block: int = 64) -> bytes:
    u = SPEC.unflatten(torch.linspace(-3, 2, SPEC.numel))
    return _body(get(codec, block=block).encode(u))


@pytest.mark.parametrize("codec", BLOCKWISE)
def test_hostile_bodies_are_refused(codec: str) -> None:
    good = _valid_body(codec)
    nb = 3  # blocks of 64 and 6 in "a", 9 in "b"
    assert fedsqueeze.decode(_frame(codec, good), SPEC)["b"].shape == (9,)
    bad: dict[str, bytes] = {
        "empty": b"",
        "block field cut": good[:3],
        "block 0": struct.pack(">I", 0) + good[4:],
        "block 2^24+1": struct.pack(">I", 2**24 + 1) + good[4:],
        "another block's length": struct.pack(">I", 5) + good[4:],
        "truncated": good[:-1],
        "extended": good + b"\0",
        "extended by a block": good + b"\0" * 4,
    }
    for what, value in (("NaN", math.nan), ("Inf", math.inf), ("-Inf", -math.inf), ("negative", -1.0)):
        b = bytearray(good)
        b[4 + 4 * (nb - 1) : 4 + 4 * nb] = struct.pack(">f", value)
        bad[f"scale {what}"] = bytes(b)
    if BITS[codec] == 4:  # d is odd: the last nibble is padding
        bad["non-zero padding"] = good[:-1] + bytes([good[-1] | 1])
    if codec == "blockwise8":
        bad["code -128"] = good[:-1] + b"\x80"
    if codec == "fp4":
        bad["code 8 (-0)"] = good[:-1] + bytes([0x80])
    for what, body in bad.items():
        try:
            fedsqueeze.decode(_frame(codec, body), SPEC)
        except PayloadError:
            continue
        pytest.fail(f"{codec}: {what} was accepted")


@pytest.mark.parametrize("codec", BLOCKWISE)
def test_a_body_with_block_1_decodes_but_a_larger_one_is_refused_before_decoding(codec: str) -> None:
    one = _valid_body(codec, block=1)
    assert len(one) == codec_class(codec).max_body_bytes(SPEC)
    assert fedsqueeze.decode(_frame(codec, one), SPEC)["a"].shape == (10, 7)
    with pytest.raises(PayloadError, match="exceeds"):
        fedsqueeze.decode(refresh_crc(_frame(codec, one + b"\0")), SPEC)


def test_a_zero_scale_block_with_nonzero_codes_decodes_to_zeros() -> None:
    good = bytearray(_valid_body("nf4"))
    good[4:8] = struct.pack(">f", 0.0)  # first block's scale 0, its codes unchanged
    out = fedsqueeze.decode(_frame("nf4", bytes(good)), SPEC)
    assert torch.equal(out["a"].reshape(-1)[:64], torch.zeros(64))
