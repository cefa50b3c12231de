"""Rate–distortion benchmark: every codec on synthetic and captured updates, against the R-D limits.

Each codec with a rate knob (``Codec.rate_option``) is run at every target rate; codecs without one give a
single point at their defaults (so does a codec for which every target rate is infeasible). The rate is
measured from the payload (``8 * len(payload) / d``, 32-byte header included), the update is decoded with
``fedsqueeze.decode`` exactly as a server would, and the distortion is ``‖u − û‖² / ‖u‖²``. Reference curves:
the Gaussian D(R) = 2^(−2R) (an achievable target for any source of that variance, not a lower bound),
reverse water-filling over the per-tensor variances, and the memoryless Shannon lower bound.
Each point is scored against the curves at its measured rate and, when it has one, at its target rate too:
a frame that spends far fewer bits than asked (``underfilled``) sits near the curves at its own tiny rate,
but far above them at the rate it was asked for.
Sources: see ``fedsqueeze.bench.sources``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ..config.coerce import parse_codec  # re-exported: the --codec grammar
from ..errors import ConfigError
from .sources import Source

if TYPE_CHECKING:
    from ..codecs import Codec

__all__ = [
    "DEFAULT_RATES",
    "TARGET_FIELDS",
    "RDReference",
    "default_codecs",
    "measure",
    "sweep",
]

DEFAULT_RATES = (0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_SOURCES = ("gaussian", "blocks")
DEFAULT_OUT = "runs/bench"
UNDERFILL_FRACTION = 0.5  # a point whose measured rate is below this fraction of its target is underfilled


def default_codecs() -> list[str]:
    """Every registered codec except the learned CG-FedLLM ones (they need pre-training first) and the
    predictive wrapper (it needs a reference: ``--predictive`` measures it on captured updates)."""
    from ..codecs import available, codec_class

    return [
        n for n in available() if not (codec_class(n).uses_trained_model or codec_class(n).uses_reference)
    ]


# -- references ----------------------------------------------------------------------------------------


class RDReference:
    """The three reference curves of one source, as functions of the rate (bits/param)."""

    def __init__(self, source: Source) -> None:
        from ..analysis import rd

        self._rd = rd
        self.variances, self.sizes = source.blocks()
        self.ratios = source.entropy_ratios()

    def gaussian(self, rate):
        return self._rd.gaussian_dr(rate)

    def waterfilling(self, rate):
        return self._rd.waterfill_dr(rate, self.variances, self.sizes)

    def slb(self, rate):
        return self._rd.slb_blocks(rate, self.variances, self.sizes, self.ratios)


# The fields of a row scored at its target rate (None for points without one).
TARGET_FIELDS = (
    "d_gaussian_at_target",
    "d_waterfilling_at_target",
    "d_slb_at_target",
    "db_vs_gaussian_at_target",
    "db_vs_waterfilling_at_target",
    "db_vs_slb_at_target",
    "rate_fraction",
    "underfilled",
)


def _db(num: float, den: float) -> float | None:
    if num > 0 and den > 0 and math.isfinite(num) and math.isfinite(den):
        return 10.0 * math.log10(num / den)
    return None


# -- one measurement -----------------------------------------------------------------------------------


def measure(
    codec,
    source: Source,
    ref: RDReference,
    *,
    seed: int = 0,
    target_rate: float | None = None,
    reference=None,
    on_frame: Callable[[bytes], None] | None = None,
) -> dict:
    """Encode, decode (through ``fedsqueeze.decode``) and score one codec on one source.

    Parameters
    ----------
    codec
        Anything with ``name``, ``encode(tensors, seed=...)`` giving a frame, and ``options()``.
    source, ref
        The update and its reference curves.
    seed
        Seed of the codec.
    target_rate
        The bits/param the codec was asked for (``None``: a codec at its defaults).
    reference
        For a predictive codec (``codec.encode(tensors, reference=..., seed=...)``): the reference both ends
        hold, also given to ``fedsqueeze.decode``. ``None`` for every other codec.
    on_frame
        Called with the frame (e.g. to inspect what a predictive frame chose).

    Returns
    -------
    dict
        One row. ``d_X`` and ``db_vs_X`` (X in gaussian, waterfilling, slb) compare the distortion with the
        curves at the measured rate; ``d_X_at_target`` and ``db_vs_X_at_target`` at ``target_rate``;
        ``rate_fraction`` is measured / target and ``underfilled`` is true when the measured rate is below
        ``UNDERFILL_FRACTION`` of the target. The target-rate fields are ``None`` without a target rate.
    """
    from .. import decode
    from ..spec import UpdateSpec

    spec = UpdateSpec.from_tensors(source.tensors)
    d = spec.numel
    t0 = time.perf_counter()
    if reference is None:
        blob = codec.encode(source.tensors, seed=seed)
    else:
        blob = codec.encode(source.tensors, reference=reference, seed=seed)
    t1 = time.perf_counter()
    out = decode(blob, spec, reference=reference)
    t2 = time.perf_counter()
    if on_frame is not None:
        on_frame(blob)
    u = spec.flatten(source.tensors, torch.float64)
    uh = spec.flatten(out, torch.float64)
    energy = float(u.square().sum())
    err = float((u - uh).square().sum()) / energy
    nh = float(uh.norm())
    cos = float(u @ uh) / (math.sqrt(energy) * nh) if nh > 0 else 0.0
    rate = 8.0 * len(blob) / d
    d_g = float(ref.gaussian(rate))
    d_wf = float(ref.waterfilling(rate))
    d_slb = float(ref.slb(rate))
    at: dict[str, float | bool | None] = dict.fromkeys(TARGET_FIELDS)
    if target_rate is not None and target_rate > 0:
        for key in ("gaussian", "waterfilling", "slb"):
            d_ref = float(getattr(ref, key)(target_rate))
            at[f"d_{key}_at_target"] = d_ref
            at[f"db_vs_{key}_at_target"] = _db(err, d_ref)
        at["rate_fraction"] = rate / target_rate
        at["underfilled"] = rate < UNDERFILL_FRACTION * target_rate
    return {
        "codec": codec.name,
        "source": source.name,
        "d": d,
        "target_rate": target_rate,
        "bits_per_param": rate,
        "payload_bytes": len(blob),
        "rel_error": err,
        "cosine": cos,
        "gain_opt_error": max(0.0, 1.0 - cos * cos),
        "norm_ratio": nh / math.sqrt(energy),
        "snr_db": _db(1.0, err),
        "d_gaussian": d_g,
        "d_waterfilling": d_wf,
        "d_slb": d_slb,
        "db_vs_gaussian": _db(err, d_g),
        "db_vs_waterfilling": _db(err, d_wf),
        "db_vs_slb": _db(err, d_slb),
        **at,
        # bits spent beyond what the Gaussian R-D function needs for this distortion
        "bit_overhead": rate - 0.5 * math.log2(1.0 / err) if err > 0 else None,
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
        "seed": seed,
        "options": codec.options(),
    }


def make_codec(text: str, rate: float | None = None) -> Codec:
    """The codec of a ``--codec`` string, at a target rate (``None``: the string's own options)."""
    from ..codecs import codec_class, get

    name, opts = parse_codec(text)
    if rate is not None:
        option = codec_class(name).rate_option
        if option is None:
            raise ConfigError(f"codec {name!r} has a fixed rate; it takes no target rate")
        opts[option] = rate
    return get(name, **opts)


def sweep_jobs(codecs: Sequence[str], rates: Sequence[float]) -> list[tuple[str, float | None]]:
    from ..codecs import codec_class

    jobs: list[tuple[str, float | None]] = []
    for text in codecs:
        cls = codec_class(parse_codec(text)[0])
        jobs.extend((text, r) for r in rates) if cls.rate_option else jobs.append((text, None))
    return jobs


def sweep(
    sources: Iterable[Source],
    codecs: Sequence[str],
    rates: Sequence[float],
    *,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[str], dict[str, RDReference]]:
    """Run every (source, codec, rate).

    Returns
    -------
    rows, notes, refs
        One dict per measured point; notes on skipped (infeasible, ``ConfigError``) points and on codec errors
        (which start with ``"ERROR"``); the :class:`RDReference` of each source by name.
    """
    from ..codecs import codec_class

    rows: list[dict] = []
    skipped: dict[tuple[str, str], tuple[list[str], str]] = {}
    errors: list[str] = []
    refs: dict[str, RDReference] = {}
    jobs = sweep_jobs(codecs, rates)
    for src in sources:
        ref = refs[src.name] = RDReference(src)
        for name, rate in jobs:
            label = f"{src.name} · {name}" + ("" if rate is None else f" @ {rate:g}")
            try:
                row = measure(make_codec(name, rate), src, ref, seed=seed, target_rate=rate)
                rows.append(_label(row, name))
            except ConfigError as exc:
                rs, _ = skipped.setdefault((src.name, name), ([], str(exc)))
                rs.append("defaults" if rate is None else f"{rate:g}")
            except Exception as exc:  # a codec bug: report it, keep sweeping, exit non-zero at the end
                errors.append(f"ERROR {label}: {type(exc).__name__}: {exc}")
            if on_step is not None:
                on_step(label)
        for name in codecs:  # a codec whose every target rate is infeasible still gets its default point
            rs, msg = skipped.get((src.name, name), ([], ""))
            if rates and len(rs) == len(rates) and codec_class(parse_codec(name)[0]).rate_option:
                try:
                    rows.append(_label(measure(make_codec(name, None), src, ref, seed=seed), name))
                    skipped[(src.name, name)] = (rs, msg + " [measured at its defaults instead]")
                except ConfigError:
                    pass
    notes = [f"skipped {c} on {s} at rate(s) {', '.join(rs)}: {msg}" for (s, c), (rs, msg) in skipped.items()]
    return rows, notes, refs


def _label(row: dict, text: str) -> dict:
    """Rows of a codec given with options are labelled with the whole ``--codec`` string."""
    row["codec"] = text
    return row


# -- output --------------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2g}%"


def _underfill_note(row: dict) -> str:
    """One line naming an underfilled point: codec, source, target and measured rates."""
    return (
        f"⚠ underfilled: {row['codec']} on {row['source']} at target {row['target_rate']:g} bits/param used "
        f"{row['bits_per_param']:.3g}, {_percent(row['rate_fraction'])} of target: "
        "judge it by dB vs WF @target"
    )


def print_table(rows: list[dict], notes: list[str], console) -> None:
    """Print one table per source, then the footnote on the dB columns and the sweep's notes.

    Points that used under ``UNDERFILL_FRACTION`` of their target rate are marked in their row (``⚠ 2%``
    before the measured bits/param) and listed under their source's table (``⚠ underfilled: ... used 2% of
    target``).
    """
    from rich.table import Table
    from rich.text import Text

    for src in dict.fromkeys(r["source"] for r in rows):
        t = Table(title=f"rate–distortion · source {src}", title_justify="left")
        for col in (
            "codec",
            "target R",
            "bits/param",
            "rel. error",
            "1−cos²",
            "cos",
            "dB vs WF",
            "dB vs WF @target",
            "dB vs Gauss",
            "dB vs SLB",
            "encode s",
            "decode s",
        ):
            t.add_column(col, justify="left" if col == "codec" else "right")
        src_rows = sorted(
            (r for r in rows if r["source"] == src), key=lambda r: (r["codec"], r["bits_per_param"])
        )
        for r in src_rows:
            bpp = f"{r['bits_per_param']:.3f}"
            if r.get("underfilled"):
                bpp = f"[bold red]⚠ {_percent(r['rate_fraction'])}[/] {bpp}"
            t.add_row(
                r["codec"],
                _fmt(r["target_rate"], "g"),
                bpp,
                f"{r['rel_error']:.4g}",
                f"{r['gain_opt_error']:.4g}",
                f"{r['cosine']:.4f}",
                _fmt(r["db_vs_waterfilling"], "+.2f"),
                _fmt(r.get("db_vs_waterfilling_at_target"), "+.2f"),
                _fmt(r["db_vs_gaussian"], "+.2f"),
                _fmt(r["db_vs_slb"], "+.2f"),
                f"{r['encode_s']:.3f}",
                f"{r['decode_s']:.3f}",
            )
        console.print(t)
        for r in src_rows:
            if r.get("underfilled"):
                console.print(Text(_underfill_note(r), style="bold red"))
    console.print(
        "dB vs X = 10·log10(D / D_X(R measured)); negative beats X. dB vs WF @target = "
        "10·log10(D / D_WF(R target)): against water-filling at the rate asked for (- without a target "
        "rate), so a frame that spends far fewer bits than asked cannot look close to the limit. "
        f"⚠ N% = the frame used N% (< {UNDERFILL_FRACTION:.0%}) of its target rate. WF = reverse "
        "water-filling over the per-tensor variances, SLB = memoryless Shannon lower bound."
    )
    for n in notes:
        console.print(f"[red]{n}[/]" if n.startswith("ERROR") else f"[yellow]note[/]: {n}")
