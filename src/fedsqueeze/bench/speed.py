"""Speed benchmark: encode/decode time and peak memory of each codec beside in-process references.

Each codec runs in a fresh Python subprocess (no allocator cache or earlier peak from another codec) on the
same i.i.d. Gaussian vector (``--d`` values, float32; several sizes, comma-separated, run one after the
other), on the engine's path: ``encode_with_spec`` of the flat vector (what the client calls) and
:func:`fedsqueeze.codecs.decode_flat` of the frame (what the server calls). In that process it measures:

1. **Times** (``time.perf_counter``), the median of ``--repeat`` runs each: ``encode``, ``decode`` and three
   references on the same vector, timed in the same process and interleaved with the codec's runs (so a
   busy machine slows them alike):

   - ``topk``: one ``torch.topk(u.abs(), k)``, with ``k`` the codec's kept count when it reports one
     (``choose_k(d)``), else the count of non-zeros it decoded to, else ``floor(0.02 d)``.
     ``ratio = (encode + decode) / topk``: how many torch.topk calls the codec's round trip costs.
   - ``floor``: one memory pass, ``out.copy_(u)`` into a preallocated vector (one read and one write of the
     update). ``ratio_floor = (encode + decode) / floor``: no codec that reads its input and writes a
     frame can go much below 1.
   - ``peer``: the same job in the library practitioners use, where there is one and it is installed:
     bitsandbytes' ``quantize_blockwise`` + ``dequantize_blockwise`` (``blockwise8``) or ``quantize_4bit`` +
     ``dequantize_4bit`` (``nf4``, ``fp4``) at the codec's block size, on CPU.
     ``ratio_peer = (encode + decode) / peer``; ``None`` with ``peer_note`` saying why when there is no peer
     (not installed, unusable, or no peer for that codec). The peer returns tensors, not a frame: it does
     not serialize, check finiteness or checksum, so ``ratio_peer`` slightly favours it.

   ``ns_per_value = (encode + decode) / d`` in nanoseconds: constant across sizes when the cost is linear.
2. **Peak extra memory, allocator level** (``encode_peak_x``, ``decode_peak_x``, max: ``peak_extra_x``):
   the peak of bytes live in torch tensors + numpy arrays (+ Python objects) during one call, minus what was
   live before, over the update's 4·d bytes; torch's allocator timeline from ``torch.profiler`` memory
   events and numpy's from ``tracemalloc``, merged line by line (:mod:`fedsqueeze.bench.memory` documents the
   method and what it cannot see). Deterministic: the same code gives the same figure on any machine.
3. **Resident-set cross-check** (``rss_peak_x``), in a second fresh process: ``VmHWM − VmRSS`` over one
   encode + decode, after the high-water mark is reset (``/proc/self/clear_refs`` ← 5); glibc is told first
   thing (``mallopt``) to serve every block over 128 KiB by ``mmap``, so a freed block leaves the resident
   set at once and a new one is never carved from freed, still-resident heap. It also sees kernel scratch
   that bypasses the two allocators, and page-level effects (untouched ``calloc`` pages are not resident).
   Linux only; elsewhere it is ``None``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Any

__all__ = ["CHILD_COMMAND", "DEFAULT_D", "NO_PEER", "PEERS", "child_main", "measure_codec", "peer_round_trip"]

DEFAULT_D = 8_388_608
CHILD_COMMAND = "import sys; from fedsqueeze.bench.speed import child_main; child_main(sys.argv[1])"


# Codecs with a peer implementation: bitsandbytes' function pair and its quant_type (None: the 8-bit one).
PEERS: dict[str, tuple[str, str | None]] = {
    "blockwise8": ("bitsandbytes quantize_blockwise", None),
    "nf4": ("bitsandbytes quantize_4bit(nf4)", "nf4"),
    "fp4": ("bitsandbytes quantize_4bit(fp4)", "fp4"),
}

NO_PEER = "no peer implementation"

# -- in the child process ---------------------------------------------------------------------------------


def peer_round_trip(name: str, options: dict[str, Any]) -> tuple[Any, str]:
    """A callable ``f(u)`` running the peer's quantize + dequantize of ``u``, or ``(None, why not)``.

    Parameters
    ----------
    name
        Registered codec name (without options); only those in :data:`PEERS` have a peer.
    options
        The codec's options; ``block`` is passed as the peer's ``blocksize``.

    Returns
    -------
    tuple
        ``(round_trip, label)``, or ``(None, reason)`` when bitsandbytes is not installed or cannot run
        that block size on this machine (checked by one call on a small vector).
    """
    import importlib.util
    import io
    from contextlib import redirect_stdout

    if name not in PEERS:
        return None, NO_PEER
    label, quant_type = PEERS[name]
    if importlib.util.find_spec("bitsandbytes") is None:
        return None, "bitsandbytes not installed"
    import torch

    block = int(options.get("block", 64))
    try:
        with redirect_stdout(io.StringIO()):  # the child's stdout carries the JSON row
            import bitsandbytes.functional as bnbf

        if quant_type is None:

            def round_trip(u: torch.Tensor) -> torch.Tensor:
                q, state = bnbf.quantize_blockwise(u, blocksize=block)
                return bnbf.dequantize_blockwise(q, state)

        else:

            def round_trip(u: torch.Tensor) -> torch.Tensor:
                q, state = bnbf.quantize_4bit(u, blocksize=block, quant_type=quant_type)
                return bnbf.dequantize_4bit(q, state)

        with redirect_stdout(io.StringIO()):
            probe = torch.linspace(-1, 1, min(4 * block, 1 << 16))
            back = round_trip(probe)
        if back.numel() != probe.numel() or not bool(torch.isfinite(back).all()):
            return None, f"bitsandbytes: {label} gave an unusable result at block {block}"
    except Exception as exc:  # any failure of an optional peer is reported in the row, not raised
        first = (str(exc).splitlines() or [""])[0][:120]
        return None, f"bitsandbytes unusable: {type(exc).__name__}: {first}"
    return round_trip, f"{label}, blocksize={block}"


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


def _mmap_big_blocks() -> bool:
    """Ask glibc to ``mmap`` every block over 128 KiB (freed ones then leave the resident set at once)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 17)) and bool(libc.mallopt(m_trim_threshold, 1 << 17))
    except (OSError, AttributeError):
        return False


