"""Inputs shared by the codec tests: hypothesis strategies for specs and updates of every awkward kind."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import torch
from hypothesis import strategies as st

from fedsqueeze import UpdateSpec
from fedsqueeze.codecs import available, codec_class
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE

# Magnitude patterns every codec must survive.
KINDS = ("gauss", "zero", "const", "tiny", "huge", "mixed", "sparse", "heavy")

# The classical baselines of this package (their body headers are tampered with in the property tests).
BASELINES = ("topk", "randk", "seedproj", "qsgd", "signsgd", "powersgd", "compeft")
# The blockwise absmax quantizers (bitsandbytes-style); their body headers are tampered with too.
BLOCKWISE = ("blockwise8", "nf4", "fp4")


def plain_codecs() -> list[str]:
    """Registered codecs that encode and decode without extra context (learned codecs need decoder weights;
    the predictive wrapper a reference: tests/test_predictive.py has its property tests)."""
    return [
        n for n in available() if not (codec_class(n).uses_trained_model or codec_class(n).uses_reference)
    ]


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


# -- sources for the budget tests (tests/test_budget_codecs.py, tests/test_wf_ecq.py) ---------------------
def _t(a: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(shape))


def generated(kind: str, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One update of ``kind`` (12,288 values, LoRA-like matrices) for the budget tests."""
    rng = np.random.default_rng(seed)
    n, shape = 12288, (96, 128)
    if kind == "constant":  # ±c everywhere: what Adam's first steps give
        v = {"w": _t(np.sign(rng.standard_normal(n)), shape)}
    elif kind == "sparse":
        v = {"w": _t(np.where(rng.random(n) < 0.02, rng.standard_normal(n), 0.0), shape)}
    elif kind == "heavy":
        v = {"w": _t(rng.standard_t(2, n), shape)}
    elif kind == "peaky":  # 1 % large, the rest four decades smaller
        v = {"w": _t(np.where(rng.random(n) < 0.01, 1.0, 1e-4) * rng.standard_normal(n), shape)}
    elif kind == "mixed":  # six tensors, one decade apart
        v = {f"t{i}": _t(rng.standard_normal(2048) * 10.0**-i, (32, 64)) for i in range(6)}
    elif kind == "lora_ab":  # A of unit scale, B two decades smaller and half constant-magnitude
        b = np.where(rng.random(6144) < 0.5, np.sign(rng.standard_normal(6144)), rng.standard_normal(6144))
        v = {"a": _t(rng.standard_normal(6144), (48, 128)), "b": _t(0.01 * b, (128, 48))}
    else:
        v = {"w": _t(rng.standard_normal(n), shape)}
    return {k: t * scale for k, t in v.items()}


KINDS_BUDGET = ("gauss", "constant", "sparse", "heavy", "peaky", "mixed", "lora_ab")


@functools.cache
def lora_delta(steps: int) -> dict[str, torch.Tensor]:
    """``θ_before − θ_after`` of tiny-bert's LoRA (r 64, d = 16,384) after ``steps`` AdamW steps."""
    from fedsqueeze.models.loading import load_base_model, load_tokenizer
    from fedsqueeze.models.lora import apply_lora, read_tensors, split_trainable

    with torch.random.fork_rng():
        torch.manual_seed(0)
        tok = load_tokenizer("tiny-bert")
        model = load_base_model("tiny-bert", tok, num_labels=2)
        peft = apply_lora(
            model, "tiny-bert", r=64, alpha=64.0, dropout=0.0, target_modules=None, classification=True
        )
        lora, head = split_trainable(peft)
        before = read_tensors(lora)
        opt = torch.optim.AdamW([*lora.values(), *head.values()], lr=1e-3)
        g = torch.Generator().manual_seed(1)
        peft.train()
        for _ in range(steps):
            ids = torch.randint(5, 500, (8, 16), generator=g)
            loss = peft(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, 0] % 2).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = read_tensors(lora)
    return {k: before[k] - after[k] for k in before}
