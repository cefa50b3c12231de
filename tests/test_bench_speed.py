"""`fedsqueeze bench speed`: fields present, positive timings and ratios, memory measured per codec."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

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
    "floor_s",
    "ratio_floor",
    "peer_s",
    "ratio_peer",
    "peer_note",
    "ns_per_value",
)


def test_speed_cli_runs_each_codec_in_a_subprocess(tmp_path):
    codecs = ["fp16"] + (["topk"] if "topk" in available() else []) + ["nf4"]
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
        both = r["encode_s"] + r["decode_s"]
        assert r["floor_s"] > 0 and r["ratio_floor"] == pytest.approx(both / r["floor_s"])
        assert r["ns_per_value"] == pytest.approx(1e9 * both / r["d"])
        if r["peer_s"] is None:
            assert r["ratio_peer"] is None and r["peer_note"]
        else:
            assert r["ratio_peer"] == pytest.approx(both / r["peer_s"])
    by = {r["codec"]: r for r in rows}
    assert by["fp16"]["peer_s"] is None and by["fp16"]["peer_note"] == speed.NO_PEER
    if importlib.util.find_spec("bitsandbytes") is None:
        assert by["nf4"]["peer_note"] == "bitsandbytes not installed"
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


def test_several_sizes_give_a_row_per_size_and_codec(tmp_path, capsys):
    argv = ["bench", "speed", "--d", "4096,8192", "--codec", "fp16", "--codec", "blockwise8", "--repeat", "1"]
    argv += ["--memory", "off", "--json", str(tmp_path / "s.json")]
    assert cli_main(argv) == 0
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["d"], r["codec"]) for r in rows] == [
        (4096, "fp16"), (4096, "blockwise8"), (8192, "fp16"), (8192, "blockwise8")
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "[1/4] fp16 at d=4,096: " in out and "[4/4] blockwise8 at d=8,192: " in out
    assert "/floor" in out and "/peer" in out and "ns/value" in out
    for r in rows:
        assert r["ratio_floor"] > 0 and r["ns_per_value"] > 0


def test_a_bad_size_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "speed", "--d", "4096,x", "--codec", "fp16"])
    assert exc.value.code == 2
    assert "expected integers separated by commas" in capsys.readouterr().err


def test_the_peer_column_is_computed_when_a_peer_runs(monkeypatch):
    # A stand-in peer (bitsandbytes may not be installed here): ratio_peer is (enc + dec) / its time.
    calls = []

    def fake_peer(name, options):
        assert name == "nf4" and options == {"block": 128}

        def round_trip(u):
            calls.append(u.numel())
            return u.clone()

        return round_trip, "stand-in peer"

    monkeypatch.setattr(speed, "peer_round_trip", fake_peer)
    row = speed.measure_codec("nf4:block=128", 1 << 14, repeat=2, memory="off")
    assert calls == [1 << 14, 1 << 14] and row["peer_note"] == "stand-in peer"
    assert row["peer_s"] > 0 and row["ratio_peer"] == pytest.approx(
        (row["encode_s"] + row["decode_s"]) / row["peer_s"]
    )


def test_peer_round_trip_without_a_peer():
    assert speed.peer_round_trip("topk", {}) == (None, speed.NO_PEER)
    fn, note = speed.peer_round_trip("nf4", {"block": 64})
    if importlib.util.find_spec("bitsandbytes") is None:
        assert fn is None and note == "bitsandbytes not installed"
    elif fn is not None:  # installed and usable: the same job, same length back
        assert fn(torch.linspace(-1, 1, 256)).numel() == 256
