"""Speed benchmark: encode/decode time and peak memory of each codec beside a torch.topk reference.

Each codec runs in a fresh Python subprocess (so no allocator cache or earlier peak from another codec hides
its memory use) on the same i.i.d. Gaussian vector (``--d`` values, float32). In that process it measures:

1. **Peak extra memory** of one cold encode + decode of the full vector: the process's resident-set
   high-water mark is reset (Linux ``/proc/self/clear_refs`` ← 5) right after the vector is built, and the
   report is ``VmHWM − VmRSS`` (peak during encode + decode minus resident before). ``tracemalloc`` cannot be
   used: it does not see torch's allocations. Where ``clear_refs`` is not writable the fallback is the
   ``getrusage(RUSAGE_SELF).ru_maxrss`` delta, which can under-count when an earlier transient peak was
   higher; the row says which method was used (``memory_method``).
2. **Times** (``time.perf_counter``), the median of ``--repeat`` runs each: ``encode`` (``codec.encode`` of
   the named tensors into the framed payload), ``decode`` (``fedsqueeze.decode`` of those bytes) and one
   ``torch.topk(u.abs(), k)`` on the same vector, with ``k`` the codec's kept count when it reports one
   (``choose_k(d)``), else the count of non-zeros it decoded to, else ``floor(0.02 d)``.

``ratio = (encode + decode) / topk``: how many torch.topk calls the codec's round trip costs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "child_main", "main", "measure_codec"]

DEFAULT_D = 8_388_608
_CHILD = "import sys; from fedsqueeze.bench.speed import child_main; child_main(sys.argv[1])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--d", type=int, default=DEFAULT_D, help=f"vector length (default {DEFAULT_D:,})")
    parser.add_argument(
        "--codec",
        action="append",
        metavar="NAME",
        help="codec to time (repeatable; default: all registered except cg_fedllm*)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per timing; the median is kept (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the vector and the codecs (default 0)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per codec (default 600)"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON to PATH")


# -- in the child process ---------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _kept(codec, spec) -> tuple[int, str]:
    """k from the codec's own ``choose_k(d)`` (the TopK family), else the 2 % default."""
    d = spec.numel
    choose_k = getattr(codec, "choose_k", None)
    if callable(choose_k):
        k = choose_k(d)
        if 0 < k <= d:
            return int(k), "codec"
    return max(1, math.floor(0.02 * d)), "default 2%"


def measure_codec(name: str, d: int, *, repeat: int = 3, seed: int = 0) -> dict[str, Any]:
    """Measure one codec in the current process (memory figures are only sound in a fresh process)."""
    import gc

    import torch

    from .. import decode
    from ..codecs import get
    from ..spec import UpdateSpec
    from .sources import make_source

    codec = get(name)
    small = make_source("gaussian", 4096, seed + 1)  # warm-up: lazy imports and first-call costs
    decode(codec.fresh().encode(small, seed=seed), UpdateSpec.from_tensors(small))
    update = make_source("gaussian", d, seed)
    spec = UpdateSpec.from_tensors(update)
    gc.collect()

    exact = _reset_peak()
    rss0 = (_status_kb("VmRSS") or 0) * 1024 if exact else _maxrss_bytes()
    blob = codec.fresh().encode(update, seed=seed)
    out = decode(blob, spec)
    peak = (_status_kb("VmHWM") or 0) * 1024 if exact else _maxrss_bytes()
    # Entries actually sent, measured from the decoded vector: the fair k for the topk reference.
    nnz = int(sum(int(torch.count_nonzero(t)) for t in out.values()))
    del out
    gc.collect()

    enc, dec = [], []
    for _ in range(repeat):
        c = codec.fresh()
        t0 = time.perf_counter()
        blob = c.encode(update, seed=seed)
        t1 = time.perf_counter()
        decode(blob, spec)
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
    k, k_from = _kept(codec, spec)
    if k_from != "codec" and 0 < nnz < spec.numel:
        k, k_from = nnz, "decoded nonzeros"
    flat = spec.flatten(update)
    tk = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.topk(flat.abs(), k)
        tk.append(time.perf_counter() - t0)
    e, dd, t = statistics.median(enc), statistics.median(dec), statistics.median(tk)
    extra = max(0, peak - rss0)
    return {
        "codec": name,
        "d": d,
        "payload_bytes": len(blob),
        "bits_per_param": 8.0 * len(blob) / d,
        "encode_s": e,
        "decode_s": dd,
        "topk_s": t,
        "topk_k": k,
        "topk_k_from": k_from,
        "ratio": (e + dd) / t if t > 0 else None,
        "peak_extra_bytes": extra,
        "peak_extra_vs_update": extra / (4.0 * d),
        "memory_method": "VmHWM-VmRSS (clear_refs)" if exact else "ru_maxrss delta",
        "repeat": repeat,
        "threads": torch.get_num_threads(),
        "options": codec.options(),
    }


def child_main(arg: str) -> None:
    """Entry point of the per-codec subprocess: one JSON row on the last line of stdout."""
    cfg = json.loads(arg)
    row = measure_codec(cfg["codec"], cfg["d"], repeat=cfg["repeat"], seed=cfg["seed"])
    print(json.dumps(row, default=str))


# -- in the parent -----------------------------------------------------------------------------------------


def _run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = json.dumps({"codec": name, "d": args.d, "repeat": args.repeat, "seed": args.seed})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, cfg],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"codec": name, "d": args.d, "error": f"timed out after {args.timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"codec": name, "d": args.d, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..codecs import codec_class
    from ..errors import ConfigError
    from .rd import default_codecs

    if args.d < 1 or args.repeat < 1:
        raise ConfigError("--d and --repeat must be positive")
    codecs = args.codec or default_codecs()
    for c in codecs:
        codec_class(c)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 130))
    rows = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"timing {len(codecs)} codecs at d={args.d:,}", total=len(codecs))
        for name in codecs:
            rows.append(_run_child(name, args))
            bar.advance(task)
    table = Table(title=f"codec speed · d = {args.d:,} · median of {args.repeat}", title_justify="left")
    for col in (
        "codec",
        "bits/param",
        "encode s",
        "decode s",
        "topk s (k)",
        "(enc+dec)/topk",
        "peak extra MB",
        "× update",
    ):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["codec"], "[red]" + r["error"] + "[/]")
            continue
        table.add_row(
            r["codec"],
            f"{r['bits_per_param']:.3f}",
            f"{r['encode_s']:.4f}",
            f"{r['decode_s']:.4f}",
            f"{r['topk_s']:.4f} ({r['topk_k']:,})",
            f"{r['ratio']:.2f}",
            f"{r['peak_extra_bytes'] / 2**20:.1f}",
            f"{r['peak_extra_vs_update']:.2f}",
        )
    console.print(table)
    console.print(
        "peak extra = resident-set high-water during one encode+decode minus resident before, in a fresh "
        "process per codec; × update = relative to the fp32 update (4·d bytes)."
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1, default=str) + "\n")
        console.print(f"wrote {path}")
    return 1 if any("error" in r for r in rows) else 0
