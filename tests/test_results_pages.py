"""The results pages of the docs site (docs/bench/*.md) are what docs/results/pages.py writes from the
committed results.json / bd_rate.json files, and the generator copes with a grid whose cells are partly
missing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pages():
    spec = importlib.util.spec_from_file_location("results_pages", ROOT / "docs" / "results" / "pages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("results_pages", module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["results_pages"])
    return sys.modules["results_pages"]


def test_the_committed_results_pages_are_up_to_date(tmp_path: Path) -> None:
    pages = _pages()
    assert pages.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.md"))
    committed = sorted(p.name for p in (ROOT / "docs" / "bench").glob("*.md"))
    assert written == committed, "docs/bench/ holds pages the generator does not write (or misses some)"
    stale = [
        n
        for n in written
        if (tmp_path / n).read_text("utf-8") != (ROOT / "docs/bench" / n).read_text("utf-8")
    ]
    assert stale == [], f"regenerate: python docs/results/pages.py (stale: {stale})"
    # deterministic: a second run writes the same bytes
    again = tmp_path / "again"
    pages.main(["--out", str(again)])
    assert all((again / n).read_bytes() == (tmp_path / n).read_bytes() for n in written)


def test_every_results_page_is_in_the_site_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text("utf-8")
    for bench in _pages().BENCHES:
        assert f"bench/{bench.page}.md" in nav, bench.page


def _stat(mean: float | None, std: float | None, n: int) -> dict:
    return {"mean": mean, "std": std, "n": n}


def test_a_grid_with_missing_cells_renders_with_its_seed_counts(tmp_path: Path) -> None:
    """Two of three seeds for one column, one for another, none for a third, and a group with no cell."""
    pages = _pages()
    folder = tmp_path / "docs" / "results" / "toy"
    folder.mkdir(parents=True)

    def column(name: str, seeds: list[int], final: float) -> dict:
        n = len(seeds)
        return {
            "codec": name,
            "codec_name": name.split("@")[0],
            "seeds_done": n,
            "final_metric": _stat(final if n else None, 0.01 if n > 1 else None, n),
            "best_metric": _stat(final if n else None, 0.01 if n > 1 else None, n),
            "uplink_mb": _stat(1.0 if n else None, 0.0, n),
            "downlink_mb": _stat(1.0 if n else None, 0.0, n),
            "total_mb": _stat((4.0 if name == "identity" else 2.0) if n else None, 0.0, n),
            "per_seed": {str(s): {"final": final, "best": final} for s in seeds},
            "seeds_reached": 0,
        }

    cells = [
        {
            "id": f"t/iid/{c}/seed{s}",
            "task": "t",
            "partition": "iid",
            "codec": c,
            "seed": s,
            "status": "done",
            "dir": f"runs/x/{c}/{s}",
            "wall_s": 60.0,
            "config": {"model": {"name": "toy"}, "fl": {"rounds": 2}},
        }
        for c, seeds in (("identity", [0, 1]), ("topk@r1", [1]))
        for s in seeds
    ]
    results = {
        "study": "toy",
        "command": "fedsqueeze study toy",
        "machine": {
            "processor": "x86_64",
            "cpu_count": 2,
            "cpus_usable": 2,
            "gpu": None,
            "python": "3",
            "torch": "t",
        },
        "run_platforms": ["p"],
        "baseline": "identity",
        "seeds": [0, 1, 2],
        "status": {"done": 3, "failed": 0, "missing": 6},
        "groups": [
            {
                "task": "t",
                "partition": "iid",
                "metric_name": "accuracy",
                "target": 0.5,
                "target_source": "x",
                "baseline": "identity",
                "baseline_downlink": "identity",
                "codecs": [
                    column("identity", [0, 1], 0.8),
                    column("topk@r1", [1], 0.7),
                    column("wf_ecq@r1", [], 0),
                ],
            },
            {
                "task": "t",
                "partition": "dir0.5",
                "metric_name": "accuracy",
                "codecs": [column("identity", [], 0)],
            },
        ],
        "cells": cells,
    }
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    bench = pages.Bench("toy", "toy", "no-such-grid", "toy: a test grid", "About.")
    text = pages.render(bench, tmp_path)
    assert "| `identity` | 2 (0, 1) | 0.800 ± 0.010 |" in text
    assert "| `topk@r1` | 1 (1) | 0.700 | 0.700 |" in text
    assert "`wf_ecq@r1`" not in text  # a column with no finished seed has no row
    assert "with no finished cell: `t/dir0.5`" in text
    assert "| 2.0 |" in text  # 4 MB of the dense baseline over 2 MB
    assert "fewer seeds than the grid's" in text
    assert "local training on the CPU: the project's development machine" in text
    assert pages.render(bench, tmp_path) == text
    # A study with cells trained on a GPU names it instead of claiming the CPU.
    results["run_devices"] = ["cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"]
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    text = pages.render(bench, tmp_path)
    assert "on the CPU or on cuda:0 (NVIDIA H100 80GB HBM3)" in text and "development machine" not in text


def test_the_broadcast_table_in_the_downlink_page_is_what_its_script_prints() -> None:
    spec = importlib.util.spec_from_file_location("broadcast_table", ROOT / "docs/results/broadcast_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((ROOT / "docs/results/lora-bench/results.json").read_text(encoding="utf-8"))
    page = (ROOT / "docs/downlink.md").read_text(encoding="utf-8")
    start, end = "<!-- broadcast-table -->\n", "<!-- /broadcast-table -->"
    committed = page.split(start, 1)[1].split(end, 1)[0].strip()
    assert committed == module.table(results, "minilm-rt-lora-adamw/iid"), (
        "rerun: python docs/results/broadcast_table.py docs/results/lora-bench/results.json "
        "minilm-rt-lora-adamw/iid, and paste its table into docs/downlink.md"
    )
    start, end = "<!-- catch-up-table -->\n", "<!-- /catch-up-table -->"
    committed = page.split(start, 1)[1].split(end, 1)[0].strip()
    assert committed == module.table(results, "minilm-rt-lora-adamw/iid", catch_up=True), (
        "rerun: python docs/results/broadcast_table.py docs/results/lora-bench/results.json "
        "minilm-rt-lora-adamw/iid --catch-up, and paste its table into docs/downlink.md"
    )


def test_the_transfer_table_in_the_results_page_is_what_its_script_prints() -> None:
    spec = importlib.util.spec_from_file_location("transfer_table", ROOT / "docs/results/transfer_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs/results.md").read_text(encoding="utf-8")
    start, end = "<!-- transfer-table -->\n", "<!-- /transfer-table -->"
    committed = page.split(start, 1)[1].split(end, 1)[0].strip()
    results = ROOT / "docs" / "results"
    printed = module.table(
        (results / "lora-bench" / "results.json", "minilm-rt-lora-adamw/iid"),
        (results / "smollm2-bench" / "results.json", "smollm2-rt-verbalizer/iid"),
    )
    assert committed == printed, (
        "rerun the command above the <!-- transfer-table --> block of docs/results.md and paste its table"
    )


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "results" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results_page_block(marker: str) -> str:
    """The text between ``<!-- marker -->`` and ``<!-- /marker -->`` in docs/results.md."""
    page = (ROOT / "docs/results.md").read_text(encoding="utf-8")
    return page.split(f"<!-- {marker} -->\n", 1)[1].split(f"<!-- /{marker} -->", 1)[0].strip()


def _smollm2_results() -> dict:
    return json.loads((ROOT / "docs/results/smollm2-bench/results.json").read_text(encoding="utf-8"))


def test_the_task_table_in_the_results_page_is_what_its_script_prints() -> None:
    module = _script("task_table")
    committed = _results_page_block("task-table")
    groups = ["smollm2-rt-verbalizer/iid", "smollm2-rt-verbalizer/dir0.5", "smollm2-bbc-verbalizer/iid",
              "smollm2-gsm8k-sft/iid"]  # fmt: skip
    assert committed == module.table(_smollm2_results(), groups), (
        "rerun the command above the <!-- task-table --> block of docs/results.md and paste its table"
    )


def test_the_task_table_pairs_seeds_and_signs_a_loss_against_dense() -> None:
    module = _script("task_table")

    def col(name, finals):
        return {"codec": name, "per_seed": {s: {"final": f} for s, f in finals.items()}}

    acc = {
        "task": "a",
        "partition": "iid",
        "metric_name": "accuracy",
        "metric_higher_is_better": True,
        "codecs": [col("identity", {"0": 0.80, "1": 0.90}), col("x", {"0": 0.75, "1": 0.80, "2": 0.5})],
    }
    loss = {"task": "b", "partition": "iid", "metric_name": "eval_loss", "metric_higher_is_better": False,
            "codecs": [col("identity", {"0": 1.000}), col("x", {"0": 1.020})]}  # fmt: skip
    text = module.table({"groups": [acc, loss]}, ["a/iid", "b/iid"], columns=("x", "y"))
    # accuracy: seeds 0 and 1 pair (-5.0 and -10.0 points), seed 2 has no dense seed; loss: +0.020 is worse
    assert "| `x` | 0.750 / 0.800 / 0.500: -7.5 ± 3.5 (2) | 1.020: +0.020 (1) |" in text
    assert "| `y` | – | – |" in text and "| `identity` | 0.800 / 0.900 (2) | 1.000 (1) |" in text


def test_the_smollm2_broadcast_table_in_the_results_page_is_what_its_script_prints() -> None:
    module = _script("broadcast_table")
    committed = _results_page_block("broadcast-table smollm2-bench")
    assert committed == module.table(_smollm2_results(), "smollm2-rt-verbalizer/iid"), (
        "rerun the command above the <!-- broadcast-table smollm2-bench --> block of docs/results.md"
    )
