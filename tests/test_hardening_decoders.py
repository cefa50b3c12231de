"""Hostile headers: per codec, bodies with a valid frame and CRC whose fields claim absurd counts and widths.

Each must be refused with PayloadError quickly and without a large allocation: tracemalloc sees NumPy and
Python allocations in-process; a subprocess checks the RSS high-water mark, which also sees torch tensors.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fedsqueeze
from fedsqueeze import PayloadError, UpdateSpec
from fedsqueeze.codecs import get
from fedsqueeze.codecs.registry import by_id
from fedsqueeze.wire.bitpack import BitWriter
from fedsqueeze.wire.frame import pack_frame

SPEC = UpdateSpec.from_shapes({"l0.A": (8, 48), "l0.B": (48, 8), "l1.A": (8, 48), "l1.B": (48, 8)})
# A larger spec for the memory check: a decoder that trusted a claimed count would allocate GBs.
BIG = UpdateSpec.from_shapes({"a": (256, 1024), "b": (1024, 256)})

U32 = 2**32 - 1


def _u(*fields: tuple[int, int]) -> BitWriter:
    w = BitWriter()
    for value, width in fields:
        w.write_uint(value, width)
    return w


def _f32(w: BitWriter, *values: float) -> BitWriter:
    for v in values:
        w.write_f32(v)
    return w


def _blockwise_body(spec: UpdateSpec, bits: int, first_scale: float, code: int = 0) -> bytes:
    """A body of the right length for block 64: the first scale ``first_scale``, the others 1, every code
    ``code``."""
    nb = sum(-(-n // 64) for n in spec.sizes)
    w = _f32(_u((64, 32)), first_scale, *[1.0] * (nb - 1))
    w.write_uints(np.full(spec.numel, code, dtype=np.uint64), bits)
    return w.getvalue()


def hostile_reference(spec: UpdateSpec):
    """The reference hostile frames are decoded with (predictive bodies carry its hash, so their later
    fields are reached)."""
    import torch

    return (torch.arange(spec.numel) % 7 - 3).to(torch.float32)


def _predictive_bodies(spec: UpdateSpec) -> list[tuple[str, bytes]]:
    from fedsqueeze.codecs.predictive import reference_digest

    t = len(spec.sizes)
    nan, inf = float("nan"), float("inf")
    digest = reference_digest(hostile_reference(spec), spec)
    scalar_modes = _u(*[(1, 2)] * t)
    scalar_modes.align()
    modes = scalar_modes.getvalue()

    def head(version: int = 1, inner: int = 10, ref: bytes = digest, m: bytes = modes) -> bytes:
        return bytes([version, inner]) + ref + m

    def coefs(*values: float) -> bytes:
        return _f32(BitWriter(), *values).getvalue()

    ok = coefs(*[0.5] * t)
    topk_k_huge = _u((2**31, 32), (32, 8), (0, 8)).getvalue()
    columns = _u(*[(3, 2)] * t)
    columns.align()
    return [
        ("version 0", head(version=0) + ok),
        ("version 2", head(version=2) + ok),
        ("inner id 0", head(inner=0) + ok),
        ("inner id 255", head(inner=255) + ok),
        ("inner predictive", head(inner=60) + ok),
        ("inner cg_fedllm", head(inner=30) + ok),
        ("other reference", head(ref=b"\0" * 8) + ok),
        ("coefficients missing", head(m=columns.getvalue())),
        ("coefficient NaN", head() + coefs(nan, *[0.5] * (t - 1))),
        ("coefficient Inf", head() + coefs(*[0.5] * (t - 1), inf)),
        ("coefficient 1e7", head() + coefs(1e7, *[0.5] * (t - 1))),
        ("coefficient -3e38", head() + coefs(-3e38, *[0.5] * (t - 1))),
        ("inner topk k = 2^31", head() + ok + topk_k_huge),
        ("inner identity short", head(inner=1) + ok + b"\0" * 12),
    ]


def hostile_bodies(spec: UpdateSpec) -> dict[str, list[tuple[str, bytes]]]:
    """``{codec: [(what, body), ...]}``: header fields with absurd claims (the tail is zeros or 0xFF)."""
    d, t = spec.numel, len(spec.sizes)
    n = 1 << (d - 1).bit_length()  # seedproj's transform length
    nan, inf = float("nan"), float("inf")
    out: dict[str, list[tuple[str, bytes]]] = {
        "identity": [("short body", b"\0" * (4 * d - 4)), ("odd body", b"\0" * 3)],
        "fp16": [("short body", b"\0" * (2 * d - 2))],
        "bf16": [("short body", b"\0" * 7)],
        "topk": [
            ("k = 2^31", _u((2**31, 32), (32, 8), (0, 8)).getvalue()),
            ("k = 2^32-1 EF", _u((U32, 32), (32, 8), (1, 8)).getvalue()),
            ("k = d+1", _u((d + 1, 32), (32, 8), (0, 8)).getvalue()),
            ("width 64", _u((d, 32), (64, 8), (0, 8)).getvalue()),
            ("width 0", _u((d, 32), (0, 8), (0, 8)).getvalue()),
            ("width 255", _u((4, 32), (255, 8), (0, 8)).getvalue()),
            ("coder 7", _u((4, 32), (32, 8), (7, 8)).getvalue()),
            ("scale NaN", _f32(_u((4, 32), (8, 8), (0, 8)), nan).getvalue()),
            ("scale -1", _f32(_u((4, 32), (8, 8), (0, 8)), -1.0).getvalue()),
            ("scale Inf", _f32(_u((4, 32), (16, 8), (1, 8)), inf).getvalue()),
        ],
        "randk": [
            ("k = 2^31", _u((2**31, 32), (32, 8), (0, 8)).getvalue()),
            ("k = 2^32-1", _u((U32, 32), (16, 8), (1, 8)).getvalue()),
            ("k = d+1", _u((d + 1, 32), (32, 8), (0, 8)).getvalue()),
            ("width 64", _u((4, 32), (64, 8), (0, 8)).getvalue()),
            ("unbiased 2", _u((4, 32), (32, 8), (2, 8)).getvalue()),
            ("scale NaN", _f32(_u((4, 32), (16, 8), (0, 8)), nan).getvalue()),
        ],
        "seedproj": [
            ("k = 2^31", _u((2**31, 32), (8, 8), (0, 8)).getvalue()),
            ("k = 2^32-1", _u((U32, 32), (32, 8), (1, 8)).getvalue()),
            ("k = n+1", _u((n + 1, 32), (8, 8), (0, 8)).getvalue()),
            ("width 64", _u((4, 32), (64, 8), (0, 8)).getvalue()),
            ("width 0", _u((4, 32), (0, 8), (0, 8)).getvalue()),
            ("width 3", _u((4, 32), (3, 8), (0, 8)).getvalue()),
            ("unbiased 2", _u((4, 32), (32, 8), (2, 8)).getvalue()),
            # exact lengths (4 codes of 8 bits after the scale), so the scale itself is what is refused
            ("scale NaN", _f32(_u((4, 32), (8, 8), (0, 8)), nan).getvalue() + b"\0" * 4),
            ("scale -1", _f32(_u((4, 32), (8, 8), (1, 8)), -1.0).getvalue() + b"\0" * 4),
            ("scale Inf", _f32(_u((4, 32), (16, 8), (0, 8)), inf).getvalue() + b"\0" * 8),
        ],
        "qsgd": [
            ("bucket 0", _u((0, 32), (1, 16), (0, 8), (0, 8)).getvalue()),
            ("bucket 2^32-1", _u((U32, 32), (1, 16), (0, 8), (0, 8)).getvalue()),
            ("bucket 1 (max norms)", _u((1, 32), (65535, 16), (0, 8), (0, 8)).getvalue()),
            ("levels 0", _u((16, 32), (0, 16), (0, 8), (0, 8)).getvalue()),
            ("norm 9", _u((16, 32), (1, 16), (9, 8), (0, 8)).getvalue()),
            ("coding 5", _u((16, 32), (1, 16), (0, 8), (5, 8)).getvalue()),
            (
                "elias nnz = 2^31",
                _f32(_u((d, 32), (3, 16), (0, 8), (1, 8)), 1.0).getvalue() + struct.pack(">II", 2**31, U32),
            ),
            (
                "elias ulen = 2^32-1",
                _f32(_u((d, 32), (3, 16), (0, 8), (1, 8)), 1.0).getvalue() + struct.pack(">II", 4, U32),
            ),
            ("norms NaN", _f32(_u((d, 32), (1, 16), (0, 8), (0, 8)), nan).getvalue()),
        ],
        "signsgd": [("short", b"\0" * (4 * t)), ("scale NaN", struct.pack(">f", nan) * t + b"\0" * (d // 8))],
        "powersgd": [
            ("factor bits 64", _u((64, 8), *[(0, 16)] * t).getvalue()),
            ("ranks 65535", _u((32, 8), *[(65535, 16)] * t).getvalue()),
            ("rank not low", _u((32, 8), *[(8, 16)] * t).getvalue()),
            ("factor bits 0", _u((0, 8), *[(1, 16)] * t).getvalue()),
        ],
        "compeft": [
            ("k = 2^31", _f32(_u((2**31, 32), (0, 8)), 1.0).getvalue()),
            ("k = 2^32-1 EF", _f32(_u((U32, 32), (1, 8)), 1.0).getvalue()),
            ("coder 7", _f32(_u((4, 32), (7, 8)), 1.0).getvalue()),
            ("c = Inf", _f32(_u((0, 32), (0, 8)), inf).getvalue()),
            ("c = -1", _f32(_u((0, 32), (0, 8)), -1.0).getvalue()),
        ],
        "wf_ecq": [
            ("flags 0xFF", _f32(_u((0xFF, 8), (128, 8), (16, 32)), 1.0).getvalue()),
            ("rho 0", _f32(_u((0, 8), (0, 8), (16, 32)), 1.0).getvalue()),
            ("block 1", _f32(_u((0, 8), (128, 8), (1, 32)), 1.0).getvalue()),
            ("block 2^32-1", _f32(_u((0, 8), (128, 8), (U32, 32)), 1.0).getvalue()),
            ("step NaN", _f32(_u((0, 8), (128, 8), (16, 32)), nan).getvalue()),
            ("step 0", _f32(_u((0, 8), (128, 8), (16, 32)), 0.0).getvalue()),
            ("tcq with dither flags 3", _f32(_u((3, 8), (128, 8), (16, 32)), 1.0).getvalue()),
            ("tcq rho 112", _f32(_u((2, 8), (112, 8), (16, 32)), 1.0).getvalue()),
            ("tcq step Inf", _f32(_u((2, 8), (128, 8), (16, 32)), inf).getvalue()),
        ],
    }
    for name, bits, bad_code in (("blockwise8", 8, 0x80), ("nf4", 4, None), ("fp4", 4, 8)):
        cases = [
            ("block 0", _u((0, 32)).getvalue()),
            ("block 2^24+1", _u((2**24 + 1, 32)).getvalue()),
            ("block 2^32-1", _u((U32, 32)).getvalue()),
            ("scale NaN", _blockwise_body(spec, bits, nan)),
            ("scale Inf", _blockwise_body(spec, bits, inf)),
            ("scale -1", _blockwise_body(spec, bits, -1.0)),
        ]
        if bad_code is not None:  # a code outside the levels the encoder writes
            cases.append((f"code {bad_code}", _blockwise_body(spec, bits, 1.0, bad_code)))
        out[name] = cases
    packets = []
    for name, mode in (("fed_cvlc", 0), ("flm_topk", 0), ("flm_topk", 1)):
        s_one = max(1, (d - 1).bit_length())
        cases = [
            (f"mode {mode}: P = 2^32-1", _u((s_one, 5), (mode, 1), (0, 2), (U32, 32)).getvalue()),
            (f"mode {mode}: s = 0", _u((0, 5), (mode, 1), (0, 2), (1, 32)).getvalue()),
            (f"mode {mode}: reserved 3", _u((s_one, 5), (mode, 1), (3, 2), (1, 32)).getvalue()),
            (f"mode {mode}: s = 31", _u((31, 5), (mode, 1), (0, 2), (1, 32)).getvalue()),
        ]
        if mode == 0:  # one packet claiming 16383 entries of width 15 and b = 0
            w = _u((s_one, 5), (0, 1), (0, 2), (1, 32), (15, 4), (16383, 14))
            cases.append((f"{name}: n = 16383", _f32(w, 0.0, 1.0).getvalue()))
            w = _u((s_one, 5), (0, 1), (0, 2), (1, 32), (0, 4), (1, 14))
            cases.append((f"{name}: b = 0", _f32(w, 0.0, 1.0).getvalue()))
            w = _u((s_one, 5), (0, 1), (0, 2), (1, 32), (4, 4), (1, 14))
            cases.append((f"{name}: lo > hi", _f32(w, 2.0, 1.0).getvalue()))
        else:  # threshold mode with s = 1: m = d/2 interval counts, each claiming 3 (> its length 2)
            m = -(-d // 2)
            w = _u((1, 5), (1, 1), (0, 2), (0, 32))
            w.write_uints(np.full(m, 3, dtype=np.uint64), 2)
            cases.append(("flm_topk: k_j > L", w.getvalue()))
        packets.append((name, cases))
    for name, cases in packets:
        if name == "fed_cvlc":
            cases.append(("fed_cvlc: threshold mode", _u((11, 5), (1, 1), (0, 2), (0, 32)).getvalue()))
        out.setdefault(name, []).extend(cases)
    out["predictive"] = _predictive_bodies(spec)
    return out


def _tails(codec: str, spec: UpdateSpec, body: bytes) -> list[bytes]:
    """The header alone, padded with zeros, and padded with 0xFF up to the codec's body limit."""
    if codec in ("identity", "fp16", "bf16", "signsgd"):  # fixed-size bodies: padding would make them valid
        return [body]
    limit = by_id(get(codec).codec_id).max_body_bytes(spec)
    fill = max(0, min(limit, 1 << 16) - len(body))
    return [body, body + b"\0" * fill, body + b"\xff" * fill]


