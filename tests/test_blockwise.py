"""blockwise8, nf4 and fp4: levels, nearest-level rounding, block layout, frame length and hostile bodies."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze import ConfigError, PayloadError, UpdateError, UpdateSpec
from fedsqueeze.cli import main as cli_main
from fedsqueeze.codecs import codec_class, get
from fedsqueeze.codecs.blockwise import codec as module
from fedsqueeze.codecs.blockwise._levels import FP4_CODES, NF4_CODES
from fedsqueeze.wire.frame import HEADER_SIZE, pack_frame
from support.blockwise_reference import decode_body, encode_body
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


# -- the fast path writes the first implementation's bytes ------------------------------------------------
# tests/support/blockwise_reference.py is the first (float64, generic bit packer) implementation, kept as is.
# The rewrite must write the same bodies and decode every body to the same float32 bits (or refuse it).

SHAPES = {
    "one value": {"w": (1,)},
    "short of a block": {"w": (63,)},
    "one block": {"w": (64,)},
    "odd d, 16 blocks": {"w": (1001,)},
    "LoRA-like with a bias": {"a": (8, 48), "b": (48, 8), "bias": (7,), "c": (3, 5, 11)},
    "aligned tensors": {"a": (16, 64), "b": (64, 16), "c": (4, 64)},
    "empty tensor in the middle": {"a": (130,), "e": (0,), "b": (65,)},
    "long": {"w": (100_003,)},
    "many short tensors": {f"t{i}": (i % 9 + 1,) for i in range(300)},
}
KINDS_REF = ("gauss", "zeros", "equal", "signed zeros", "tiny", "subnormal", "huge", "decades", "ties")


def _values(kind: str, n: int, rng: np.random.Generator, codec: str, block: int) -> np.ndarray:
    """float32 values of one pattern; ``ties`` sits on and next to the codec's decision boundaries."""
    if kind == "zeros":
        return np.zeros(n, dtype=np.float32)
    if kind == "equal":  # every block all-equal (absmax = |v|, r = ±1)
        return np.full(n, float(rng.choice([-2.5, 0.75, 3.0])), dtype=np.float32)
    if kind == "signed zeros":
        v = rng.choice(np.float32([0.0, -0.0, 1.5, -0.25]), size=n, p=[0.4, 0.4, 0.1, 0.1])
        return v.astype(np.float32)
    if kind == "tiny":  # absmax below the fast path's TINY_SCALE: whole blocks take the exact path
        return (rng.standard_normal(n) * 1e-30).astype(np.float32)
    if kind == "subnormal":
        return (rng.standard_normal(n) * 1e-42).astype(np.float32)
    if kind == "huge":
        return (rng.standard_normal(n) * 1e37).astype(np.float32)
    if kind == "decades":
        return (rng.standard_normal(n) * 10.0 ** rng.uniform(-40, 38, n)).clip(-3e38, 3e38).astype(np.float32)
    if kind == "ties":  # r exactly on a boundary (where float32 allows) and one ulp either side
        if codec == "blockwise8":
            bounds = (np.arange(127) + 0.5) / 127
        else:
            lv = np.unique(LEVELS[codec].astype(np.float64))
            bounds = (lv[1:] + lv[:-1]) / 2
        a = np.float32(rng.choice([1.0, 3.0, 254.0, 0.7, 1e-3]))
        on = np.float32(rng.choice(bounds, size=n) * rng.choice([-1.0, 1.0], size=n) * float(a))
        step = rng.integers(-1, 2, size=n)  # -1, 0, +1 ulp
        v = np.where(step == 0, on, np.nextafter(on, np.where(step > 0, np.inf, -np.inf).astype(np.float32)))
        v[:: max(1, min(block, n))] = a  # a block's first value is +a: absmax is a (v is clipped to it)
        return np.clip(v, -a, a).astype(np.float32)
    return rng.standard_normal(n).astype(np.float32)


def zlib_seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a.numpy().view(np.uint32) == b.numpy().view(np.uint32)).all())


