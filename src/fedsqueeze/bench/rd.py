"""Rate–distortion benchmark: every codec on synthetic and captured updates, against the R-D limits.

Each codec with a rate knob (``Codec.rate_option``) is run at every target rate; codecs without one give a
single point at their defaults (so does a codec for which every target rate is infeasible). The rate is
measured from the payload (``8 * len(payload) / d``, 32-byte header included), the update is decoded with
``fedsqueeze.decode`` exactly as a server would, and the distortion is ``‖u − û‖² / ‖u‖²``. Reference curves:
the Gaussian D(R) = 2^(−2R) (an achievable target for any source of that variance, not a lower bound),
reverse water-filling over the per-tensor variances, and the memoryless Shannon lower bound.
Sources: see ``fedsqueeze.bench.sources``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..strict_json import finite_or_none
from .sources import Source, load_source

__all__ = ["DEFAULT_RATES", "RDReference", "add_arguments", "default_codecs", "main", "measure", "sweep"]

DEFAULT_RATES = (0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_SOURCES = ("gaussian", "blocks")
DEFAULT_OUT = "runs/bench"


def default_codecs() -> list[str]:
    """Every registered codec except the learned CG-FedLLM ones (they need pre-training first)."""
    from ..codecs import available

    return [n for n in available() if not n.startswith("cg_fedllm")]


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise argparse.ArgumentTypeError(f"rates must be positive bits/param, got {text!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        metavar="NAME",
        help="gaussian, laplace, student-t, blocks, file:PATH[#r3/c7] (repeatable; default gaussian, blocks)",
    )
    parser.add_argument(
        "--codec",
        action="append",
        metavar="NAME",
        help="codec NAME or NAME:KEY=VALUE,... (repeatable; default: all registered except cg_fedllm*)",
    )
    parser.add_argument(
        "--rates",
        type=_floats,
        default=list(DEFAULT_RATES),
        metavar="R,R,...",
        help="target bits/param for codecs with a rate knob (default 0.1,0.25,0.5,1,2)",
    )
    parser.add_argument(
        "--d",
        type=int,
        default=None,
        help="vector length of synthetic sources (default 2^20 i.i.d.; blocks 96 x 16,384)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the codecs (default 0)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--json", default=None, metavar="PATH", help="JSON rows (default OUT/rd.json)")
    parser.add_argument("--plot", default=None, metavar="PATH", help="plot (default OUT/rd.png)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")


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


def _db(num: float, den: float) -> float | None:
    if num > 0 and den > 0 and math.isfinite(num) and math.isfinite(den):
        return 10.0 * math.log10(num / den)
    return None


# -- one measurement -----------------------------------------------------------------------------------


def measure(
    codec, source: Source, ref: RDReference, *, seed: int = 0, target_rate: float | None = None
) -> dict:
    """Encode, decode (through ``fedsqueeze.decode``) and score one codec on one source."""
    from .. import decode
    from ..spec import UpdateSpec

    spec = UpdateSpec.from_tensors(source.tensors)
    d = spec.numel
    t0 = time.perf_counter()
    blob = codec.encode(source.tensors, seed=seed)
    t1 = time.perf_counter()
    out = decode(blob, spec)
    t2 = time.perf_counter()
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
        # bits spent beyond what the Gaussian R-D function needs for this distortion
        "bit_overhead": rate - 0.5 * math.log2(1.0 / err) if err > 0 else None,
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
        "seed": seed,
        "options": codec.options(),
    }


def parse_codec(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:KEY=VALUE,...`` (values as JSON where they parse, else strings).

    Examples: ``wf_ecq``, ``wf_ecq:quantizer=scalar``, ``topk:value_bits=16,positions=elias_fano``.
    """
    name, _, rest = text.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"codec option {item!r} in {text!r} must be KEY=VALUE (wf_ecq:quantizer=tcq)")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value.strip()
    return name.strip(), opts


def make_codec(text: str, rate: float | None = None):
    """The codec of a ``--codec`` string, at a target rate (``None``: the string's own options)."""
    from ..codecs import codec_class, get

    name, opts = parse_codec(text)
    if rate is not None:
        opts[codec_class(name).rate_option] = rate
    return get(name, **opts)


def _jobs(codecs: Sequence[str], rates: Sequence[float]) -> list[tuple[str, float | None]]:
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
    jobs = _jobs(codecs, rates)
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


def print_table(rows: list[dict], notes: list[str], console) -> None:
    from rich.table import Table

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
            "dB vs Gauss",
            "dB vs SLB",
            "encode s",
            "decode s",
        ):
            t.add_column(col, justify="left" if col == "codec" else "right")
        for r in sorted(
            (r for r in rows if r["source"] == src), key=lambda r: (r["codec"], r["bits_per_param"])
        ):
            t.add_row(
                r["codec"],
                _fmt(r["target_rate"], "g"),
                f"{r['bits_per_param']:.3f}",
                f"{r['rel_error']:.4g}",
                f"{r['gain_opt_error']:.4g}",
                f"{r['cosine']:.4f}",
                _fmt(r["db_vs_waterfilling"], "+.2f"),
                _fmt(r["db_vs_gaussian"], "+.2f"),
                _fmt(r["db_vs_slb"], "+.2f"),
                f"{r['encode_s']:.3f}",
                f"{r['decode_s']:.3f}",
            )
        console.print(t)
    console.print(
        "dB vs X = 10·log10(D / D_X(R measured)); negative beats X. WF = reverse water-filling over "
        "the per-tensor variances, SLB = memoryless Shannon lower bound."
    )
    for n in notes:
        console.print(f"[red]{n}[/]" if n.startswith("ERROR") else f"[yellow]note[/]: {n}")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))  # piped output: keep the table on one line per row
    names = args.source or list(DEFAULT_SOURCES)
    codecs = args.codec or default_codecs()
    for c in codecs:
        make_codec(c, None)  # unknown names and bad options fail now, with the list of codecs / a message
    out = Path(args.out)
    t_start = time.perf_counter()
    sources = [load_source(n, args.d, args.seed) for n in names]
    n_jobs = len(sources) * len(_jobs(codecs, args.rates))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("R-D sweep", total=n_jobs, last="")
        rows, notes, refs = sweep(
            sources,
            codecs,
            args.rates,
            seed=args.seed,
            on_step=lambda label: bar.update(task, advance=1, last=label),
        )
    print_table(rows, notes, console)
    json_path = Path(args.json) if args.json else out / "rd.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(finite_or_none(rows), indent=1, default=str) + "\n")
    console.print(f"wrote {len(rows)} rows to {json_path}")
    if not args.no_plot:
        from .rd_plot import plot_rd

        plot_path = Path(args.plot) if args.plot else out / "rd.png"
        plot_rd(rows, refs, plot_path, max_rate=max(args.rates))
        console.print(f"wrote {plot_path}")
    console.print(f"bench rd finished in {time.perf_counter() - t_start:.1f} s")
    return 1 if any(n.startswith("ERROR") for n in notes) else 0