def _expect_refused(codec: str, blob: bytes, spec: UpdateSpec) -> float:
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError):
            fedsqueeze.decode(blob, spec, reference=hostile_reference(spec))
        with pytest.raises(PayloadError):
            fedsqueeze.decode(blob, spec)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    dt = time.perf_counter() - t0
    assert peak < 64 * 4 * spec.numel + (1 << 20), f"{codec}: allocated {peak} bytes"
    return dt


CODECS = sorted(hostile_bodies(SPEC))


def test_every_fuzzed_codec_has_hostile_cases() -> None:
    from support.fuzz_support import fuzz_codecs

    assert set(fuzz_codecs()) <= set(CODECS)


@pytest.mark.parametrize("codec", CODECS)
def test_hostile_headers_are_refused_fast(codec: str) -> None:
    cid = get(codec).codec_id
    for what, body in hostile_bodies(SPEC)[codec]:
        for b in _tails(codec, SPEC, body):
            dt = _expect_refused(codec, pack_frame(cid, SPEC, 7, b), SPEC)
            assert dt < 1.0, f"{codec} / {what}: refusing took {dt:.2f}s"


_RSS_SCRIPT = r"""
import gc, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import fedsqueeze, torch
from fedsqueeze import PayloadError
from fedsqueeze.codecs import get
from fedsqueeze.wire.frame import pack_frame
from test_hardening_decoders import BIG, _tails, hostile_bodies, hostile_reference
REF = hostile_reference(BIG)

def peak_kib():  # VmHWM (resettable via clear_refs on Linux), else ru_maxrss
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def reset_peak():
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass

def current_kib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return peak_kib()

frames = [(c, w, pack_frame(get(c).codec_id, BIG, 3, b))
          for c, cases in hostile_bodies(BIG).items() for w, body in cases for b in _tails(c, BIG, body)]
# warm up every decoder on a valid frame first, so lazily built tables do not count as hostile growth
for c in sorted({c for c, _, _ in frames}):
    u = BIG.unflatten(torch.randn(BIG.numel) * 0.01 + 0.01 * REF)
    extra = {"reference": REF} if get(c).uses_reference else {}
    fedsqueeze.decode(get(c).encode(u, seed=1, **extra), BIG, **extra)
reset_peak()
base = current_kib()
slow, bad = (0.0, ""), []
for c, w, blob in frames:
    t0 = time.perf_counter()
    try:
        fedsqueeze.decode(blob, BIG, reference=REF)
        bad.append(f"{c}/{w}: accepted")
    except PayloadError:
        pass
    except Exception as e:
        bad.append(f"{c}/{w}: {type(e).__name__}: {e}")
    dt = time.perf_counter() - t0
    if dt > slow[0]:
        slow = (dt, f"{c}/{w}")
grow = peak_kib() - base
# positive control: the same measurement does see a 128 MiB torch allocation
reset_peak()
before = current_kib()
x = torch.ones(32 * 2**20)
control = peak_kib() - before
print(json.dumps({"frames": len(frames), "rss_growth_kib": grow, "control_kib": control, "slowest": slow,
                  "bad": bad}))
"""


def test_hostile_headers_rss_high_water_including_torch() -> None:
    """Peak RSS (VmHWM) growth while decoding every hostile frame for a 524,288-entry spec, fresh process."""
    here = str(Path(__file__).parent)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, here], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["bad"] == [], res["bad"]
    # One float64 vector of d = 524,288 entries is 4 MiB; a trusted k = 2^31 claim would be >= 8 GiB.
    assert res["control_kib"] > 100 * 1024, res  # the probe sees torch memory
    assert res["rss_growth_kib"] < 64 * 1024, res
    assert res["slowest"][0] < 5.0, res
