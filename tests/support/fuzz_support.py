"""Payload mutators shared by the decoder fuzz tests and ``make fuzz``.

Every mutation of a valid frame must end in a correct decode or :class:`fedsqueeze.PayloadError`: never
another exception, a hang, NaN/Inf or an allocation beyond a small multiple of the spec's size.
"""

from __future__ import annotations

import functools
import signal
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import fedsqueeze
from fedsqueeze import PayloadError, UpdateSpec
from fedsqueeze.codecs import available, codec_class, get
from fedsqueeze.wire.frame import HEADER_SIZE

from .codec_cases import refresh_crc

FUZZ_SPEC = UpdateSpec.from_shapes({"l0.A": (8, 48), "l0.B": (48, 8), "l1.A": (8, 48), "l1.B": (48, 8)})
# The inner codec of the predictive frames, by frame seed (valid_frame's seeds 0..3).
PREDICTIVE_INNERS = ("topk", "wf_ecq", "flm_topk", "qsgd")


def fuzz_codecs() -> list[str]:
    """Codecs that decode without a trained model (learned codecs need their decoder weights); predictive
    frames are made and decoded against :func:`fuzz_reference`."""
    return [n for n in available() if not codec_class(n).uses_trained_model]


@functools.cache
def fuzz_reference(spec: UpdateSpec = FUZZ_SPEC) -> torch.Tensor:
    """The reference every fuzzed predictive frame is predicted from (flat, float32)."""
    g = torch.Generator().manual_seed(12345)
    return torch.randn(spec.numel, generator=g)


@functools.cache  # a few frames per codec, mutated many times: encode each once
def valid_frame(codec: str, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1e-3, 1.0, 30.0, 0.1])
    upd = {
        name: torch.randn(*shape, generator=g) * scales[i]
        for i, (name, shape) in enumerate(FUZZ_SPEC.entries)
    }
    if codec_class(codec).uses_reference:  # an update that follows the reference, so it is predicted
        ref = FUZZ_SPEC.unflatten(fuzz_reference())
        upd = {k: v + 0.8 * scales[i] * ref[k] for i, (k, v) in enumerate(upd.items())}
        inner = PREDICTIVE_INNERS[seed % len(PREDICTIVE_INNERS)]
        return get(codec, inner=inner).encode(upd, reference=fuzz_reference(), seed=seed)
    return get(codec).encode(upd, seed=seed)


def mutate(blob: bytes, rng: np.random.Generator) -> bytes:
    """One random hostile edit of ``blob``."""
    b = bytearray(blob)
    kind = int(rng.integers(0, 8))
    body_len = len(b) - HEADER_SIZE
    if kind == 0:  # flip 1–8 bits in the body, CRC refreshed
        for _ in range(int(rng.integers(1, 9))):
            if body_len:
                pos = HEADER_SIZE + int(rng.integers(0, body_len))
                b[pos] ^= 1 << int(rng.integers(0, 8))
        return refresh_crc(bytes(b))
    if kind == 1:  # truncate the body, CRC refreshed
        cut = int(rng.integers(0, body_len + 1))
        return refresh_crc(bytes(b[: HEADER_SIZE + cut]))
    if kind == 2:  # extend the body with random bytes, CRC refreshed
        extra = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        return refresh_crc(bytes(b) + extra)
    if kind == 3:  # overwrite the first bytes of the body (codec header fields), CRC refreshed
        n = min(body_len, int(rng.integers(1, 17)))
        if n:
            b[HEADER_SIZE : HEADER_SIZE + n] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        return refresh_crc(bytes(b))
    if kind == 4:  # set a body byte to an extreme value, CRC refreshed
        if body_len:
            b[HEADER_SIZE + int(rng.integers(0, min(body_len, 32)))] = int(rng.choice([0, 0xFF, 0x7F, 0x80]))
        return refresh_crc(bytes(b))
    if kind == 5:  # swap the codec id to another registered codec (body of one codec read by another)
        ids = [get(n).codec_id for n in fuzz_codecs()]
        b[5] = int(rng.choice(ids))
        return bytes(b)
    if kind == 6:  # random header bytes, no CRC fix
        pos = int(rng.integers(0, HEADER_SIZE))
        b[pos] = int(rng.integers(0, 256))
        return bytes(b)
    # kind 7: plain bit flip anywhere, no CRC fix
    pos = int(rng.integers(0, len(b)))
    b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def check_decode(blob: bytes, spec: UpdateSpec = FUZZ_SPEC) -> str:
    """Decode hostile bytes with the fuzz reference (what predictive frames need; other frames ignore it)
    and without one; return the first outcome, "ok" or "rejected"; raise AssertionError on any other
    outcome of either."""
    outcome = _decode_once(blob, spec, fuzz_reference(spec))
    _decode_once(blob, spec, None)
    return outcome


