"""docs/reference/outputs.md names every field that a run writes into metrics.jsonl and summary.json, and
every field it names is written: checked on a 2-round run of the toy workload."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedsqueeze.config import load_config
from fedsqueeze.fl import run
from fedsqueeze.fl.toy import ToyWorkload

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "outputs.md"
# Summary fields that a plain local run does not write: the Flower driver's, and the main rounds' own totals
# that only a run with a TGAP phase keeps beside the totals that include it.
CONDITIONAL = {"flower", "faf_uplink_bytes", "faf_downlink_bytes", "faf_wall_s"}


def _fields(text: str) -> set[str]:
    """Backticked names in the first column of the tables whose first header is ``field``."""
    names, inside = set(), False
    for line in text.splitlines():
        if line.startswith("|"):
            cell = line.split("|")[1].strip()
            if cell == "field":
                inside = True
            elif inside and not cell.startswith("---"):
                names |= set(re.findall(r"`([a-z_0-9]+)`", cell))
        else:
            inside = False
    return names


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> tuple[list[dict], dict]:
    out = tmp_path_factory.mktemp("toy")
    cfg = load_config("smoke", ["model.name=toy", "fl.rounds=2"])
    run(cfg, out, workload=ToyWorkload(cfg.data.num_clients))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def _sections() -> tuple[set[str], set[str]]:
    text = PAGE.read_text(encoding="utf-8")
    rows, summary = text.split("\n## `summary.json`", 1)
    return _fields(rows.split("\n## `metrics.jsonl`", 1)[1]), _fields(summary)


def test_every_row_field_is_documented_and_every_documented_one_is_written(outputs) -> None:
    rows, _ = outputs
    documented, _ = _sections()
    written = set().union(*(r.keys() for r in rows))
    assert len(rows) == 2 and all(r.keys() == rows[0].keys() for r in rows)
    assert sorted(written - documented) == [], "metrics.jsonl fields missing from docs/reference/outputs.md"
    assert sorted(documented - written) == [], (
        "docs/reference/outputs.md names row fields a run does not write"
    )


def test_every_summary_field_is_documented_and_every_documented_one_is_written(outputs) -> None:
    _, summary = outputs
    _, documented = _sections()
    assert sorted(set(summary) - documented) == [], (
        "summary.json fields missing from docs/reference/outputs.md"
    )
    assert sorted(documented - set(summary)) == sorted(CONDITIONAL)
    source = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "fedsqueeze").rglob("*.py"))
    assert all(f'"{name}"' in source for name in CONDITIONAL)


def test_the_two_both_ways_rates_are_the_quantities_the_page_defines(outputs) -> None:
    """``bits_per_param_total`` is per transfer, ``total_bits_per_param`` per client-round: with every sampled
    client both downloading and uploading, the second is twice the first."""
    _, s = outputs
    params = s["lora_numel"] + s["head_numel"]
    assert s["uploads"] == s["downloads"] == s["client_rounds"] > 0
    assert s["bits_per_param_total"] == pytest.approx(
        8 * s["total_bytes"] / (2 * s["client_rounds"] * params)
    )
    assert s["total_bits_per_param"] == pytest.approx(8 * s["total_bytes"] / (s["client_rounds"] * params))
    assert s["total_bits_per_param"] == pytest.approx(2 * s["bits_per_param_total"])
