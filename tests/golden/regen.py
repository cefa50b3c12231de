"""Regenerate the golden payloads of tests/golden (run from anywhere: ``python tests/golden/regen.py CODEC``).

The golden files pin the wire format: ``tests/test_golden.py`` re-encodes the fixed input below with every
case's stored codec, options and seed and demands byte-identical frames, then decodes the stored frames and
demands the stored decoded vector. Regenerate a codec's files only when its wire format changes on purpose
(and say so in the change log); a regenerated file is a break with every payload already sent.

Usage::

    python tests/golden/regen.py topk qsgd      # re-encode the cases of these codecs (or add defaults)
    python tests/golden/regen.py --all          # every registered non-learned codec
    python tests/golden/regen.py --check        # report which stored cases differ; write nothing
    python tests/golden/regen.py wf_ecq --options '{"rate": 2.0}' --seed 7   # a codec with no case in CASES

A codec without an entry in :data:`CASES` gets one case with its default options (or ``--options``), named
after the codec. The input is built from integer arithmetic only (no RNG stream, no libm), so it is the same
on every platform and library version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze import UpdateSpec
from fedsqueeze.codecs import available, codec_class, decode_flat, get

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
FORMAT = 1


# The fixed spec: LoRA-like A/B pairs of different sizes, a 1-D tensor and a 3-D tensor (d = 2130).
SPEC_SHAPES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("layers.0.q_proj.lora_A", (8, 64)),
    ("layers.0.q_proj.lora_B", (64, 8)),
    ("layers.1.v_proj.lora_A", (4, 96)),
    ("layers.1.v_proj.lora_B", (96, 4)),
    ("layers.1.norm.bias", (50,)),
    ("head.conv.lora_A", (3, 8, 12)),
)
# Per-tensor scale exponents (powers of two keep the input exact): scales over ~12 decades in total.
SCALE_EXP = (-7, -14, 3, -20, 0, -30)

# name -> (codec, options, seed). Cover each codec's main paths; keep every frame a few KB.
CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    "identity": ("identity", {}, 0),
    "fp16": ("fp16", {}, 0),
    "bf16": ("bf16", {}, 0),
    "topk-fixed-fp32": ("topk", {"density": 0.05}, 1),
    "topk-ef-fp16": ("topk", {"density": 0.05, "value_bits": 16, "positions": "elias_fano"}, 2),
    "topk-ef-b6-stochastic": (
        "topk",
        {"density": 0.1, "value_bits": 6, "positions": "elias_fano", "rounding": "stochastic"},
        3,
    ),
    "topk-fixed-b2-rate": ("topk", {"rate": 1.5, "value_bits": 2, "positions": "fixed"}, 4),
    "randk-fp32": ("randk", {"density": 0.05}, 5),
    "randk-fp16-unbiased": ("randk", {"density": 0.05, "value_bits": 16, "unbiased": True}, 6),
    "seedproj-b8": ("seedproj", {"density": 0.05}, 32),
    "seedproj-fp32-unbiased": ("seedproj", {"density": 0.05, "value_bits": 32, "unbiased": True}, 33),
    "qsgd-fixed": ("qsgd", {}, 7),
    "qsgd-elias-l2": ("qsgd", {"coding": "elias", "norm": "l2", "levels": 4, "bucket": 64}, 8),
    "qsgd-elias-rate": ("qsgd", {"coding": "elias", "rate": 3.0}, 9),
    "signsgd": ("signsgd", {}, 10),
    "powersgd-r2-fp32": ("powersgd", {"rank": 2}, 11),
    "powersgd-r1-fp16-2iters": ("powersgd", {"rank": 1, "factor_bits": 16, "power_iters": 2}, 12),
    "compeft-ef": ("compeft", {"density": 0.05}, 13),
    "compeft-fixed-alpha": ("compeft", {"density": 0.1, "positions": "fixed", "alpha": 1.5}, 14),
    "fed_cvlc": ("fed_cvlc", {}, 15),
    "fed_cvlc-rate": ("fed_cvlc", {"rate": 3.0, "b_min": 2, "b_max": 8}, 16),
    "fed_cvlc-3packets": ("fed_cvlc", {"rate": 12.0}, 21),
    # The exact packet-plan DP pinned on its own (the default search="fast" gives these same bytes here).
    "fed_cvlc-exact": ("fed_cvlc", {"search": "exact"}, 15),
    "fed_cvlc-exact-rate": ("fed_cvlc", {"rate": 3.0, "b_min": 2, "b_max": 8, "search": "exact"}, 16),
    "fed_cvlc-exact-3packets": ("fed_cvlc", {"rate": 12.0, "search": "exact"}, 21),
    "flm_topk-threshold": ("flm_topk", {}, 17),
    "flm_topk-even": ("flm_topk", {"mode": "even"}, 18),
    "flm_topk-threshold-L64-rate": ("flm_topk", {"rate": 3.0, "interval_size": 64}, 19),
    "flm_topk-even-rate": ("flm_topk", {"mode": "even", "rate": 4.0, "b_min": 1, "b_max": 15}, 20),
    "flm_topk-even-L1024-3packets": ("flm_topk", {"mode": "even", "rate": 12.0, "interval_size": 1024}, 22),
    "flm_topk-threshold-3packets": ("flm_topk", {"rate": 12.0, "b_min": 2}, 23),
    "wf_ecq": ("wf_ecq", {}, 24),
    "wf_ecq-rate-dither-block256": ("wf_ecq", {"rate": 3.0, "dither": True, "block": 256}, 25),
    "wf_ecq-tcq-block256": ("wf_ecq", {"rate": 2.0, "quantizer": "tcq", "block": 256}, 26),
    "blockwise8": ("blockwise8", {}, 27),
    "blockwise8-block4096": ("blockwise8", {"block": 4096}, 28),
    "nf4": ("nf4", {}, 29),
    "nf4-block100": ("nf4", {"block": 100}, 30),
    "fp4": ("fp4", {}, 31),
    # predictive frames are encoded and decoded against golden_reference()
    "predictive-topk": (
        "predictive",
        {
            "inner": "topk",
            "inner_options": {"rate": 3.0, "value_bits": 8, "positions": "elias_fano"},
            "predictor": "auto",
        },
        27,
    ),
}


def golden_spec() -> UpdateSpec:
    return UpdateSpec(SPEC_SHAPES)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on uint64 (wrapping integer arithmetic only)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def golden_input() -> dict[str, torch.Tensor]:
    """The fixed update: bell-shaped values (sum of 4 uniforms), per-tensor scales over ~12 decades,
    outliers (x64 every 37th entry) and exact zeros (every 11th entry of the 1-D tensor).

    Only integer ops, float64 sums of exactly representable numbers and power-of-two scalings are used,
    so the result is bit-identical everywhere.
    """
    out: dict[str, torch.Tensor] = {}
    base = 0
    for (name, shape), e in zip(SPEC_SHAPES, SCALE_EXP, strict=True):
        n = int(np.prod(shape))
        i = np.arange(base, base + n, dtype=np.uint64)
        u = np.zeros(n, dtype=np.float64)
        for j in range(4):
            h = _splitmix64(i * np.uint64(4) + np.uint64(j))
            u += (h >> np.uint64(11)).astype(np.float64) * 2.0**-53  # exact uniform in [0, 1)
        v = (u - 2.0) * 2.0 ** (e + 1)
        v = np.where(np.arange(n) % 37 == 5, v * 64.0, v)
        if len(shape) == 1:
            v = np.where(np.arange(n) % 11 == 3, 0.0, v)
        out[name] = torch.from_numpy(v.astype(np.float32).reshape(shape))
        base += n
    return out


def golden_reference() -> dict[str, torch.Tensor]:
    """The fixed reference of the predictive cases: per tensor a multiple of the golden input (5/4, 3/4, 1/2,
    ...) plus a second bell-shaped stream at 1/8 of its scale, so the predictor has something to fit.

    Built like :func:`golden_input` (integer ops and exact float64 sums; one rounding to float32).
    """
    mult = (1.25, 0.75, 0.5, 1.0, 0.875, 1.5)
    out: dict[str, torch.Tensor] = {}
    base = 1 << 20  # another part of the SplitMix64 stream than the input's
    for (name, shape), e, m in zip(SPEC_SHAPES, SCALE_EXP, mult, strict=True):
        n = int(np.prod(shape))
        i = np.arange(base, base + n, dtype=np.uint64)
        u = np.zeros(n, dtype=np.float64)
        for j in range(4):
            h = _splitmix64(i * np.uint64(4) + np.uint64(j))
            u += (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
        x = golden_input()[name].numpy().reshape(-1).astype(np.float64)
        v = m * x + (u - 2.0) * 2.0 ** (e - 2)
        out[name] = torch.from_numpy(v.astype(np.float32).reshape(shape))
        base += n
    return out


def uses_reference(codec: str) -> bool:
    """True for codecs whose golden frames are encoded and decoded against :func:`golden_reference`."""
    return bool(codec_class(codec).uses_reference)


def input_sha256(update: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in update.values():
        h.update(t.numpy().astype("<f4").tobytes())
    return h.hexdigest()


def decoded_sha256(flat: torch.Tensor) -> str:
    return hashlib.sha256(flat.numpy().astype("<f4").tobytes()).hexdigest()


def encode_case(codec: str, options: dict[str, Any], seed: int) -> bytes:
    """Encode the golden input with a fresh codec instance (stateful codecs start from empty state); a
    predictive codec against :func:`golden_reference`."""
    if uses_reference(codec):
        return get(codec, **options).encode(golden_input(), reference=golden_reference(), seed=seed)
    return get(codec, **options).encode(golden_input(), seed=seed)


def decode_case(codec: str, blob: bytes) -> torch.Tensor:
    """Decode a golden frame as the server would (a predictive one with :func:`golden_reference`)."""
    reference = golden_reference() if uses_reference(codec) else None
    return decode_flat(blob, golden_spec(), reference=reference)


def golden_codecs() -> list[str]:
    """Registered codecs that must have a golden case (all but the learned ones)."""
    # codecs with a trained model need decoder weights (context) and are pinned by their own tests
    return [n for n in available() if not codec_class(n).uses_trained_model]


def load_manifest() -> dict[str, Any]:
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text())
    return {"format": FORMAT, "cases": {}}


def make_entry(name: str, codec: str, options: dict[str, Any], seed: int) -> tuple[dict[str, Any], bytes]:
    blob = encode_case(codec, options, seed)
    flat = decode_case(codec, blob)
    entry = {
        "codec": codec,
        "options": options,
        "seed": seed,
        "file": f"{name}.bin",
        "length": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "decoded_sha256": decoded_sha256(flat),
        "decoded_nonzeros": int(torch.count_nonzero(flat)),
    }
    return entry, blob


def cases_for(codec: str, options: dict[str, Any] | None, seed: int | None) -> dict[str, tuple]:
    if options is not None or seed is not None:
        return {codec: (codec, options or {}, 0 if seed is None else seed)}
    found = {k: v for k, v in CASES.items() if v[0] == codec}
    return found or {codec: (codec, {}, 0)}


def write(manifest: dict[str, Any]) -> None:
    manifest["format"] = FORMAT
    manifest["input"] = {
        "spec": golden_spec().to_json(),
        "spec_digest": golden_spec().digest.hex(),
        "sha256": input_sha256(golden_input()),
        "builder": "tests/golden/regen.py:golden_input",
        "reference_sha256": input_sha256(golden_reference()),
        "reference_builder": "tests/golden/regen.py:golden_reference",
    }
    manifest["cases"] = dict(sorted(manifest["cases"].items()))
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("codecs", nargs="*", help="codec names whose golden cases to (re)generate")
    p.add_argument("--all", action="store_true", help="every registered non-learned codec")
    p.add_argument("--check", action="store_true", help="only report stored cases that differ")
    p.add_argument("--options", type=json.loads, default=None, help="JSON options (one default case)")
    p.add_argument("--seed", type=int, default=None, help="frame seed of that case")
    args = p.parse_args(argv)
    manifest = load_manifest()
    if args.check:
        bad = 0
        for name, e in manifest["cases"].items():
            blob = encode_case(e["codec"], e["options"], e["seed"])
            if hashlib.sha256(blob).hexdigest() != e["sha256"]:
                bad += 1
                print(f"DIFFERS  {name} ({e['codec']}): {len(blob)} bytes now, {e['length']} stored")
        print(f"{len(manifest['cases']) - bad} cases identical, {bad} differ")
        return 1 if bad else 0
    codecs = golden_codecs() if args.all else args.codecs
    if not codecs:
        p.error("name at least one codec, or --all")
    known = set(available())
    for codec in codecs:
        if codec not in known:
            p.error(f"unknown codec {codec!r}; registered: {', '.join(sorted(known))}")
    for codec in codecs:
        # Drop this codec's old cases so renamed/removed ones do not linger.
        manifest["cases"] = {k: v for k, v in manifest["cases"].items() if v["codec"] != codec}
        for name, (c, options, seed) in cases_for(codec, args.options, args.seed).items():
            entry, blob = make_entry(name, c, options, seed)
            (HERE / entry["file"]).write_bytes(blob)
            manifest["cases"][name] = entry
            print(f"wrote {entry['file']}: {entry['length']} bytes, sha256 {entry['sha256'][:16]}")
    stale = {f.name for f in HERE.glob("*.bin")} - {e["file"] for e in manifest["cases"].values()}
    for f in sorted(stale):
        (HERE / f).unlink()
        print(f"removed stale {f}")
    write(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