@pytest.fixture(params=["pieces", "whole"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through the chunked loop and through the whole-vector path (chosen by layout otherwise)."""
    monkeypatch.setattr(module, "_by_pieces", lambda lay, d: request.param == "pieces")
    return request.param


@pytest.mark.parametrize("codec", BLOCKWISE)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bodies_and_values_equal_the_first_implementation(codec: str, shape: str, path: str) -> None:
    spec = UpdateSpec.from_shapes(SHAPES[shape])
    cls = codec_class(codec)
    rng = np.random.default_rng(zlib_seed(codec, shape, path))
    blocks = [1, 3, 64, 100, 4096] + ([40_000] if spec.numel > 40_000 else [])  # 40,000 > CHUNK: long rows
    for block in blocks:
        for kind in KINDS_REF:
            if spec.numel > 5000 and kind not in ("gauss", "ties", "decades", "zeros"):
                continue  # the long spec: a few kinds are enough (time)
            flat = torch.from_numpy(_values(kind, spec.numel, rng, codec, block))
            new = get(codec, block=block).encode_flat(flat, spec, seed=0)
            old = encode_body(codec, flat, spec, block)
            assert new == old, f"{codec} {shape} block={block} {kind}: body differs"
            assert _same_bits(cls.decode_flat(new, spec, seed=0), decode_body(codec, old, spec)), (
                f"{codec} {shape} block={block} {kind}: decoded values differ"
            )


@pytest.mark.parametrize("codec", BLOCKWISE)
def test_random_bodies_decode_like_the_first_implementation(codec: str, path: str) -> None:
    # Bodies of the right length with random codes (invalid ones and padding bits included) and scales that
    # are sometimes NaN, Inf, negative, -0 or subnormal: both decoders refuse the same ones, and agree on the
    # values of the others bit for bit.
    spec = UpdateSpec.from_shapes({"a": (10, 7), "b": (9,), "c": (130,)})  # d = 209: odd
    cls = codec_class(codec)
    rng = np.random.default_rng(zlib_seed(codec, path))
    outcomes = set()
    for trial in range(120):
        block = int(rng.choice([1, 7, 64, 100]))
        nb = sum(math.ceil(n / block) for n in spec.sizes)
        scales = rng.standard_normal(nb).astype(np.float32) * np.float32(10.0 ** rng.integers(-40, 38))
        if trial % 4 == 1:
            scales[rng.integers(nb)] = rng.choice([np.nan, np.inf, -1.0, -0.0, 1e-45])
        scales = np.abs(scales) if trial % 4 == 0 else scales
        code_bytes = math.ceil(BITS[codec] * spec.numel / 8)
        codes = rng.integers(0, 256, code_bytes, dtype=np.uint8)
        if trial % 3 == 0:  # mostly valid codes: only values the encoder writes, zero padding
            if codec == "blockwise8":
                codes[codes == 0x80] = 0x7F
            else:
                codes &= 0x77 if codec == "fp4" else 0xFF
                if spec.numel % 2:
                    codes[-1] &= 0xF0
        body = struct.pack(">I", block) + scales.astype(">f4").tobytes() + codes.tobytes()
        try:
            want = decode_body(codec, body, spec)
        except PayloadError:
            with pytest.raises(PayloadError):
                cls.decode_flat(body, spec, seed=0)
            outcomes.add("refused")
            continue
        assert _same_bits(cls.decode_flat(body, spec, seed=0), want), f"trial {trial}"
        outcomes.add("decoded")
    assert outcomes == {"refused", "decoded"}


def test_the_fast_estimate_is_within_its_error_bound() -> None:
    # t = fl32(fl32(v · s) + 32768.5) with s = fl32(K / absmax) is within 0.008 of K·v/absmax + 32768.5;
    # the bin tables assume less than MARGIN = 0.02 (_levels' docstring).
    from fedsqueeze.codecs.blockwise._levels import BIN_OFFSET, MARGIN, TINY_SCALE

    rng = np.random.default_rng(11)
    a = (10.0 ** rng.uniform(np.log10(TINY_SCALE), 38, 200_000)).astype(np.float32)
    v = (a * rng.uniform(-1, 1, a.size).astype(np.float32)).astype(np.float32)
    v[::7] = a[::7]
    for k in (32768.0, 127.0 * 256):
        s = (k / a.astype(np.float64)).astype(np.float32)
        t = (v * s).astype(np.float32) + np.float32(BIN_OFFSET)
        exact = k * (v.astype(np.float64) / a.astype(np.float64)) + BIN_OFFSET
        err = np.abs(t.astype(np.float64) - exact).max()
        assert err <= 0.008 < MARGIN


def test_a_failed_fix_up_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The equality tests can fail: a table without its markers (every bin trusted) writes other bytes.
    spec = UpdateSpec.from_shapes({"w": (4096,)})
    flat = torch.from_numpy(_values("ties", 4096, np.random.default_rng(5), "nf4", 64))
    assert get("nf4").encode_flat(flat, spec, seed=0) == encode_body("nf4", flat, spec, 64)
    table = module._bins(module.NF4).copy()
    marked = np.flatnonzero(table == module.NF4.mark)
    table[marked] = table[marked - 1]  # trust the bin below instead of the exact formula
    monkeypatch.setattr(module, "_bins", lambda cls: table)
    assert get("nf4").encode_flat(flat, spec, seed=0) != encode_body("nf4", flat, spec, 64)
