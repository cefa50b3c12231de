"""Inputs shared by the codec tests: hypothesis strategies for specs and updates of every awkward kind."""

from __future__ import annotations

import zlib

import numpy as np
import torch
from hypothesis import strategies as st

from fedsqueeze import UpdateSpec
from fedsqueeze.codecs import available
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE

# Magnitude patterns every codec must survive.
KINDS = ("gauss", "zero", "const", "tiny", "huge", "mixed", "sparse", "heavy")

# The classical baselines of this package (their body headers are tampered with in the property tests).
BASELINES = ("topk", "randk", "qsgd", "signsgd", "powersgd", "compeft")


def plain_codecs() -> list[str]:
    """Registered codecs that decode without extra context (learned codecs need decoder weights)."""
    return [n for n in available() if not n.startswith("cg_fedllm")]


def make_values(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` float32 values of one magnitude pattern."""
    if kind == "zero":
        return np.zeros(n, dtype=np.float32)
    if kind == "const":
        return np.full(n, float(rng.choice([-2.5, 0.75, 3.0])), dtype=np.float32)
    if kind == "tiny":
        return (rng.standard_normal(n) * 1e-30).astype(np.float32)
    if kind == "huge":
        return (rng.standard_normal(n) * 1e30).astype(np.float32)
    if kind == "mixed":  # per-element scales over 60 decades
        return (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    if kind == "sparse":
        v = np.zeros(n, dtype=np.float32)
        m = max(1, n // 50)
        v[rng.choice(n, size=m, replace=False)] = rng.standard_normal(m)
        return v
    if kind == "heavy":
        return rng.standard_t(3, n).astype(np.float32)
    return rng.standard_normal(n).astype(np.float32)


@st.composite
def shapes(draw: st.DrawFn, max_numel: int = 3000) -> dict[str, tuple[int, ...]]:
    """1 to 4 tensors (1-D, 2-D or 3-D) of 1 to ``max_numel`` elements in total."""
    count = draw(st.integers(1, 4))
    out: dict[str, tuple[int, ...]] = {}
    budget = max_numel
    for i in range(count):
        ndim = draw(st.sampled_from([1, 2, 2, 3]))
        if ndim == 1:
            shape: tuple[int, ...] = (draw(st.integers(1, max(1, budget // 2))),)
        elif ndim == 2:
            a = draw(st.integers(1, 48))
            shape = (a, draw(st.integers(1, max(1, min(64, budget // (2 * a))))))
        else:
            shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 8)))
        n = int(np.prod(shape))
        if n > budget and out:
            break
        out[f"layer{i}.w"] = shape
        budget -= n
    return out


@st.composite
def updates(draw: st.DrawFn, max_numel: int = 3000) -> tuple[dict[str, torch.Tensor], int]:
    """``(update, seed)`` with a random spec, one magnitude pattern per tensor and a frame seed."""
    spec = draw(shapes(max_numel))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(KINDS))
    upd = {}
    for name, shape in spec.items():
        n = int(np.prod(shape))
        upd[name] = torch.from_numpy(make_values(kind, n, rng)).reshape(shape)
    return upd, draw(st.integers(0, 2**63))


def gaussian_update(spec: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) for k, s in spec.items()}


def rel_error(u: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> float:
    spec = UpdateSpec.from_tensors(u)
    a, b = spec.flatten(u, torch.float64), spec.flatten(v, torch.float64)
    return float(((a - b) ** 2).sum() / (a**2).sum())


def refresh_crc(blob: bytes) -> bytes:
    """Rewrite length and CRC after editing the body, so the body decoder itself is attacked."""
    body = blob[HEADER_SIZE:]
    magic, version, cid, flags, digest, seed, _, _ = HEADER.unpack_from(blob)
    return HEADER.pack(magic, version, cid, flags, digest, seed, len(body), zlib.crc32(body)) + body
