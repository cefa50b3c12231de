"""``fedsqueeze bench server`` at tiny sizes: its fields, distinct frames, the real round path (no times)."""

from __future__ import annotations

import json

import pytest
import torch

import fedsqueeze.fl.robust as robust
from fedsqueeze.bench.server import build_frames, measure_round
from fedsqueeze.cli import main
from fedsqueeze.codecs import decode_flat
from fedsqueeze.errors import ConfigError

FIELDS = ("clients", "d", "codec", "round_s", "peak_rss_bytes", "frame_bytes_total")


def test_the_command_writes_its_fields(tmp_path, capsys) -> None:
    out = tmp_path / "server.json"
    rc = main(["bench", "server", "--clients", "7", "--d", "4096", "--codec", "wf_ecq", "--json", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())
    for field in FIELDS:
        assert field in row
    assert (row["clients"], row["d"], row["codec"]) == (7, 4096, "wf_ecq")
    assert row["peak_rss_bytes"] > 0 and row["round_s"] > 0 and row["frame_bytes_total"] > 0
    assert row["kept"] == 7 and row["passes"] == 1 and row["decoded_fp32_bytes"] == 7 * 4 * 4096
    assert "peak RSS" in capsys.readouterr().out


def test_frames_are_distinct_and_decode_to_the_encoded_updates() -> None:
    spec, frames, weights, distinct = build_frames("topk:density=0.1", 2048, 11, distinct=3)
    assert distinct == 3 and len(frames) == len(weights) == 11
    assert len(set(frames)) == 11  # every client's bytes differ
    decoded = [decode_flat(f, spec) for f in frames]
    assert all(torch.equal(decoded[i], decoded[i % 3]) for i in range(11))  # the seed-free decoder
    assert not torch.equal(decoded[0], decoded[1])


def test_it_runs_the_servers_round_function(monkeypatch) -> None:
    calls = []
    real = robust.screen_and_aggregate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(robust, "screen_and_aggregate", spy)
    row = measure_round(5, 1024, "identity", workers=2, aggregation="median")
    assert len(calls) == 1 and calls[0]["workers"] == 2 and calls[0]["method"] == "median"
    assert row["kept"] == 5 and row["aggregation"] == "median"
    old = measure_round(5, 1024, "identity", hold_all=True)
    assert len(calls) == 1 and old["path"].startswith("hold_all") and old["peak_rss_bytes"] > 0


def test_bad_sizes_and_budgets_are_one_line_errors(capsys) -> None:
    with pytest.raises(ConfigError, match="--clients"):
        build_frames("identity", 16, 0)
    with pytest.raises(ConfigError, match="aggregation_memory_mb"):
        measure_round(1000, 1 << 20, "identity", aggregation="median", memory_mb=1024)
    rc = main(["bench", "server", "--clients", "0", "--d", "16"])
    assert rc == 2 and "--clients" in capsys.readouterr().err
