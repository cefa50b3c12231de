"""Server benchmark: time and peak resident memory of one round's screen → decode → aggregate for K clients.

It builds ``--clients`` K client frames of ``--d`` values with ``--codec`` and runs the server's real path on
them: :func:`fedsqueeze.fl.robust.screen_and_aggregate`, the function the federation calls each round (every
frame is decoded, its norm screened against the round's median, and, for ``"mean"``, added to an O(d)
running sum). It reports the round's wall time and the process's peak resident set during it.

Frames: ``--distinct`` distinct random updates (i.i.d. Gaussian, each at its own scale) are encoded once with
the codec (encoding K updates at d = 8.4M would take longer than the round being measured); frame ``i`` is
update ``i mod distinct``'s body behind a header with its own seed ``i`` (and so its own CRC-checked bytes).
Every frame is parsed, checked and decoded in full, so the server's work is that of K different replies; a
codec whose decoder uses the seed (a dithered or seeded-random codec) even decodes them to K different
updates. Weights (``num_examples``) vary per client.

Memory (``peak_rss_bytes``): the Linux high-water mark ``VmHWM`` of the whole process, reset
(``/proc/self/clear_refs`` ← 5) just before the round, so it is the largest resident set *during* the round:
the interpreter and torch, the K frames, and what the round adds. ``round_rss_bytes`` is that peak minus the
resident set at the start of the round (what the round itself adds); freed heap is handed back to the system
(glibc ``malloc_trim``) before the reset. The allocator keeps its defaults (forcing ``mmap`` for big blocks,
as ``bench speed`` does, makes every decode page-fault and triples the round's time); memory it keeps for
reuse can only raise the figure. Without ``clear_refs`` it falls back to ``getrusage`` ``ru_maxrss`` (the
peak of the process's whole life, frame building included); ``rss_method`` says which.
``decoded_fp32_bytes`` = K·4·d is what holding every decoded update would take.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import time
from typing import Any

import torch

from ..errors import ConfigError
from ..spec import UpdateSpec
from ..wire.frame import HEADER_SIZE, pack_frame, parse_frame

__all__ = ["DEFAULT_D", "build_frames", "measure_round"]

DEFAULT_D = 1 << 20


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (``None`` off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the resident-set high-water mark ``VmHWM`` to the current resident set (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _trim() -> None:
    """Collect garbage and give freed heap back to the system (glibc ``malloc_trim``), where available."""
    gc.collect()
    libc = _libc()
    with contextlib.suppress(AttributeError):
        libc.malloc_trim(0)


def build_frames(
    codec: str, d: int, clients: int, *, distinct: int = 8, seed: int = 0
) -> tuple[UpdateSpec, list[bytes], list[int], int]:
    """K client frames of one ``d``-value tensor (see the module docstring).

    Parameters
    ----------
    codec
        ``NAME`` or ``NAME:KEY=VALUE,...`` (as ``bench rd`` takes it).
    d, clients
        Values per update and frames (K).
    distinct
        Distinct updates encoded (at most ``clients``); the other frames reuse their bodies with their own
        header seed.
    seed
        Seed of the updates.

    Returns
    -------
    spec, frames, weights, distinct
        The spec, K frames (pairwise different bytes), K weights and the number of updates encoded.
    """
    from .rd import make_codec

    if clients < 1 or d < 1 or distinct < 1:
        raise ConfigError(f"--clients, --d and --distinct must be >= 1, got {clients}, {d}, {distinct}")
    spec = UpdateSpec.from_shapes({"update": (d,)})
    coder = make_codec(codec)
    if coder.uses_reference:
        raise ConfigError(f"codec {coder.name!r} codes against a reference; bench server takes plain codecs")
    b = min(distinct, clients)
    bases: list[bytes] = []
    for j in range(b):
        g = torch.Generator().manual_seed(seed * 7919 + j)
        update = torch.randn(d, generator=g) * (1.0 + 0.25 * j / b)
        bases.append(coder.fresh().encode_with_spec(update, spec, seed=j))
        del update
    headers = [parse_frame(f, spec)[0] for f in bases]
    frames = [
        bases[i] if i < b else pack_frame(headers[i % b].codec_id, spec, i, bases[i % b][HEADER_SIZE:])
        for i in range(clients)
    ]
    weights = [16 + (i * 7919) % 241 for i in range(clients)]
    return spec, frames, weights, b


def measure_round(
    clients: int,
    d: int,
    codec: str,
    *,
    distinct: int = 8,
    workers: int = 1,
    aggregation: str = "mean",
    memory_mb: float | None = 8192.0,
    norm_bound_factor: float | None = 10.0,
    seed: int = 0,
    hold_all: bool = False,
) -> dict[str, Any]:
    """Build the frames and time one server round on them; the JSON row of ``bench server``.

    Parameters
    ----------
    clients, d, codec, distinct, seed
        As in :func:`build_frames`.
    workers, aggregation, memory_mb, norm_bound_factor
        ``fl.decode_workers``, ``fl.aggregation``, ``fl.aggregation_memory_mb`` and
        ``fl.norm_bound_factor`` of the round.
    hold_all
        For comparison, the path the server took before it streamed: :func:`~fedsqueeze.fl.robust.
        screen_replies` keeps every decoded update (``O(K·d)``), then :func:`~fedsqueeze.fl.robust.aggregate`
        (same result; ``workers`` and ``memory_mb`` do not apply).

    Returns
    -------
    dict
        ``clients``, ``d``, ``codec``, ``round_s``, ``peak_rss_bytes``, ``frame_bytes_total`` and the
        details (``round_rss_bytes``, ``rss_method``, ``decoded_fp32_bytes``, ``kept``, ``passes``, ...).
    """
    from ..aggregation import check_memory
    from ..codecs import decode_flat
    from ..fl.robust import ReplyPart, aggregate, screen_and_aggregate, screen_replies

    check_memory(aggregation, clients, d, memory_mb)  # before minutes of encoding
    t0 = time.perf_counter()
    spec, frames, weights, b = build_frames(codec, d, clients, distinct=distinct, seed=seed)
    build_s = time.perf_counter() - t0
    decode_flat(frames[0], spec)  # first-call costs (lazy imports, caches) stay out of the round
    _trim()
    exact = _reset_peak()
    rss0 = _status_bytes("VmRSS") or 0
    t0 = time.perf_counter()
    if hold_all:
        kept, decoded, dropped = screen_replies(frames, weights, spec, norm_bound_factor=norm_bound_factor)
        aggregate(decoded, [weights[i] for i in kept], aggregation)
        del decoded
        passes = 1
    else:
        result = screen_and_aggregate(
            [ReplyPart(frames, spec)],
            weights,
            method=aggregation,
            norm_bound_factor=norm_bound_factor,
            memory_mb=memory_mb,
            workers=workers,
        )
        kept, dropped, passes = result.kept, result.dropped, result.passes
    round_s = time.perf_counter() - t0
    if exact:
        peak = _status_bytes("VmHWM") or 0
        method = "VmHWM during the round (reset by /proc/self/clear_refs)"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = "getrusage ru_maxrss (whole process life, frame building included)"
    total = sum(map(len, frames))
    return {
        "clients": clients,
        "d": d,
        "codec": codec,
        "round_s": round_s,
        "peak_rss_bytes": peak,
        "frame_bytes_total": total,
        "round_rss_bytes": max(0, peak - rss0) if exact else None,
        "rss_start_bytes": rss0,
        "rss_method": method,
        "decoded_fp32_bytes": 4 * clients * d,
        "peak_over_decoded": peak / (4.0 * clients * d),
        "s_per_client": round_s / clients,
        "aggregation": aggregation,
        "kept": len(kept),
        "dropped": len(dropped),
        "passes": passes,
        "workers": 1 if hold_all else workers,
        "path": "hold_all (screen_replies, aggregate)" if hold_all else "streaming (screen_and_aggregate)",
        "distinct_updates": b,
        "build_s": build_s,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
