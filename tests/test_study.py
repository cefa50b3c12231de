"""The reproduction-study runner: grid expansion, a toy study end to end, resume, failures, aggregation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from fedsqueeze import codecs
from fedsqueeze.cli import main as cli_main
from fedsqueeze.errors import ConfigError
from fedsqueeze.study.aggregate import aggregate, reach_target
from fedsqueeze.study.grid import load_study, study_from_dict, study_path
from fedsqueeze.study.runner import group_cells, run_cells, spread_groups
from support.study import write_toy_study

ROOT = Path(__file__).resolve().parents[1]


def _grid_dict(**extra_task: object) -> dict:
    return {
        "study": {"seeds": [3, 4], "set": ["fl.rounds=2"]},
        "tasks": [
            {
                "name": "toy",
                "config": {
                    "model": {"name": "toy"},
                    "data": {"num_clients": 6},
                    "fl": {"clients_per_round": 2},
                },
                **extra_task,
            }
        ],
        "codecs": [
            {"label": "identity", "name": "identity"},
            {
                "label": "topk-ef-off",
                "name": "topk",
                "options": {"density": 0.1},
                "set": ["fl.error_feedback=false"],
            },
            {"label": "qsgd", "name": "qsgd"},
        ],
        "partitions": [{"label": "iid", "partition": "iid"}, {"label": "dir0.1", "alpha": 0.1}],
    }


# -- grid ---------------------------------------------------------------------------------------------------
def test_grid_expands_every_cell_with_its_overrides() -> None:
    grid = study_from_dict(_grid_dict(codec_set={"qsgd": ["codec.options.levels=4"]}))
    cells = grid.cells()
    assert len(cells) == 1 * 2 * 3 * 2
    assert len({c.id for c in cells}) == len(cells)
    by_id = {c.id: c for c in cells}
    cell = by_id["toy/dir0.1/topk-ef-off/seed4"]
    cfg = cell.config
    assert (cfg.data.partition, cfg.data.alpha) == ("dirichlet", 0.1)
    assert cfg.codec.name == "topk" and cfg.codec.options == {"density": 0.1}
    assert cfg.fl.error_feedback is False and cfg.fl.seed == 4 and cfg.fl.rounds == 2
    assert by_id["toy/iid/identity/seed3"].config.data.partition == "iid"
    assert by_id["toy/iid/identity/seed3"].config.fl.error_feedback is True
    assert by_id["toy/iid/qsgd/seed3"].config.codec.options == {"levels": 4}
    assert cell.out_dir("OUT") == Path("OUT/toy/dir0.1/topk-ef-off/seed4")


def test_task_extends_an_earlier_task() -> None:
    data = _grid_dict(target=0.6, timing={"step_s": 0.5}, set=["train.lr=0.01"])
    data["tasks"].append(
        {
            "name": "toy-adamw",
            "extends": "toy",
            "set": ["train.optimizer=adam"],
            "config": {"data": {"num_clients": 8}},
            "timing": {"eval_s": 2.0},
        }
    )
    grid = study_from_dict(data)
    child = grid.tasks[1]
    assert child.overrides == ("train.lr=0.01", "train.optimizer=adam")
    assert child.target == 0.6 and dict(child.timing) == {"step_s": 0.5, "eval_s": 2.0}
    by_id = {c.id: c.config for c in grid.cells()}
    mine, theirs = by_id["toy-adamw/iid/qsgd/seed3"], by_id["toy/iid/qsgd/seed3"]
    assert mine.train.optimizer == "adam" and theirs.train.optimizer == "adamw"  # adamw: the default
    assert mine.train.lr == theirs.train.lr == 0.01
    assert (mine.data.num_clients, theirs.data.num_clients) == (8, 6)
    assert mine.fl.clients_per_round == theirs.fl.clients_per_round == 2  # the parent's inline config
    assert mine.differences(theirs.to_dict()) == ["data.num_clients", "train.optimizer"]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["study"].update(seedz=[1]), "study.seedz"),
        (lambda d: d["codecs"][0].update(optionz={}), "codecs[0].optionz"),
        (lambda d: d["tasks"][0].update(set=["fl.roundz=3"]), "fl.roundz"),
        (lambda d: d["codecs"][1]["options"].update(densityy=0.1), "densityy"),
        (lambda d: d["partitions"][1].update(partition="dirichlet", alpha=None), "alpha"),
        (lambda d: d["study"].update(baseline="dense"), "study.baseline"),
        (lambda d: d["codecs"].append({"label": "qsgd", "name": "qsgd"}), "duplicate codecs"),
        (lambda d: d["codecs"][0].update(label="a/b"), "codecs[0].label"),
        (lambda d: d["tasks"][0].update(base="no-such-preset"), "tasks.toy.base"),
        (lambda d: d["tasks"].append({"name": "t2", "extends": "nope"}), "tasks.t2.extends"),
        (lambda d: d["tasks"].insert(0, {"name": "t0", "extends": "toy"}), "tasks.t0.extends"),
        (lambda d: d["tasks"].append({"name": "t2", "extends": "toy", "base": "default"}), "not both"),
        (lambda d: d["tasks"].append({"name": "toy", "extends": "toy"}), "duplicate tasks"),
    ],
)
def test_bad_study_keys_raise_config_error_naming_the_key(mutate, needle: str) -> None:
    data = _grid_dict()
    mutate(data)
    data["partitions"][1] = {k: v for k, v in data["partitions"][1].items() if v is not None}
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        study_from_dict(data)


def test_shipped_study_grids_load_and_cover_the_codecs() -> None:
    default = load_study(study_path("default"))
    names = {c.name for c in default.codecs}
    required = {"identity", "fp16", "topk", "fed_cvlc", "flm_topk", "qsgd", "signsgd", "compeft", "randk"}
    assert required | {"powersgd", "cg_fedllm_q"} <= names
    assert {p.label for p in default.partitions} == {"iid", "dir1.0", "dir0.1"} and len(default.seeds) >= 2
    assert len(default.cells()) == len(default.tasks) * 3 * len(default.codecs) * len(default.seeds)
    full = load_study(study_path("full"))
    # predictive codecs need a compressed downlink to run (the full grid keeps the dense one)
    runnable = {n for n in codecs.available() if not codecs.codec_class(n).uses_reference}
    assert runnable <= {c.name for c in full.codecs}
    assert {c.config.data.dataset for c in full.cells()} == {"rotten_tomatoes", "bbc_news", "gsm8k"}
    assert len(full.seeds) == 3


# -- aggregation on hand-made runs ---------------------------------------------------------------------------
def _fake_run(out: Path, metrics: list[float], cum_bytes: list[int], config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"round": i + 1, "eval_metric": m, "cum_uplink_bytes": b, "lora_bits_per_param": 1.5 + i}
        for i, (m, b) in enumerate(zip(metrics, cum_bytes, strict=True))
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "metric_name": "accuracy",
        "final_metric": metrics[-1],
        "best_metric": max(metrics),
        "total_uplink_bytes": cum_bytes[-1],
        "rounds": len(rows),
        "wall_s": 1.0,
        "config": config,
    }
    (out / "summary.json").write_text(json.dumps(summary))


def test_target_and_traffic_reduction_from_metrics(tmp_path: Path) -> None:
    data = _grid_dict()
    data["partitions"] = [{"label": "iid"}]
    data["study"]["seeds"] = [0, 1]
    grid = study_from_dict(data)
    runs = {  # (codec, seed): eval metrics per round, cumulative uplink bytes per round
        ("identity", 0): ([0.5, 0.7, 0.8], [100, 200, 300]),
        ("identity", 1): ([0.6, 0.75, 0.9], [100, 200, 300]),
        ("topk-ef-off", 0): ([0.4, 0.6, 0.65], [10, 20, 30]),  # weakest: best mean (0.65 + 0.7) / 2
        ("topk-ef-off", 1): ([0.5, 0.6, 0.7], [10, 20, 30]),
        ("qsgd", 0): ([0.7, 0.8, 0.85], [50, 100, 150]),
        ("qsgd", 1): ([0.3, 0.5, 0.6], [50, 100, 150]),
    }
    for cell in grid.cells():
        _fake_run(cell.out_dir(tmp_path), *runs[(cell.codec, cell.seed)], cell.config.to_dict())
    res = aggregate(grid, tmp_path)
    (g,) = res["groups"]
    assert g["weakest"] == "topk-ef-off" and g["target"] == pytest.approx(0.675)
    c = {row["codec"]: row for row in g["codecs"]}
    # identity reaches 0.675 at round 2 (200 B) in both seeds; topk only in seed 1 (round 3, 30 B);
    # qsgd only in seed 0 (round 1, 50 B).
    assert c["identity"]["seeds_reached"] == 2 and c["identity"]["uplink_mb_to_target"]["mean"] == 200e-6
    assert c["topk-ef-off"]["seeds_reached"] == 1 and c["topk-ef-off"]["rounds_to_target"]["mean"] == 3
    assert c["qsgd"]["rounds_to_target"]["mean"] == 1
    assert c["topk-ef-off"]["traffic_reduction"] == pytest.approx(1 - 30 / 200)
    assert c["qsgd"]["traffic_reduction"] == pytest.approx(1 - 50 / 200)
    assert c["identity"]["traffic_reduction"] == pytest.approx(0.0)
    assert c["qsgd"]["final_metric"]["mean"] == pytest.approx(0.725)
    assert c["qsgd"]["final_metric"]["std"] == pytest.approx(statistics.stdev([0.85, 0.6]))
    assert c["identity"]["uplink_bits_per_param"]["mean"] == pytest.approx(2.5)
    assert reach_target([[1, 10, 0.2], [2, 20, 0.9]], 0.95) == (None, None)


# -- end to end on the toy model -----------------------------------------------------------------------------
def test_toy_study_end_to_end_resume_and_aggregate_only(tmp_path: Path, capsys) -> None:
    study, out = write_toy_study(tmp_path), tmp_path / "out"
    assert cli_main(["study", str(study), "--out", str(out), "--no-progress"]) == 0
    grid = load_study(study)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == {"done": 4, "failed": 0, "missing": 0}
    (group,) = res["groups"]
    for row in group["codecs"]:
        summaries = [
            json.loads((c.out_dir(out) / "summary.json").read_text())
            for c in grid.cells()
            if c.codec == row["codec"]
        ]
        assert row["seeds_done"] == 2
        assert row["final_metric"]["mean"] == pytest.approx(
            statistics.fmean(s["final_metric"] for s in summaries)
        )
        assert row["best_metric"]["mean"] == pytest.approx(
            statistics.fmean(s["best_metric"] for s in summaries)
        )
        mb = [s["total_uplink_bytes"] / 1e6 for s in summaries]
        assert row["uplink_mb"]["mean"] == pytest.approx(statistics.fmean(mb))
    for cell in grid.cells():
        d = cell.out_dir(out)
        assert (d / "metrics.jsonl").is_file() and (d / "accuracy_vs_uplink.png").is_file()
        assert not (d / "checkpoint").exists()
    assert (out / "plots" / "toy__dir0.5.png").stat().st_size > 0
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 2
    md = (out / "results.md").read_text()
    assert "| identity | 2/2 |" in md and f"fedsqueeze study {study}" in md

    # resume: every cell is skipped and left untouched
    stamps = {c.id: (c.out_dir(out) / "summary.json").stat().st_mtime_ns for c in grid.cells()}
    results = run_cells(grid.cells(), out, progress=False)
    assert [r.status for r in results] == ["skipped"] * 4
    assert stamps == {c.id: (c.out_dir(out) / "summary.json").stat().st_mtime_ns for c in grid.cells()}
    # a cell without summary.json reruns (only that one), and --only limits the run
    redo = grid.cells()[1]
    (redo.out_dir(out) / "summary.json").unlink()
    capsys.readouterr()
    assert cli_main(["study", str(study), "--out", str(out), "--only", "*/seed0", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "2 cells" in listed and "done" in listed and "seed1" not in listed
    # the cell left to run is estimated from the finished ones' measured wall time, and says so
    assert cli_main(["study", str(study), "--out", str(out), "--dry-run"]) == 0
    listed_all = capsys.readouterr().out
    walls = [
        json.loads((c.out_dir(out) / "summary.json").read_text())["wall_s"]
        for c in grid.cells()
        if c.id != redo.id
    ]
    assert f"~{sum(walls) / len(walls):6.0f} s" in listed_all and "mean of 3 finished cells" in listed_all
    assert "'name@rR' is that codec at a target rate of R bits per parameter" in listed_all
    results = run_cells(grid.cells(), out, progress=False)
    assert [r.id for r in results if r.status == "done"] == [redo.id]

    # --aggregate-only rebuilds the tables from the folders and runs nothing
    for name in ("results.json", "results.csv", "results.md"):
        (out / name).unlink()
    (grid.cells()[0].out_dir(out) / "summary.json").rename(out / "moved.json")
    assert cli_main(["study", str(study), "--out", str(out), "--aggregate-only"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["status"] == {"done": 3, "failed": 0, "missing": 1}
    assert not (grid.cells()[0].out_dir(out) / "summary.json").exists()

    # a cell whose summary was made with another config (the study file changed) is stale: it reruns
    study.write_text(study.read_text().replace("rounds = 3", "rounds = 4"))
    cell = load_study(study).cells()[1]
    assert aggregate(load_study(study), out)["cells"][1]["stale"] is True
    (res,) = run_cells([cell], out, progress=False)
    assert res.status == "done"
    assert len((cell.out_dir(out) / "metrics.jsonl").read_text().splitlines()) == 4


def test_failing_cell_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    # cg_fedllm without a trained autoencoder fails at its first encode
    study, out = (
        write_toy_study(tmp_path, label="cg_fedllm", name="cg_fedllm", options="{}"),
        tmp_path / "out",
    )
    assert cli_main(["study", str(study), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == {"done": 2, "failed": 2, "missing": 0}
    failed = [c for c in res["cells"] if c["status"] == "failed"]
    assert {c["codec"] for c in failed} == {"cg_fedllm"}
    for c in failed:
        text = (Path(c["dir"]) / "error.txt").read_text()
        assert "autoencoder" in text and "autoencoder" in c["error"]
    assert "## Failed cells" in (out / "results.md").read_text()
    (group,) = res["groups"]
    assert {r["codec"]: r["seeds_failed"] for r in group["codecs"]} == {"identity": 0, "cg_fedllm": 2}


def test_jobs_split_a_seed_group_so_no_process_idles() -> None:
    cells = study_from_dict(_grid_dict()).cells()  # 2 seeds x 2 partitions: 4 workload groups of 3 codecs
    groups = group_cells(cells)
    assert [len(g) for g in groups] == [3, 3, 3, 3]
    assert spread_groups(groups, 4) == groups  # already one group per process
    eight = spread_groups(groups, 8)
    assert [len(g) for g in eight] == [2, 1] * 4
    assert [c.id for g in eight for c in g] == [c.id for g in groups for c in g]  # order and cells kept
    assert all(len({(c.seed, c.config.data.partition) for c in g}) == 1 for g in eight)  # halves of a group
    one_seed = group_cells([c for c in cells if c.seed == 3 and c.config.data.partition == "iid"])
    assert [len(g) for g in spread_groups(one_seed, 2)] == [2, 1]
    assert len(spread_groups(groups, 50)) == len(cells)  # never below one cell a group


def test_parallel_jobs_give_the_same_results(tmp_path: Path) -> None:
    grid = load_study(write_toy_study(tmp_path))
    cells = [c for c in grid.cells() if c.seed == 0]
    serial = run_cells(cells, tmp_path / "a", progress=False)
    parallel = run_cells(cells, tmp_path / "b", jobs=2, progress=False)
    assert [r.status for r in parallel] == ["done", "done"]
    for c in cells:
        a = (c.out_dir(tmp_path / "a") / "metrics.jsonl").read_text().splitlines()
        b = (c.out_dir(tmp_path / "b") / "metrics.jsonl").read_text().splitlines()
        strip = ("train_s", "wall_s", "client_s", "sim_round_s", "sim_time_s")
        assert [{k: v for k, v in json.loads(x).items() if k not in strip} for x in a] == [
            {k: v for k, v in json.loads(x).items() if k not in strip} for x in b
        ]
    assert [r.metric for r in serial] == [r.metric for r in parallel]
