"""The frame format and fedsqueeze.decode's refusals (dense codecs; other codecs in their own tests)."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

import fedsqueeze
from fedsqueeze import PayloadError, SpecMismatchError, UpdateSpec, UsageError, codecs
from fedsqueeze.codecs import decode_flat, get
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE, MAGIC


def _update() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"a": torch.randn(16, 4, generator=g), "b": torch.randn(4, 16, generator=g)}


def test_header_layout() -> None:
    u = _update()
    spec = UpdateSpec.from_tensors(u)
    blob = get("identity").encode(u, seed=77)
    magic, version, cid, flags, digest, seed, length, crc = HEADER.unpack_from(blob)
    assert HEADER_SIZE == 32
    assert (magic, version, cid, flags, digest, seed) == (MAGIC, 1, 1, 0, spec.digest, 77)
    assert length == len(blob) - 32 == 4 * spec.numel
    assert crc == zlib.crc32(blob[32:])


def test_identity_is_exact_and_fp16_bf16_close() -> None:
    u = _update()
    spec = UpdateSpec.from_tensors(u)
    out = fedsqueeze.decode(get("identity").encode(u), spec)
    assert all(torch.equal(out[k], u[k]) for k in u)
    for name, tol in (("fp16", 1e-3), ("bf16", 1e-2)):
        blob = get(name).encode(u)
        assert len(blob) == 32 + 2 * spec.numel
        out = fedsqueeze.decode(blob, spec)
        assert all(torch.allclose(out[k], u[k], rtol=tol, atol=tol) for k in u)


def test_fp16_saturates_instead_of_inf() -> None:
    u = {"x": torch.tensor([1e30, -1e30, 3.0])}
    out = fedsqueeze.decode(get("fp16").encode(u), UpdateSpec.from_tensors(u))["x"]
    assert torch.isfinite(out).all() and out[0] == 65504.0 and out[1] == -65504.0


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:10], "shorter than"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "extended"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x09" + b[5:], "version"),
        (lambda b: b[:5] + b"\xfe" + b[6:], "unknown codec"),
        (lambda b: b[:6] + b"\x00\x01" + b[8:], "flags"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "CRC"),
    ],
)
def test_malformed_frames_raise_payload_error(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    u = _update()
    spec = UpdateSpec.from_tensors(u)
    blob = get("identity").encode(u)
    with pytest.raises(PayloadError, match=match):
        fedsqueeze.decode(mutate(blob), spec)


def test_wrong_spec_rejected() -> None:
    u = _update()
    other = UpdateSpec.from_shapes({"a": (16, 4), "c": (4, 16)})
    with pytest.raises(SpecMismatchError, match="spec"):
        fedsqueeze.decode(get("identity").encode(u), other)


def test_oversized_length_claim_rejected_before_allocation() -> None:
    """A frame claiming a 4 GiB body for a tiny spec is refused by the length checks alone."""
    spec = UpdateSpec.from_shapes({"a": (4,)})
    head = HEADER.pack(MAGIC, 1, 1, 0, spec.digest, 0, 2**32 - 1, 0)
    with pytest.raises(PayloadError):
        fedsqueeze.decode(head + b"\x00" * 16, spec)


def test_body_size_limit_checked_even_with_valid_crc() -> None:
    spec = UpdateSpec.from_shapes({"a": (4,)})
    body = b"\x00" * 20  # identity needs exactly 16 bytes
    head = HEADER.pack(MAGIC, 1, 1, 0, spec.digest, 0, len(body), zlib.crc32(body))
    with pytest.raises(PayloadError, match="limit"):
        fedsqueeze.decode(head + body, spec)


def test_nan_payload_rejected() -> None:
    spec = UpdateSpec.from_shapes({"a": (2,)})
    body = struct.pack("<ff", 1.0, float("nan"))
    head = HEADER.pack(MAGIC, 1, 1, 0, spec.digest, 0, len(body), zlib.crc32(body))
    with pytest.raises(PayloadError, match="NaN"):
        fedsqueeze.decode(head + body, spec)


def test_non_bytes_rejected() -> None:
    with pytest.raises(PayloadError):
        fedsqueeze.decode("not bytes", UpdateSpec.from_shapes({"a": (2,)}))  # type: ignore[arg-type]


def test_encode_refuses_non_finite() -> None:
    with pytest.raises(fedsqueeze.UpdateError, match="NaN"):
        get("identity").encode({"a": torch.tensor([1.0, float("inf")])})


@pytest.mark.parametrize("name", ["identity", "topk", "flm_topk"])
@pytest.mark.parametrize(
    ("update", "says"),
    [
        (torch.zeros(10), "got Tensor (wrap it: {'name': tensor})"),
        ([torch.zeros(10)], "got list"),
        ({"a": [0.0, 1.0]}, "update entry 'a' is a list, not a torch.Tensor"),
    ],
)
def test_encode_refuses_what_is_not_a_mapping_of_tensors(name, update, says) -> None:
    with pytest.raises(fedsqueeze.UpdateError, match="mapping of tensor names to tensors") as exc:
        get(name).encode(update)
    assert says in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, fedsqueeze.FedsqueezeError)
    with pytest.raises(fedsqueeze.UpdateError):
        fedsqueeze.ErrorFeedback(get(name)).encode(update)


def test_encode_with_spec_refuses_a_non_tensor() -> None:
    spec = UpdateSpec.from_shapes({"a": (2,)})
    with pytest.raises(fedsqueeze.UpdateError, match="1-D torch.Tensor, got list"):
        get("identity").encode_with_spec([0.0, 1.0], spec)  # type: ignore[arg-type]
    with pytest.raises(fedsqueeze.UpdateError, match="NaN or Inf"):
        fedsqueeze.ErrorFeedback(get("topk")).encode({"a": torch.tensor([float("nan"), 1.0])})


def test_decode_names_the_spec_it_needs_when_given_the_update_itself():
    update = {"a": torch.randn(4, 8)}
    blob = codecs.get("topk").encode(update)
    with pytest.raises(UsageError, match=r"decode needs an UpdateSpec as its spec, got dict \(build it with"):
        fedsqueeze.decode(blob, update)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="got str"):
        decode_flat(blob, "a")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["topk", "wf_ecq", "nf4"])
def test_decode_returns_on_the_device_asked_with_the_values_of_a_cpu_decode(name):
    update = {"a": torch.randn(16, 64), "b": torch.randn(64, 16)}
    spec = fedsqueeze.UpdateSpec.from_tensors(update)
    blob = codecs.get(name).encode(update, seed=3)
    plain = fedsqueeze.decode(blob, spec)
    placed = fedsqueeze.decode(blob, spec, device=torch.device("cpu"))
    assert all(placed[k].device.type == "cpu" and torch.equal(placed[k], plain[k]) for k in spec.names)
    meta = fedsqueeze.decode(blob, spec, device="meta")  # any torch device: the tensors move after decoding
    assert {t.device.type for t in meta.values()} == {"meta"}
    assert {k: tuple(t.shape) for k, t in meta.items()} == dict(spec.entries)


def test_a_spec_mismatch_says_names_shapes_or_order_differ_and_the_order_alone_is_enough():
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    blob = get("topk").encode({"a": a, "b": b})
    swapped = UpdateSpec.from_tensors({"b": b, "a": a})  # same tensors, other order: another spec
    with pytest.raises(
        SpecMismatchError, match=r"\(2 tensors, 64 values\): the sender's tensor names, shapes or"
    ):
        fedsqueeze.decode(blob, swapped)
    assert UpdateSpec.from_json(swapped.to_json()) == swapped
