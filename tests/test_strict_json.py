"""strict_json.finite_or_none: what `bench rd` and `fedsqueeze study` write is strict JSON."""

from __future__ import annotations

import json
import math

from fedsqueeze.strict_json import finite_or_none


def test_non_finite_floats_become_null_at_any_depth() -> None:
    obj = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": "x", "e": 0.5}}
    out = finite_or_none(obj)
    assert out == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": "x", "e": 0.5}}
    json.dumps(out, allow_nan=False)  # raises on any NaN/Inf left
