"""Evaluation metrics: accuracy and macro-F1 for classification, exact match of the final number for gsm8k,
exact match of the text for instruction tuning."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

__all__ = [
    "accuracy",
    "exact_match",
    "extract_final_number",
    "gsm8k_exact_match",
    "macro_f1",
    "normalize_number",
    "parse_gsm8k_answer",
]

# A number as written in GSM8K answers and model generations: optional sign, digits with thousands commas,
# optional decimals ("1,234.50", "-3", ".5").
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to the labels (0.0 for no examples)."""
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def macro_f1(
    preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, num_classes: int
) -> float:
    """Unweighted mean of per-class F1 over ``num_classes`` (a class never predicted nor present scores 0)."""
    p, y = np.asarray(preds), np.asarray(labels)
    f1s = []
    for k in range(num_classes):
        tp = int(np.sum((p == k) & (y == k)))
        fp = int(np.sum((p == k) & (y != k)))
        fn = int(np.sum((p != k) & (y == k)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def normalize_number(text: str) -> str | None:
    """Canonical form of a number string: commas and a trailing dot dropped, ``"18.00"`` -> ``"18"``.

    Returns ``None`` if ``text`` is not a number.
    """
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def parse_gsm8k_answer(answer: str) -> str | None:
    """The reference number of a GSM8K solution: what follows the last ``####`` (normalized)."""
    if "####" not in answer:
        return None
    tail = answer.rsplit("####", 1)[1]
    m = _NUMBER.search(tail.replace("$", ""))
    return normalize_number(m.group()) if m else None


def extract_final_number(text: str) -> str | None:
    """The answer a generation commits to: the first number after its last ``####`` if it has one,
    otherwise the last number in the text (normalized); ``None`` if there is no number at all."""
    if "####" in text:
        got = parse_gsm8k_answer(text)
        if got is not None:
            return got
    found = _NUMBER.findall(text.replace("$", ""))
    for cand in reversed(found):
        norm = normalize_number(cand)
        if norm is not None:
            return norm
    return None


def gsm8k_exact_match(generations: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of generations whose final number equals the reference solution's ``#### N``."""
    if not references:
        return 0.0
    hits = 0
    for gen, ref in zip(generations, references, strict=True):
        want = parse_gsm8k_answer(ref)
        hits += int(want is not None and extract_final_number(gen) == want)
    return hits / len(references)


def exact_match(generations: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of generations equal to their reference up to white space (runs of it count as one space,
    leading and trailing white space is ignored); 0.0 for no references."""
    if not references:
        return 0.0
    hits = sum(
        " ".join(g.split()) == " ".join(r.split()) for g, r in zip(generations, references, strict=True)
    )
    return hits / len(references)
