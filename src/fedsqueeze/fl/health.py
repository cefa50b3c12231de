"""Run health: warnings when a run's own numbers say the codec or error feedback is not doing its job.

:class:`RunHealth` reads the ``metrics.jsonl`` rows one by one (both drivers, :func:`fedsqueeze.fl.run` and
the Flower ``ServerApp``, build the same columns) and returns the warnings of each row; the drivers store them
as the row's ``warnings`` and the run's :meth:`RunHealth.summary` as ``summary.json``'s ``warnings``. It is a
pure function of the rows seen, so a resumed run rebuilds it by replaying the checkpoint's rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any, SupportsFloat, TypeGuard

from ..errors import UsageError

__all__ = [
    "CLIENT_REL_ERROR_HIGH",
    "REL_ERROR_HIGH",
    "RESIDUAL_GROWTH",
    "RunHealth",
    "describe",
    "log_warnings",
]

CLIENT_REL_ERROR_HIGH = "client_rel_error_high"
REL_ERROR_HIGH = "rel_error_high"
RESIDUAL_GROWTH = "residual_growth"


def _bad_error(value: Any) -> TypeGuard[SupportsFloat]:
    """``value >= 1`` or NaN (``None``: not measured, never bad)."""
    return value is not None and not float(value) < 1.0


class RunHealth:
    """Warnings over the rounds of one run, one rule per code.

    Rules (each checked in every round, from the first one; a round's warnings go into its row):

    ``client_rel_error_high``
        The row's ``client_rel_error`` (mean over the kept clients of ``‖p − p̂‖² / ‖p‖²``, ``p`` the
        compressor input ``u + e``) is ``>= 1`` or NaN: the clients' decoded updates are no better than
        sending nothing (an empty reconstruction gives exactly 1). A contractive codec stays below 1;
        unbiased codecs (``randk`` with ``unbiased = true``) can exceed it by design, and then error feedback
        is not contractive either. One bad client among good ones may not lift the mean to 1.
    ``rel_error_high``
        The row's ``rel_error`` (the aggregate against the dense mean of the raw updates) is ``>= 1`` or NaN,
        checked only when ``error_feedback`` is off. With error feedback the aggregate also carries earlier
        rounds' residuals, so it is no reconstruction of this round's mean and exceeds 1 in healthy runs (the
        ``smoke`` preset's topk reaches 2.3 by round 12). Under Flower ``rel_error`` is always ``None``.
    ``residual_growth``
        With ``m_t`` the mean of the row's ``residual_norms`` (rounds without any are skipped): ``m`` rose in
        each of the last ``window`` rounds and ``m_t >= growth · m_{t-window} > 0``; or some residual norm
        is not finite. A codec that sends little makes error feedback accumulate about linearly
        (``m_t ≈ t · m_1`` while it warms up, at most ``(window + 1)×`` over ``window`` rounds), so the
        default 5× over 3 rounds (≥ 1.71× a round, sustained) flags geometric growth: error feedback
        diverging, not warming up.

    Parameters
    ----------
    error_feedback
        Whether the run uses error feedback (``fl.error_feedback``); enables ``rel_error_high`` when false.
    window, growth
        The ``residual_growth`` rule's number of consecutive rises and factor.
    """

    def __init__(self, *, error_feedback: bool = True, window: int = 3, growth: float = 5.0) -> None:
        if window < 1 or not growth > 1.0:
            raise UsageError(f"RunHealth: window >= 1 and growth > 1 needed, got {window}, {growth}")
        self.error_feedback, self.window, self.growth = error_feedback, window, growth
        self._means: list[float] = []  # m_t of the rounds with residual norms, at most window + 1 kept
        self._seen: dict[str, dict[str, Any]] = {}  # code -> {"code", "message", "rounds"}, first-seen order
        self._last: set[str] = set()
        self.started: set[str] = set()  # codes of the last observed row that did not fire in the row before

    @classmethod
    def replay(cls, rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> RunHealth:
        """A :class:`RunHealth` that has observed ``rows`` (rebuilds the state of a resumed run)."""
        health = cls(**kwargs)
        for row in rows:
            health.observe(row)
        return health

    def observe(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        """The warnings of one ``metrics.jsonl`` row: ``[{"code", "message"}]``, ``[]`` when healthy."""
        out: list[dict[str, str]] = []
        crel = row.get("client_rel_error")
        if _bad_error(crel):
            out.append(
                {
                    "code": CLIENT_REL_ERROR_HIGH,
                    "message": f"mean client reconstruction error {float(crel):.4g} >= 1: the decoded "
                    "updates are no better than sending nothing",
                }
            )
        rel = row.get("rel_error")
        if not self.error_feedback and _bad_error(rel):
            out.append(
                {
                    "code": REL_ERROR_HIGH,
                    "message": f"aggregate reconstruction error {float(rel):.4g} >= 1 (no error feedback): "
                    "the applied update is no closer to the clients' mean update than a zero update",
                }
            )
        growth = self._residual_growth(row.get("residual_norms") or [])
        if growth is not None:
            out.append({"code": RESIDUAL_GROWTH, "message": growth})
        codes = {w["code"] for w in out}
        self.started = codes - self._last
        self._last = codes
        for w in out:
            entry = self._seen.setdefault(w["code"], {**w, "rounds": []})
            entry["rounds"].append(int(row["round"]))
        return out

    def _residual_growth(self, norms: Sequence[float | None]) -> str | None:
        values = [float("nan") if v is None else float(v) for v in norms]
        if not values:
            return None
        if not all(math.isfinite(v) for v in values):
            return f"an error-feedback residual norm is not finite ({', '.join(f'{v:.4g}' for v in values)})"
        self._means = [*self._means, sum(values) / len(values)][-(self.window + 1) :]
        m = self._means
        if len(m) <= self.window or not m[0] > 0.0:
            return None
        if all(a < b for a, b in pairwise(m)) and m[-1] >= self.growth * m[0]:
            return (
                f"mean error-feedback residual norm rose in each of the last {self.window} rounds, "
                f"{m[0]:.4g} -> {m[-1]:.4g} ({m[-1] / m[0]:.3g}x >= {self.growth:g}x): error feedback "
                "is diverging"
            )
        return None

    def summary(self) -> list[dict[str, Any]]:
        """All warnings of the run, one per code in first-seen order: ``[{"code", "message", "rounds"}]``.

        ``message`` is the first occurrence's; ``rounds`` lists every round the rule held in.
        """
        return [{**e, "rounds": list(e["rounds"])} for e in self._seen.values()]


def _rounds_text(rounds: Sequence[int]) -> str:
    spans: list[list[int]] = []
    for r in rounds:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"round{'s' if len(rounds) > 1 else ''} {text}"


def describe(warnings: Sequence[Mapping[str, Any]]) -> str:
    """``"2 warnings: client_rel_error_high (rounds 1-12), residual_growth (round 6)"``; ``""`` if none."""
    if not warnings:
        return ""
    parts = ", ".join(f"{w['code']} ({_rounds_text(w['rounds'])})" for w in warnings)
    return f"{len(warnings)} warning{'s' if len(warnings) > 1 else ''}: {parts}"


def log_warnings(
    logger: logging.Logger, r: int, warnings: Sequence[Mapping[str, str]], health: RunHealth
) -> None:
    """Log round ``r``'s warnings: WARNING when a code starts firing, INFO while it keeps firing."""
    for w in warnings:
        if w["code"] in health.started:
            logger.warning("round %d: %s: %s (later rounds: see metrics.jsonl)", r, w["code"], w["message"])
        else:
            logger.info("round %d: %s: %s", r, w["code"], w["message"])
