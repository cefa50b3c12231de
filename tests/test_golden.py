"""Golden payloads: the wire format of every codec is pinned byte for byte (see tests/golden/regen.py).

A failure here means an encoder or decoder now produces different bytes or values for the same input, options
and seed: a wire-format change that breaks every payload already sent. If the change is intended, regenerate
the codec's files with ``python tests/golden/regen.py CODEC`` and document the change in wire/SPEC.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zlib
from pathlib import Path

import pytest

from fedsqueeze import PayloadError
from fedsqueeze.codecs import by_id, codec_class, decode_flat
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE, MAGIC, VERSION

GOLDEN = Path(__file__).resolve().parent / "golden"


def _load_regen():
    spec = importlib.util.spec_from_file_location("golden_regen", GOLDEN / "regen.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


regen = _load_regen()
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
CASES = MANIFEST["cases"]
SPEC = regen.golden_spec()


def _regen_hint(codec: str) -> str:
    return f"if the change is intended, run `python tests/golden/regen.py {codec}` and document it in SPEC.md"


def test_golden_input_is_unchanged() -> None:
    # The input itself is part of the contract: a changed builder would invalidate every case silently.
    assert MANIFEST["format"] == regen.FORMAT
    assert MANIFEST["input"]["spec"] == SPEC.to_json()
    assert MANIFEST["input"]["spec_digest"] == SPEC.digest.hex()
    assert regen.input_sha256(regen.golden_input()) == MANIFEST["input"]["sha256"]
    # the reference of the predictive cases too
    assert regen.input_sha256(regen.golden_reference()) == MANIFEST["input"]["reference_sha256"]


def test_every_codec_has_a_golden_case() -> None:
    covered = {e["codec"] for e in CASES.values()}
    missing = [c for c in regen.golden_codecs() if c not in covered]
    assert not missing, (
        f"codec(s) {missing} have no golden payload; pin their wire format with "
        + " ; ".join(f"`python tests/golden/regen.py {c}`" for c in missing)
        + " (add representative options to CASES in tests/golden/regen.py, else defaults are used) and "
        "document the body layout in src/fedsqueeze/wire/SPEC.md"
    )


def test_no_stray_golden_files() -> None:
    files = {f.name for f in GOLDEN.glob("*.bin")}
    assert files == {e["file"] for e in CASES.values()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_frame_is_intact(name: str) -> None:
    e = CASES[name]
    blob = (GOLDEN / e["file"]).read_bytes()
    assert len(blob) == e["length"]
    assert hashlib.sha256(blob).hexdigest() == e["sha256"], f"{e['file']} was modified on disk"
    magic, version, cid, flags, digest, seed, length, crc = HEADER.unpack_from(blob)
    assert (magic, version, flags, digest) == (MAGIC, VERSION, 0, SPEC.digest)
    cls = by_id(cid)
    assert cls is not None and cls.name == e["codec"]
    assert seed == e["seed"]
    assert length == len(blob) - HEADER_SIZE <= cls.max_body_bytes(SPEC)
    assert crc == zlib.crc32(blob[HEADER_SIZE:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_reencoding_is_byte_identical(name: str) -> None:
    e = CASES[name]
    stored = (GOLDEN / e["file"]).read_bytes()
    fresh = regen.encode_case(e["codec"], e["options"], e["seed"])
    if fresh != stored:
        first = next(
            (i for i, (a, b) in enumerate(zip(fresh, stored, strict=False)) if a != b),
            min(len(fresh), len(stored)),
        )
        where = "header" if first < HEADER_SIZE else "body"
        pytest.fail(
            f"wire format of {e['codec']} changed for case {name!r} (options {e['options']}, seed "
            f"{e['seed']}): {len(fresh)} bytes now vs {len(stored)} stored, first difference at byte "
            f"{first} ({where}); {_regen_hint(e['codec'])}"
        )


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_stored_frame_is_pinned(name: str) -> None:
    e = CASES[name]
    blob = (GOLDEN / e["file"]).read_bytes()
    flat = regen.decode_case(e["codec"], blob)
    again = regen.decode_case(e["codec"], blob)
    assert regen.decoded_sha256(flat) == regen.decoded_sha256(again), "decoding is not deterministic"
    assert flat.shape == (SPEC.numel,)
    nnz = int((flat != 0).sum())
    assert regen.decoded_sha256(flat) == e["decoded_sha256"], (
        f"decoding the stored {e['file']} now gives other values ({nnz} nonzeros, stored "
        f"{e['decoded_nonzeros']}): the {e['codec']} decoder changed meaning; {_regen_hint(e['codec'])}"
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_uses_no_codec_options(name: str) -> None:
    # The body is self-describing: the class-level decoder on the body alone gives the same vector.
    e = CASES[name]
    blob = (GOLDEN / e["file"]).read_bytes()
    seed = HEADER.unpack_from(blob)[5]
    cls = codec_class(e["codec"])
    extra = {"reference": regen.golden_reference()} if cls.uses_reference else {}
    flat = cls.decode_flat(blob[HEADER_SIZE:], SPEC, seed=seed, **extra)
    assert regen.decoded_sha256(flat.contiguous()) == e["decoded_sha256"]


def test_predictive_golden_needs_its_reference() -> None:
    # a predictive frame is pinned against golden_reference(); without it (or with the input) it is refused
    names = [n for n, e in CASES.items() if regen.uses_reference(e["codec"])]
    assert names
    for name in names:
        blob = (GOLDEN / CASES[name]["file"]).read_bytes()
        assert by_id(HEADER.unpack_from(blob)[2]).uses_reference, f"{name} is not a predictive frame"
        with pytest.raises(PayloadError):
            decode_flat(blob, SPEC)
        with pytest.raises(PayloadError):
            decode_flat(blob, SPEC, reference=regen.golden_input())
