"""`fedsqueeze bench speed`: fields present, positive timings and ratios, memory measured per codec."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.bench import speed
from fedsqueeze.cli import main as cli_main
from fedsqueeze.codecs import available

FIELDS = (
    "codec",
    "d",
    "encode_s",
    "decode_s",
    "topk_s",
    "topk_k",
    "ratio",
    "peak_extra_bytes",
    "peak_extra_x",
    "encode_peak_x",
    "decode_peak_x",
    "peak_exact",
    "memory_method",
    "rss_peak_x",
    "rss_method",
    "payload_bytes",
)


def test_speed_cli_runs_each_codec_in_a_subprocess(tmp_path):
    codecs = ["fp16"] + (["topk"] if "topk" in available() else [])
    argv = ["bench", "speed", "--d", "65536", "--repeat", "2", "--json", str(tmp_path / "s.json")]
    for c in codecs:
        argv += ["--codec", c]
    assert cli_main(argv) == 0
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [r["codec"] for r in rows] == codecs
    for r in rows:
        for f in FIELDS:
            assert f in r, f
        assert r["encode_s"] > 0 and r["decode_s"] > 0 and r["topk_s"] > 0 and r["ratio"] > 0
        assert r["peak_extra_bytes"] >= 0
        assert r["peak_extra_x"] == max(r["encode_peak_x"], r["decode_peak_x"])
        assert r["decode_peak_x"] >= 1.0  # the decoded float32 vector alone is one update
    by = {r["codec"]: r for r in rows}
    assert by["fp16"]["topk_k"] == int(0.02 * 65536) and by["fp16"]["topk_k_from"] == "default 2%"
    assert by["fp16"]["payload_bytes"] == 32 + 2 * 65536
    if "topk" in by:
        assert by["topk"]["topk_k_from"] == "codec"


def test_memory_measurement_sees_a_large_allocation(monkeypatch):
    # A codec that allocates ~64 d bytes during encode must show up as at least that much extra peak.
    import torch

    from fedsqueeze.codecs import get

    d = 1 << 20
    codec = get("fp16")
    cls = type(codec)
    orig = cls.encode_flat

    def hungry(self, flat, spec, *, seed):
        big = torch.ones(16 * d)  # 64 MiB, touched
        big.add_(1)
        del big
        return orig(self, flat, spec, seed=seed)

    monkeypatch.setattr(cls, "encode_flat", hungry)
    row = speed.measure_codec("fp16", d, repeat=1, memory="alloc")  # "rss" would mallopt this process
    assert row["encode_peak_x"] >= 16.0
    assert row["peak_extra_bytes"] >= 64 * 2**20
    assert row["peak_extra_x"] == pytest.approx(row["peak_extra_bytes"] / (4 * d))
    assert "rss_peak_x" not in row
