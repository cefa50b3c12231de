"""Rate–distortion with and without predictive coding, on captured updates (``bench rd --predictive``).

For every captured update of a round ``r`` whose previous round ``r − 1`` was captured too, the reference is
the **mean of the updates captured in round r − 1** (plain mean over its clients): what every client and the
server would hold as the previous global step if the server applied the plain mean of the captured updates.
A run's real global step also has the server learning rate, momentum and the weighting by examples, and
averages the *decoded* updates; the plain mean of the raw updates stands in for it here. Each codec is
measured at each rate twice on the same update: plain, and wrapped in :class:`fedsqueeze.Predictive` (the
predictive frame counts its side information in its bits). ``db_gain_predictive`` is
``10 · log10(D_plain / D_predictive)``: positive when prediction lowers the distortion at the same target
rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..spec import UpdateSpec
from .rd import RDReference, make_codec, measure, sweep_jobs
from .sources import Source, load_captures

__all__ = [
    "DEFAULT_CODECS",
    "REFERENCE",
    "frame_modes",
    "predictive_sweep",
    "prev_mean_references",
    "summary",
]

DEFAULT_CODECS = ("wf_ecq", "flm_topk", "topk")
REFERENCE = "prev-mean"  # the reference of every measured update: the previous round's mean captured update


def prev_mean_references(
    captures: dict[int, dict[int, Source]],
) -> tuple[list[tuple[int, int, Source, torch.Tensor]], list[str]]:
    """Every update with a reference: ``(round, client, source, flat float32 reference)``, plus notes.

    The reference of round ``r`` is the plain mean of the updates captured in round ``r − 1``; the updates of
    the first captured round, and of a round whose previous round is missing, get none (a note says so).
    """
    out: list[tuple[int, int, Source, torch.Tensor]] = []
    notes: list[str] = []
    rounds = sorted(captures)
    for rnd in rounds:
        prev = captures.get(rnd - 1)
        if not prev:
            if rnd != rounds[0]:
                notes.append(f"round {rnd}: round {rnd - 1} was not captured, so it has no reference")
            continue
        spec = UpdateSpec.from_tensors(next(iter(prev.values())).tensors)
        acc = torch.zeros(spec.numel, dtype=torch.float64)
        for src in prev.values():
            acc += spec.flatten(src.tensors, torch.float64)
        mean = (acc / len(prev)).to(torch.float32)
        out.extend((rnd, client, src, mean) for client, src in sorted(captures[rnd].items()))
    return out, notes


def frame_modes(blob: bytes, n_tensors: int) -> dict[str, int]:
    """How many tensors of a frame use each predictor mode (a plain frame: all ``none``)."""
    from ..codecs.predictive import MODES, Predictive, _unpack_modes
    from ..wire.frame import HEADER, HEADER_SIZE

    counts = dict.fromkeys(MODES, 0)
    if HEADER.unpack_from(blob)[2] != Predictive.codec_id:
        counts["none"] = n_tensors
        return counts
    start = HEADER_SIZE + 10
    modes = _unpack_modes(blob[start : start + (2 * n_tensors + 7) // 8], n_tensors)
    for m in modes.tolist():
        counts[MODES[m]] += 1
    return counts


def predictive_sweep(
    path: str,
    codecs: Sequence[str],
    rates: Sequence[float],
    *,
    seed: int = 0,
    predictor: str = "auto",
    on_step: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[str]]:
    """Measure every codec and rate with and without prediction on every update of ``path`` with a reference.

    Parameters
    ----------
    path
        ``file:CAPTURES`` (or a path) of captured updates (see
        :func:`~fedsqueeze.bench.sources.load_captures`).
    codecs
        ``--codec`` strings (name or ``NAME:KEY=VALUE,...``), each the inner codec of the predictive rows.
    rates
        Target rates (bits/param of the whole frame) for codecs with a rate knob.
    seed
        Seed of the codecs.
    predictor
        The :class:`~fedsqueeze.Predictive` ``predictor`` option.
    on_step
        Called with a label after each (update, codec, rate).

    Returns
    -------
    rows, notes
        Two rows per measured point, the plain one (``predictive`` false) and the predictive one
        (``predictive`` true, with ``db_gain_predictive`` and the ``modes`` its frame uses), each with
        ``round``, ``client`` and ``reference``; notes on updates without a reference and on skipped
        (infeasible) points.

    Raises
    ------
    ConfigError
        No update of ``path`` has a reference (fewer than two consecutive rounds captured).
    """
    from ..codecs import Predictive

    updates, notes = prev_mean_references(load_captures(path))
    if not updates:
        raise ConfigError(
            f"{path}: --predictive needs updates of two consecutive rounds (capture them with "
            "`fedsqueeze run --capture-updates all`)"
        )
    rows: list[dict] = []
    skipped: dict[tuple[str, float | None], str] = {}
    for rnd, client, src, reference in updates:
        ref = RDReference(src)
        for text, rate in sweep_jobs(codecs, rates):
            label = f"r{rnd}/c{client} · {text}" + ("" if rate is None else f" @ {rate:g}")
            try:
                plain = measure(make_codec(text, rate), src, ref, seed=seed, target_rate=rate)
                codec = Predictive(make_codec(text, rate), predictor=predictor)
                frames: list[bytes] = []
                pred = measure(
                    codec, src, ref, seed=seed, target_rate=rate, reference=reference, on_frame=frames.append
                )
            except ConfigError as exc:
                skipped.setdefault((text, rate), str(exc))
                if on_step is not None:
                    on_step(label)
                continue
            blob_modes = frame_modes(frames[0], len(src.tensors))
            common = {"round": rnd, "client": client, "reference": REFERENCE, "codec": text}
            plain.update(common, predictive=False, db_gain_predictive=None, modes=None)
            gain = _gain(plain["rel_error"], pred["rel_error"])
            pred.update(
                common, predictive=True, predictor=predictor, db_gain_predictive=gain, modes=blob_modes
            )
            rows += [plain, pred]
            if on_step is not None:
                on_step(label)
    for (c, r), msg in skipped.items():
        notes.append(f"skipped {c} at {'defaults' if r is None else f'rate {r:g}'}: {msg}")
    return rows, notes


def _gain(plain: float, pred: float) -> float | None:
    if plain > 0 and pred > 0 and math.isfinite(plain) and math.isfinite(pred):
        return 10.0 * math.log10(plain / pred)
    return None


def summary(rows: list[dict]) -> list[dict]:
    """One line per (codec, target rate): means over the updates of the plain and predictive rows.

    ``db_gain_mean`` is the mean of the per-update ``db_gain_predictive``; ``db_gain_min`` / ``_max`` its
    range; ``db_gain_of_means`` is ``10 log10`` of the ratio of the mean distortions.
    """
    keys = list(dict.fromkeys((r["codec"], r["target_rate"]) for r in rows))
    out = []
    for codec, rate in keys:
        plain = [r for r in rows if (r["codec"], r["target_rate"]) == (codec, rate) and not r["predictive"]]
        pred = [r for r in rows if (r["codec"], r["target_rate"]) == (codec, rate) and r["predictive"]]
        gains = [r["db_gain_predictive"] for r in pred if r["db_gain_predictive"] is not None]
        e_plain = float(np.mean([r["rel_error"] for r in plain]))
        e_pred = float(np.mean([r["rel_error"] for r in pred]))
        out.append(
            {
                "codec": codec,
                "target_rate": rate,
                "updates": len(pred),
                "bits_per_param_plain": float(np.mean([r["bits_per_param"] for r in plain])),
                "bits_per_param_predictive": float(np.mean([r["bits_per_param"] for r in pred])),
                "max_bits_per_param_predictive": float(max(r["bits_per_param"] for r in pred)),
                "rel_error_plain": e_plain,
                "rel_error_predictive": e_pred,
                "db_gain_mean": float(np.mean(gains)) if gains else None,
                "db_gain_min": float(min(gains)) if gains else None,
                "db_gain_max": float(max(gains)) if gains else None,
                "db_gain_of_means": _gain(e_plain, e_pred),
            }
        )
    return out


def print_summary(rows: list[dict], notes: list[str], console, path: str) -> None:
    """The per-(codec, rate) table of :func:`summary` and the notes."""
    from rich.table import Table

    t = Table(
        title=f"rate–distortion with prediction (reference: previous round's mean update) · {path}",
        title_justify="left",
    )
    cols = (
        "codec",
        "target R",
        "updates",
        "bits/param plain",
        "bits/param pred.",
        "rel. error plain",
        "rel. error pred.",
        "dB gain mean",
        "dB gain min",
        "dB gain max",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "codec" else "right")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for s in sorted(summary(rows), key=lambda s: (s["codec"], s["target_rate"] or 0.0)):
        t.add_row(
            s["codec"],
            fmt(s["target_rate"], "g"),
            str(s["updates"]),
            f"{s['bits_per_param_plain']:.3f}",
            f"{s['bits_per_param_predictive']:.3f}",
            f"{s['rel_error_plain']:.4g}",
            f"{s['rel_error_predictive']:.4g}",
            fmt(s["db_gain_mean"], "+.2f"),
            fmt(s["db_gain_min"], "+.2f"),
            fmt(s["db_gain_max"], "+.2f"),
        )
    console.print(t)
    console.print(
        "dB gain = 10·log10(D plain / D predictive) per update at the same target rate (positive: prediction "
        "helps); the predictive frame's bits include its side information. Reference of round r: the plain "
        "mean of the updates captured in round r−1."
    )
    for n in notes:
        console.print(f"[yellow]note[/]: {n}")