def _decode_once(blob: bytes, spec: UpdateSpec, reference: torch.Tensor | None) -> str:
    limit = 64 * spec.numel * 4 + (1 << 20)  # numpy allocations allowed: a small multiple of the spec
    tracemalloc.start()
    try:
        out = fedsqueeze.decode(blob, spec, reference=reference)
    except PayloadError:
        return "rejected"
    except Exception as exc:
        raise AssertionError(f"decode raised {type(exc).__name__}: {exc}") from exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if peak > limit:
            raise AssertionError(f"decode allocated {peak} bytes (limit {limit})")
    for t in out.values():
        if not bool(torch.isfinite(t).all()):
            raise AssertionError("decode returned NaN or Inf")
    return "ok"


def run_campaign(cases: int, seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Run ``cases`` random mutations over every codec; returns outcome counts."""
    rng = np.random.default_rng(seed)
    codecs = fuzz_codecs()
    frames = {c: [valid_frame(c, s) for s in range(4)] for c in codecs}
    counts = {"ok": 0, "rejected": 0}
    for i in range(cases):
        codec = codecs[i % len(codecs)]
        blob = frames[codec][int(rng.integers(0, 4))]
        for _ in range(int(rng.integers(1, 3))):
            blob = mutate(blob, rng)
        counts[check_decode(blob)] += 1
        if progress and i % 1000 == 0:
            progress(i)
    return counts


class CaseTimeoutError(Exception):
    """Raised by the per-case alarm: a decode that runs past the time limit is a hang."""


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTimeoutError()


@dataclass
class CampaignReport:
    """Outcome of :func:`run_campaign_report`: counts, failures and the slowest case."""

    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "rejected": 0})
    failures: list[tuple[int, str, str, bytes]] = field(default_factory=list)  # (case, codec, error, blob)
    slowest: tuple[float, int, str] = (0.0, -1, "")  # (seconds, case, codec)
    per_codec_seconds: dict[str, float] = field(default_factory=dict)


def run_campaign_report(
    cases: int,
    seed: int = 0,
    *,
    time_limit: float = 10.0,
    progress: Callable[[int], None] | None = None,
    max_failures: int = 50,
) -> CampaignReport:
    """Like :func:`run_campaign` but keeps going after a failure, with a per-case hang guard.

    Each decode runs under ``signal.setitimer`` (``time_limit`` seconds, main thread, POSIX); a case that
    trips it is recorded as a ``hang`` failure. The slowest case is reported so a near-hang is visible too.
    """
    rng = np.random.default_rng(seed)
    codecs = fuzz_codecs()
    frames = {c: [valid_frame(c, s) for s in range(4)] for c in codecs}
    rep = CampaignReport(per_codec_seconds={c: 0.0 for c in codecs})
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for i in range(cases):
            codec = codecs[i % len(codecs)]
            blob = frames[codec][int(rng.integers(0, 4))]
            for _ in range(int(rng.integers(1, 3))):
                blob = mutate(blob, rng)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                outcome = check_decode(blob)
            except CaseTimeoutError:
                outcome, err = None, f"hang: decode ran past {time_limit}s"
            except AssertionError as exc:
                outcome, err = None, str(exc)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                if tracemalloc.is_tracing():
                    tracemalloc.stop()
            dt = time.perf_counter() - t0
            rep.per_codec_seconds[codec] += dt
            if dt > rep.slowest[0]:
                rep.slowest = (dt, i, codec)
            if outcome is None:
                rep.counts["failed"] = rep.counts.get("failed", 0) + 1
                if len(rep.failures) < max_failures:
                    rep.failures.append((i, codec, err, blob))
            else:
                rep.counts[outcome] += 1
            if progress and i % 1000 == 0:
                progress(i)
    finally:
        signal.signal(signal.SIGALRM, old)
    return rep
