"""Strict JSON for result files: NaN and ±Inf become ``null`` (``json.dumps`` would write bare ``NaN``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_or_none"]


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float, in nested mappings, lists and tuples, replaced by ``None`` (and
    tuples and mappings made lists and dicts)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj
