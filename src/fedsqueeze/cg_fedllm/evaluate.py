"""Evaluate CG-FedLLM on captured updates against its controls and TopK/FLM-TopK at equal bits.

    fedsqueeze bench cg runs/X/captures.safetensors --json docs/cg-fedllm-eval.json

Held out: the later rounds (last ``--holdout-rounds`` fraction) of the training clients, and every round of
``--holdout-clients`` unseen clients. TGAP trains on the rest: the paper's autoencoder (``normalize=none``,
ReLU ends, Tanh) for ``cg_fedllm`` and the sound one (``tensor_rms``, no ReLU ends, linear head) for
``cg_fedllm_q``. Every codec row is measured from real payload bytes (``bits_per_param`` = 8·len(frame)/d).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from ..codecs import codec_class, decode_flat, get
from ..errors import ConfigError
from ..spec import UpdateSpec
from .autoencoder import AEConfig
from .codec import CGFedLLM
from .codec_q import CGFedLLMQ
from .controls import identity_is_exact, score, shuffle_control, train_mean_predictor, zero_predictor
from .tgap import Captures, TGAPConfig, tgap_pretrain

__all__ = ["evaluate", "measure", "split_captures"]

PAPER_AE = AEConfig()
SOUND_AE = AEConfig(normalize="tensor_rms", relu_ends=False, tanh_head=False)


def split_captures(
    caps: Captures, holdout_rounds: float = 0.3, holdout_clients: float = 0.2, seed: int = 0
) -> dict[str, Captures]:
    """``train`` / ``later_rounds`` / ``unseen_clients`` (seeded choice of clients; rounds by time)."""
    rounds = sorted(set(caps.rounds))
    clients = sorted(set(caps.clients))
    n_late = round(holdout_rounds * len(rounds)) if len(rounds) > 1 else 0
    late = set(rounds[len(rounds) - n_late :]) if n_late else set()
    rng = np.random.default_rng(seed)
    n_unseen = min(round(holdout_clients * len(clients)), len(clients) - 1)
    unseen = set(rng.choice(clients, size=n_unseen, replace=False).tolist()) if n_unseen > 0 else set()
    pairs = list(zip(caps.rounds, caps.clients, strict=True))
    return {
        "train": caps.select([r not in late and c not in unseen for r, c in pairs]),
        "later_rounds": caps.select([r in late and c not in unseen for r, c in pairs]),
        "unseen_clients": caps.select([c in unseen for _, c in pairs]),
    }


def measure(codec: Any, targets: torch.Tensor, spec: UpdateSpec) -> dict[str, Any]:
    """Encode and decode every target with ``codec``; bits from the frames, plus distortion."""
    t0 = time.perf_counter()
    blobs = [codec.encode_with_spec(u.to(torch.float32), spec, seed=i) for i, u in enumerate(targets)]
    recon = torch.stack([decode_flat(b, spec) for b in blobs])
    return {
        "bits_per_param": float(np.mean([8 * len(b) / spec.numel for b in blobs])),
        **score(targets, recon, spec),
        "seconds": time.perf_counter() - t0,
    }


def _reconstructor(codec: Any, spec: UpdateSpec) -> Any:
    return lambda u: decode_flat(codec.encode_with_spec(u.to(torch.float32), spec), spec)


def evaluate(
    caps: Captures,
    *,
    tgap: TGAPConfig | None = None,
    holdout_rounds: float = 0.3,
    holdout_clients: float = 0.2,
    q_rates: tuple[float, ...] = (0.05, 0.1, 0.25),
    log: Any = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train both autoencoders on the training split; score every codec and control on the held-out sets.

    ``device`` is where TGAP trains (``cpu`` or ``cuda[:N]``); encoding, decoding and scoring run on the CPU.
    """
    tgap = tgap or TGAPConfig()
    split = split_captures(caps, holdout_rounds, holdout_clients, tgap.seed)
    train, spec = split["train"], caps.spec
    if len(train) == 0:
        raise ConfigError("the training split is empty; capture more rounds or clients")
    say = log or (lambda msg: None)
    say(f"TGAP on {len(train)} snapshots (d = {spec.numel}), {tgap.steps} steps per model")
    paper, paper_log = tgap_pretrain(train, ae=PAPER_AE, config=tgap, device=device)
    sound, sound_log = tgap_pretrain(train, ae=SOUND_AE, config=tgap, device=device)
    C, Q = CGFedLLM, CGFedLLMQ
    codecs: dict[str, Any] = {
        "cg_fedllm fp32 (paper AE)": C.from_model(paper),
        "cg_fedllm fp16 (paper AE)": C.from_model(paper, latent_dtype="fp16"),
        "cg_fedllm fp32 (sound AE)": C.from_model(sound),
    }
    for r in q_rates:
        codecs[f"cg_fedllm_q rate={r} (sound AE)"] = Q.from_model(sound, rate=r)
        codecs[f"cg_fedllm_q rate={r} (untrained block means)"] = Q(rate=r)
    out: dict[str, Any] = {
        "d": spec.numel,
        "splits": {k: len(v) for k, v in split.items()},
        "tgap": {
            "config": dataclasses.asdict(tgap),
            "paper": {k: v for k, v in paper_log.items() if k != "spec"},
            "sound": {k: v for k, v in sound_log.items() if k != "spec"},
        },
        "encoder_bytes": paper.encoder_bytes(),
        "results": {},
    }
    for name, held in split.items():
        if name == "train" or len(held) == 0:
            continue
        u = held.flats
        say(f"held-out set {name}: {len(held)} updates")
        rows: dict[str, Any] = {
            "zero predictor": score(u, zero_predictor(u), spec),
            "train-mean predictor": score(u, train_mean_predictor(train.flats, u), spec),
            "identity codec bit-exact": identity_is_exact(u, spec),
        }
        for label, codec in codecs.items():
            rows[label] = measure(codec, u, spec)
            if "fp32" in label:
                rows[label + " shuffled"] = score(u, shuffle_control(_reconstructor(codec, spec), u), spec)
        for ref in ("cg_fedllm fp32 (paper AE)", "cg_fedllm fp16 (paper AE)"):
            bpp = rows[ref]["bits_per_param"]
            for base in ("topk", "flm_topk"):
                opt = codec_class(base).rate_option
                assert opt is not None, f"{base} has a rate option"
                rows[f"{base} at {bpp:.3f} bpp"] = measure(get(base, **{opt: bpp}), u, spec)
        out["results"][name] = rows
    return out
