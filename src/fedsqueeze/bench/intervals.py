"""Interval-size benchmark: FLM-TopK error against the interval length L = 2^s, beside Fed-CVLC and TopK.

For every ``s`` the update is encoded by ``flm_topk`` with ``interval_size = 2**s`` in both allocations
(``even``, the paper's, only where every interval can own a packet; ``threshold``, ours), decoded from the
bytes and scored by ``rel_error = ‖u − û‖² / ‖u‖²``. The searched ``flm_topk`` (no fixed L), ``fed_cvlc`` (one
interval) and ``topk`` run at the same budget. Writes JSON rows and a PNG plot.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from .._extras import require

__all__ = ["plot", "sweep"]

DEFAULT_OUT = "runs/bench"  # every default output goes under runs/


def _measure(name: str, opts: dict[str, Any], u: torch.Tensor, spec: Any, seed: int) -> dict[str, Any]:
    from ..codecs import get
    from ..codecs.decode import decode_flat

    codec = get(name, **opts)
    t0 = time.perf_counter()
    blob = codec.encode_with_spec(u, spec, seed=seed)
    t1 = time.perf_counter()
    v = decode_flat(blob, spec)
    t2 = time.perf_counter()
    err = float(((u.double() - v.double()) ** 2).sum() / (u.double() ** 2).sum())
    last = codec.state.get("last", {}) if codec.stateful else {}
    return {
        "codec": name,
        **{k: v for k, v in opts.items() if v is not None},
        "rel_error": err,
        "bits_per_param": 8 * len(blob) / spec.numel,
        "bytes": len(blob),
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
        **({"s": int(last["s"])} if "s" in last else {}),
        **({"kept": int(last["kept"]), "packets": int(last["packets"])} if "kept" in last else {}),
    }


def _source(name: str, d: int | None, seed: int) -> tuple[torch.Tensor, Any]:
    from ..spec import UpdateSpec
    from .sources import make_source

    tensors = make_source(name, d, seed)
    spec = UpdateSpec.from_tensors(tensors)
    return spec.flatten(tensors), spec


def sweep(
    source: str = "blocks",
    d: int | None = None,
    seed: int = 0,
    density: float = 0.02,
    rate: float | None = None,
    s_min: int = 4,
    s_max: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of the benchmark (see the module docstring).

    Raises
    ------
    ConfigError
        ``s_min < 1``, ``s_max < s_min``, or ``s_min`` above ``ceil(log2 d)`` (no interval length to try).
    """
    from ..codecs import available
    from ..codecs.budget import PACKET_BYTES, budget_bits
    from ..errors import ConfigError

    if s_min < 1:
        raise ConfigError(f"--s-min is log2 of the smallest interval length, at least 1; got {s_min}")
    if s_max is not None and s_max < s_min:
        raise ConfigError(f"--s-max ({s_max}) is below --s-min ({s_min}); give s-min <= s-max")
    u, spec = _source(source, d, seed)
    n = spec.numel
    budget = budget_bits(n, rate=rate, density=density)
    packets = max(1, (budget // 8) // PACKET_BYTES)
    top = max(1, math.ceil(math.log2(n)))
    if s_min > top:
        raise ConfigError(f"--s-min {s_min} is above ceil(log2 d) = {top} for d = {n}; give --s-min <= {top}")
    s_max = top if s_max is None else min(s_max, top)
    common: dict[str, Any] = {"density": density} if rate is None else {"rate": rate}
    rows = []
    for s in range(s_min, s_max + 1):
        modes = ["threshold"] + (["even"] if math.ceil(n / (1 << s)) <= packets else [])
        for mode in modes:
            opts = {"mode": mode, "interval_size": 1 << s, **common}
            rows.append(_measure("flm_topk", opts, u, spec, seed))
    for mode in ("threshold", "even"):
        row = _measure("flm_topk", {"mode": mode, **common}, u, spec, seed)
        rows.append({**row, "searched": True})
    rows.append(_measure("fed_cvlc", common, u, spec, seed))
    if "topk" in available():
        from ..codecs import codec_class

        opt = codec_class("topk").rate_option
        rows.append(_measure("topk", {opt: budget / n} if opt else {}, u, spec, seed))
    for r in rows:
        r["source"] = source
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    matplotlib = require("matplotlib", "plots", "the intervals plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, style in (("threshold", "o-"), ("even", "s--")):
        pts = sorted(
            (r["s"], r["rel_error"])
            for r in rows
            if r["codec"] == "flm_topk" and r.get("mode") == mode and "interval_size" in r
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=f"flm_topk {mode}")
        for r in rows:
            if r.get("searched") and r.get("mode") == mode and "s" in r:
                ax.plot([r["s"]], [r["rel_error"]], "*", ms=14, label=f"{mode}, searched L=2^{r['s']}")
    for name, color in (("fed_cvlc", "tab:red"), ("topk", "tab:gray")):
        for r in rows:
            if r["codec"] == name:
                ax.axhline(r["rel_error"], color=color, ls=":", label=f"{name} ({r['rel_error']:.3f})")
    ax.set_xlabel("interval length log2 L")
    ax.set_ylabel("rel_error ‖u−û‖²/‖u‖²")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