def _kept(codec, spec) -> tuple[int, str]:
    """k from the codec's own ``choose_k(d)`` (the TopK family), else the 2 % default."""
    d = spec.numel
    choose_k = getattr(codec, "choose_k", None)
    if callable(choose_k):
        k = choose_k(d)
        if 0 < k <= d:
            return int(k), "codec"
    return max(1, math.floor(0.02 * d)), "default 2%"


def _rss_round_trip(codec, flat, spec, seed: int) -> dict[str, Any]:
    """Resident-set peak of one encode + decode (see the module docstring); fields are None off Linux."""
    import gc

    from ..codecs import decode_flat

    gc.collect()
    mmapped = _mmap_big_blocks()  # idempotent; the caller already did it first thing in a fresh process
    if not _reset_peak():
        return {"rss_peak_bytes": None, "rss_peak_x": None, "rss_method": "unavailable (no clear_refs)"}
    rss0 = (_status_kb("VmRSS") or 0) * 1024
    out = decode_flat(codec.fresh().encode_with_spec(flat, spec, seed=seed), spec)
    peak = (_status_kb("VmHWM") or 0) * 1024
    del out
    extra = max(0, peak - rss0)
    return {
        "rss_peak_bytes": extra,
        "rss_peak_x": extra / (4.0 * spec.numel),
        "rss_method": "VmHWM-VmRSS (clear_refs)" + (", mallopt mmap >128KiB" if mmapped else ""),
    }


