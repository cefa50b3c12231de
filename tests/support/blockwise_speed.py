"""Before/after timing of blockwise8, nf4 and fp4: the first implementation against the current one.

Run from the repository root (it imports the first implementation from ``tests/support``)::

    PYTHONPATH=tests python -m support.blockwise_speed --d 1048576,8388608 --repeat 5 [--threads 1]

Everything runs in one process on one i.i.d. Gaussian vector per size, interleaved round by round (first
implementation, current codec body, current engine path, peer, memory floor), and the minimum over the
rounds is kept, so a background load slows all of them alike. "body" times ``encode_flat`` + ``decode_flat``
of the codec (what the rewrite changed); "engine" adds what ``encode_with_spec`` / ``codecs.decode_flat``
do around it (finiteness checks, frame header, CRC-32). The peer is bitsandbytes' quantize + dequantize at
the same block size when it is installed; the floor is one ``out.copy_(u)``. Bodies are checked equal.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedsqueeze.bench.rd import make_codec
from fedsqueeze.bench.sources import make_source
from fedsqueeze.bench.speed import peer_round_trip
from fedsqueeze.codecs import decode_flat
from fedsqueeze.spec import UpdateSpec
from support.blockwise_reference import decode_body, encode_body

__all__ = ["main"]

CODECS = ("blockwise8", "nf4", "fp4")


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    """Print a markdown table of the timings (seconds, minimum over ``--repeat`` rounds)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", default="1048576,8388608", help="comma-separated vector lengths")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, block {args.block}, min of {args.repeat} rounds")
    print(
        "| d | codec | before: body enc+dec s | after: body enc+dec s | speed-up | after: engine enc+dec s "
        "| peer s | body/peer | engine/peer | floor s | body/floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in (int(v) for v in args.d.split(",")):
        update = make_source("gaussian", d, 0)
        spec = UpdateSpec.from_tensors(update)
        flat = spec.flatten(update)
        del update
        out = torch.empty_like(flat)
        for name in CODECS:
            codec = make_codec(f"{name}:block={args.block}")
            cls = type(codec)
            peer, note = peer_round_trip(name, codec.options())
            t: dict[str, list[float]] = {k: [] for k in ("old", "new", "engine", "peer", "floor")}
            for _ in range(args.repeat):
                te, old = _timed(encode_body, name, flat, spec, args.block)
                td, _ = _timed(decode_body, name, old, spec)
                t["old"].append(te + td)
                te, new = _timed(codec.encode_flat, flat, spec, seed=0)
                td, _ = _timed(cls.decode_flat, new, spec, seed=0)
                t["new"].append(te + td)
                assert new == old, f"{name}: the bodies differ"
                te, frame = _timed(codec.encode_with_spec, flat, spec, seed=0)
                td, _ = _timed(decode_flat, frame, spec)
                t["engine"].append(te + td)
                if peer is not None:
                    t["peer"].append(_timed(peer, flat)[0])
                t["floor"].append(_timed(out.copy_, flat)[0])
            m = {k: min(v) if v else None for k, v in t.items()}
            peer_s = "-" if m["peer"] is None else f"{m['peer']:.3f}"
            by_peer = "-" if m["peer"] is None else f"{m['new'] / m['peer']:.2f}"
            eng_peer = "-" if m["peer"] is None else f"{m['engine'] / m['peer']:.2f}"
            print(
                f"| {d:,} | {name} | {m['old']:.3f} | {m['new']:.3f} | {m['old'] / m['new']:.0f}× | "
                f"{m['engine']:.3f} | {peer_s} | {by_peer} | {eng_peer} | {m['floor']:.4f} | "
                f"{m['new'] / m['floor']:.1f} |",
                flush=True,
            )
            if peer is None:
                print(f"<!-- {name}: {note} -->")


if __name__ == "__main__":
    main()
