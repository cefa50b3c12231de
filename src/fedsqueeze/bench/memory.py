"""Allocator-level peak memory of one call: bytes live in torch tensors + numpy arrays, on one timeline.

Method (:func:`measure_peak`)
-----------------------------
Two exact ledgers are kept while the call runs, and merged on one ordered timeline:

- **numpy** reports every data allocation and free to :mod:`tracemalloc` (its own trace domain), so
  ``tracemalloc.get_traced_memory()`` gives the live bytes now and the peak since the last ``reset_peak()``
  (Python objects allocated during the call are counted too, which is what a caller pays).
- **torch** CPU tensors are invisible to tracemalloc; ``torch.profiler.profile(profile_memory=True)`` records
  every allocation and free of torch's CPU allocator as a signed ``[memory]`` event, so the running sum of
  those events is torch's live-bytes timeline.

To put the two on one timeline the call runs under ``sys.settrace`` (every source line, return) and
``sys.setprofile`` (every C call and return). At each such *boundary* the hook reads tracemalloc (live bytes,
peak since the previous boundary, then resets the peak) and drops a zero-length ``record_function`` marker
into the profiler, so boundaries and torch memory events are ordered by the profiler's own clock. Between
two boundaries runs one line's worth of work or one C call; the combined peak is

    max over segments j of (numpy peak in j + torch maximum in j)  −  (live bytes at the start)

This is exact whenever no segment both raises numpy's live bytes *and* changes torch's (``mixed == 0``, the
usual case: a segment is one C call or one line of operators); otherwise it is an upper bound and ``exact``
is ``False``. The hook's own bookkeeping (a few preallocated numpy record chunks) is subtracted.

Not counted: memory that kernels take from ``malloc`` directly rather than from the two allocators, e.g. the
``std::vector`` of d (value, index) pairs that CPU ``torch.topk`` uses as scratch (about 4× a float32 input of
the same length), numpy's sort buffers, BLAS workspaces, and what the interpreter or allocator keeps cached.
The resident-set figure of ``fedsqueeze bench speed`` (``rss_peak_x``) is the cross-check that does see them.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MeasurementError

__all__ = ["PeakMemory", "measure_peak"]

_MARK = "fedsqueeze.mem.boundary"
LAST_TIMELINE: dict[str, Any] = {}  # per-segment timeline of the last measure_peak(..., timeline=True)
_MIXED_SLACK = 1 << 16  # numpy growth below this (Python objects, small arrays) does not make a segment mixed
_CHUNK = 1 << 15  # records per bookkeeping chunk (3 int64 each: 768 KiB)


@dataclass(frozen=True)
class PeakMemory:
    """Outcome of :func:`measure_peak` (bytes; ``*_x`` fields are relative to ``ref_bytes``)."""

    peak_bytes: int  # combined torch + numpy (+ Python objects) peak above the live bytes at the start
    torch_peak_bytes: int  # torch's own peak above the start (ignoring numpy)
    numpy_peak_bytes: int  # tracemalloc's own peak above the start (ignoring torch)
    end_bytes: int  # combined live bytes at the end above the start (what the call's result holds)
    boundaries: int  # trace boundaries (segments + 1)
    mixed: int  # segments where numpy grew and torch changed: the combined peak is an upper bound there
    where: str  # source line running when the combined peak was reached ("file:line")
    ref_bytes: int  # the size the ``x`` figures are relative to (e.g. 4 d for a float32 update)

    @property
    def exact(self) -> bool:
        """True when no segment mixed numpy growth with a torch change (the peak is exact)."""
        return self.mixed == 0

    @property
    def peak_x(self) -> float:
        return self.peak_bytes / self.ref_bytes if self.ref_bytes else float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        r = self.ref_bytes or 1
        return {
            f"{prefix}peak_bytes": self.peak_bytes,
            f"{prefix}peak_x": self.peak_bytes / r,
            f"{prefix}torch_peak_x": self.torch_peak_bytes / r,
            f"{prefix}numpy_peak_x": self.numpy_peak_bytes / r,
            f"{prefix}end_x": self.end_bytes / r,
            f"{prefix}peak_exact": self.exact,
        }


class _Recorder:
    """The trace hook: per boundary, numpy live and peak since the previous boundary (own bytes removed)."""

    def __init__(self, rf_fast) -> None:
        self._rf = rf_fast
        self.chunks: list[np.ndarray] = []
        self.places: dict[tuple[str, int], int] = {("?", 0): 0}  # code location -> id (few distinct ones)
        self.n = 0
        self.own = 0
        self._new_chunk()

    def _new_chunk(self) -> None:
        chunk = np.empty((_CHUNK, 3), dtype=np.int64)
        chunk.fill(0)  # touch it now, not inside a measured segment
        self.chunks.append(chunk)
        self.own += chunk.nbytes
        tracemalloc.reset_peak()  # the chunk itself must not show as a peak of the next segment

    def boundary(self, frame=None) -> None:
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with self._rf(_MARK):
            pass
        i = self.n % _CHUNK
        row = self.chunks[-1][i]
        row[0] = cur - self.own
        row[1] = peak - self.own
        if frame is not None:  # where the segment that starts here runs
            key = (frame.f_code.co_filename, frame.f_lineno)
            row[2] = self.places.setdefault(key, len(self.places))
        self.n += 1
        if i == _CHUNK - 1:
            self._new_chunk()

    def records(self) -> np.ndarray:
        return np.concatenate(self.chunks)[: self.n]

    # sys.settrace: a global tracer that returns the local one (lines and returns of every frame)
    def trace(self, frame, event, arg):
        self.boundary(frame)
        return self.local

    def local(self, frame, event, arg):
        if event in ("line", "return", "exception"):
            self.boundary(frame if event == "line" else frame.f_back)
        return self.local

    # sys.setprofile: C calls only (Python calls/returns already come from settrace)
    def profile(self, frame, event, arg):
        if event[0] == "c":
            self.boundary(frame)


def measure_peak(
    fn: Callable[..., Any], *args: Any, ref_bytes: int = 0, timeline: bool = False, **kwargs: Any
) -> tuple[Any, PeakMemory]:
    """Run ``fn(*args, **kwargs)`` once and measure its allocator-level peak extra memory.

    Parameters
    ----------
    fn, args, kwargs
        The call to measure (run once, under tracing: expect it to be several times slower than usual).
    ref_bytes
        Size the ``x`` ratios of the report are relative to (e.g. ``4 * d`` for a float32 update).
    timeline
        Keep the per-segment timeline (combined, torch and numpy bytes above the start, and the source line
        of each segment) in ``fedsqueeze.bench.memory.LAST_TIMELINE``, to find what makes a peak.

    Returns
    -------
    result, PeakMemory
        The call's return value and the measurement (see the module docstring for the method and what it
        does not see). The call's arguments and everything live before it are not counted; what the result
        holds is (``end_bytes``).
    """
    import torch
    from torch._C._profiler import _RecordFunctionFast
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    old_trace, old_prof = sys.gettrace(), sys.getprofile()
    rec = _Recorder(_RecordFunctionFast)
    gcwas = gc.isenabled()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            gc.disable()  # a collection mid-call would free objects of the caller: not the call's doing
            rec.boundary()
            sys.setprofile(rec.profile)
            sys.settrace(rec.trace)
            try:
                result = fn(*args, **kwargs)
            finally:
                sys.settrace(old_trace)
                sys.setprofile(old_prof)
                rec.boundary()
                if gcwas:
                    gc.enable()
        records = rec.records()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    cpu = torch._C._autograd.DeviceType.CPU
    events = []
    for e in prof.profiler.kineto_results.events():
        name = e.name()
        if name == _MARK:
            events.append((e.start_ns(), 1, 0))
        elif name == "[memory]" and e.device_type() == cpu:
            events.append((e.start_ns(), 0, int(e.nbytes())))
    names = {v: f"{k[0]}:{k[1]}" for k, v in rec.places.items()}
    LAST_TIMELINE.clear()
    return result, _merge(events, records, ref_bytes, names, timeline)


def _merge(
    events: list[tuple[int, int, int]],
    records: np.ndarray,
    ref_bytes: int,
    names: dict[int, str],
    timeline: bool = False,
) -> PeakMemory:
    """Walk the profiler timeline: torch's running total, segment by segment between the markers."""
    events.sort(key=lambda t: (t[0], t[1]))
    n_b = records.shape[0]
    seg_tmax = np.zeros(max(n_b - 1, 0), dtype=np.int64)  # torch maximum within segment j
    seg_tchg = np.zeros(max(n_b - 1, 0), dtype=bool)  # torch changed within segment j
    torch_live = torch_peak = 0
    j = -1  # boundaries passed so far - 1
    for _, is_mark, nbytes in events:
        if is_mark:
            j += 1
            if 0 <= j < seg_tmax.size:
                seg_tmax[j] = torch_live
            continue
        torch_live += nbytes
        torch_peak = max(torch_peak, torch_live)
        if 0 <= j < seg_tmax.size:
            seg_tmax[j] = max(seg_tmax[j], torch_live)
            seg_tchg[j] = True
    if j + 1 != n_b:
        raise MeasurementError(f"profiler kept {j + 1} boundary markers of {n_b}; cannot align the timelines")
    if n_b < 2:
        return PeakMemory(0, 0, 0, 0, n_b, 0, "?", ref_bytes)  # nothing ran between the boundaries
    cur, peak = records[:, 0], records[:, 1]
    np_peak = peak[1:]  # numpy's peak within segment j is read at boundary j + 1
    base = int(cur[0])
    per_seg = np.maximum(np_peak, cur[:-1]) + seg_tmax
    if timeline:
        LAST_TIMELINE.update(
            combined=per_seg - base,
            torch=seg_tmax,
            numpy=np.maximum(np_peak, cur[:-1]) - base,
            place=[names.get(int(p), "?") for p in records[:-1, 2]],
        )
    top = int(np.argmax(per_seg))
    where = names.get(int(records[top, 2]), "?")
    combined = int(per_seg[top]) - base
    mixed = int(np.count_nonzero((np_peak > cur[:-1] + _MIXED_SLACK) & seg_tchg))
    return PeakMemory(
        peak_bytes=max(0, combined),
        torch_peak_bytes=max(0, torch_peak),
        numpy_peak_bytes=max(0, int(np.maximum(np_peak, cur[1:]).max()) - base),
        end_bytes=int(cur[-1]) - base + torch_live,
        boundaries=n_b,
        mixed=mixed,
        where=where,
        ref_bytes=ref_bytes,
    )