def _alloc_peaks(codec, flat, spec, seed: int) -> dict[str, Any]:
    """Allocator-level peaks of encode and of decode, separately (:func:`.memory.measure_peak`)."""
    from ..codecs import decode_flat
    from .memory import measure_peak

    ref = 4 * spec.numel
    frame, enc = measure_peak(codec.fresh().encode_with_spec, flat, spec, seed=seed, ref_bytes=ref)
    out, dec = measure_peak(decode_flat, frame, spec, ref_bytes=ref)
    del out
    worst = max(enc, dec, key=lambda m: m.peak_bytes)
    return {
        "encode_peak_x": enc.peak_x,
        "decode_peak_x": dec.peak_x,
        "peak_extra_x": worst.peak_x,
        "peak_extra_bytes": worst.peak_bytes,
        "peak_exact": enc.exact and dec.exact,
        "encode_peak_where": enc.where,
        "decode_peak_where": dec.where,
        "memory_method": "allocator: torch.profiler memory events + tracemalloc, merged per line",
    }


def measure_codec(
    name: str, d: int, *, repeat: int = 3, seed: int = 0, memory: str = "alloc"
) -> dict[str, Any]:
    """Measure one codec in the current process.

    ``memory``: ``"alloc"`` (times, then the allocator-level peaks: tracing does not touch the times),
    ``"off"`` (times only), or ``"rss"``: only the resident-set figure, for a *fresh* process (it calls
    ``mallopt`` before anything else; glibc would otherwise serve big blocks from freed heap that is already
    resident, and the high-water mark would miss them).
    """
    import gc

    import torch

    from ..codecs import decode_flat
    from ..spec import UpdateSpec
    from .rd import make_codec
    from .sources import make_source

    if memory == "rss":
        _mmap_big_blocks()
    codec = make_codec(name)
    small = make_source("gaussian", 4096, seed + 1)  # warm-up: lazy imports and first-call costs
    sspec = UpdateSpec.from_tensors(small)
    decode_flat(codec.fresh().encode_with_spec(sspec.flatten(small), sspec, seed=seed), sspec)
    update = make_source("gaussian", d, seed)
    spec = UpdateSpec.from_tensors(update)
    flat = spec.flatten(update)
    del update
    gc.collect()
    if memory == "rss":
        return {"codec": name, "d": d, **_rss_round_trip(codec, flat, spec, seed)}

    peer, peer_note = peer_round_trip(codec.name, codec.options())  # warmed up by its probe
    copy_out = torch.empty_like(flat)
    enc, dec, floor, peer_t = [], [], [], []
    for _ in range(repeat):  # the codec and its references interleaved: a busy machine slows them alike
        c = codec.fresh()
        t0 = time.perf_counter()
        blob = c.encode_with_spec(flat, spec, seed=seed)
        t1 = time.perf_counter()
        out = decode_flat(blob, spec)
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
        t0 = time.perf_counter()
        copy_out.copy_(flat)
        floor.append(time.perf_counter() - t0)
        if peer is not None:
            t0 = time.perf_counter()
            peer(flat)
            peer_t.append(time.perf_counter() - t0)
    del copy_out
    # Entries actually sent, measured from the decoded vector: the fair k for the topk reference.
    nnz = int(torch.count_nonzero(out))
    del out
    k, k_from = _kept(codec, spec)
    if k_from != "codec" and 0 < nnz < spec.numel:
        k, k_from = nnz, "decoded nonzeros"
    tk = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.topk(flat.abs(), k)
        tk.append(time.perf_counter() - t0)
    e, dd, t = statistics.median(enc), statistics.median(dec), statistics.median(tk)
    f = statistics.median(floor)
    p = statistics.median(peer_t) if peer_t else None
    row: dict[str, Any] = {
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
        "floor_s": f,
        "ratio_floor": (e + dd) / f if f > 0 else None,
        "peer_s": p,
        "ratio_peer": (e + dd) / p if p else None,
        "peer_note": peer_note,
        "ns_per_value": 1e9 * (e + dd) / d,
        "repeat": repeat,
        "threads": torch.get_num_threads(),
        "options": codec.options(),
    }
    if memory == "alloc":
        row.update(_alloc_peaks(codec, flat, spec, seed))
    return row


def child_main(arg: str) -> None:
    """Entry point of the per-codec subprocess: one JSON row on the last line of stdout."""
    cfg = json.loads(arg)
    row = measure_codec(
        cfg["codec"], cfg["d"], repeat=cfg["repeat"], seed=cfg["seed"], memory=cfg.get("memory", "alloc")
    )
    print(json.dumps(row, default=str))
