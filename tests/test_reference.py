"""The recorded benchmark task a run is compared with (fedsqueeze.fl.reference, configs/references.json)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fedsqueeze.config import load_config
from fedsqueeze.fl.reference import load_references, reference_for, reference_line

ROOT = Path(__file__).resolve().parents[1]
LORA_BENCH = ROOT / "docs" / "results" / "lora-bench" / "results.json"


def _script():
    spec = importlib.util.spec_from_file_location("references_script", ROOT / "docs/results/references.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _column(group: str, label: str) -> dict:
    task, partition = group.split("/")
    results = json.loads(LORA_BENCH.read_text(encoding="utf-8"))
    g = next(x for x in results["groups"] if x["task"] == task and x["partition"] == partition)
    return next(c for c in g["codecs"] if c["codec"] == label)


def test_the_packaged_references_are_what_the_script_writes_from_the_committed_cells():
    mod = _script()
    packaged = (ROOT / "src/fedsqueeze/configs/references.json").read_text(encoding="utf-8")
    assert packaged == mod.render(mod.build()), "run: python docs/results/references.py"


def test_the_default_run_is_the_lora_bench_task_and_reports_its_recorded_dense_column():
    ref = reference_for(load_config())
    assert ref is not None and (ref["study"], ref["task"], ref["partition"]) == (
        "lora-bench",
        "minilm-rt-lora-adamw",
        "iid",
    )
    dense = _column("minilm-rt-lora-adamw/iid", "identity")  # read independently of the module
    assert ref["dense"]["final_metric"]["mean"] == pytest.approx(dense["final_metric"]["mean"])
    assert ref["dense"]["final_metric"]["n"] == dense["final_metric"]["n"] >= 3
    assert ref["dense"]["total_mb"] == pytest.approx(dense["total_mb"]["mean"])
    assert ref["dense"]["codec"]["name"] == "identity" and ref["dense"]["downlink"]["name"] == "identity"
    # the default's own codec and downlink were recorded on the task too, over 3 seeds
    same = ref["same_config"]
    assert same is not None and same["final_metric"]["n"] >= 3
    cfg = load_config().to_dict()
    assert same["codec"]["name"] == cfg["codec"]["name"]
    assert same["downlink"]["name"] == cfg["downlink"]["name"]


def test_a_run_on_another_task_or_recipe_gets_no_reference():
    assert reference_for(load_config("smoke")) is None
    assert reference_for(load_config("skewed-head")) is None
    assert reference_for(load_config(None, ["train.lr=1e-3"])) is None  # another recipe: not comparable
    # the codec, the downlink, the seed and the target may differ
    other = reference_for(load_config(None, ["codec.name=topk", "fl.seed=1", "downlink.name=identity"]))
    assert other is not None and other["same_config"] is None  # topk at its defaults: never recorded


def test_the_catch_up_is_part_of_a_columns_protocol():
    """The default run (re-encoded catch-up) gets its task's record and the column recorded with re-encoding;
    the same codecs catching up frame by frame get the task's own column."""
    task = next(t for t in load_references() if t["task"] == "minilm-rt-lora-adamw")
    assert task["config"]["fl"]["downlink_catch_up"] == "frames"  # the task's cells catch up frame by frame
    default = reference_for(load_config())
    assert default is not None and default["same_config"]["changes"] == {"fl.downlink_catch_up": "reencode"}
    frames = reference_for(load_config(None, ["fl.downlink_catch_up=frames"]))
    assert frames is not None and frames["dense"]["label"] == "identity"
    same = frames["same_config"]
    assert same is not None and "changes" not in same
    assert (same["codec"], same["downlink"]) == (
        default["same_config"]["codec"],
        default["same_config"]["downlink"],
    )
    # a column with another recipe (FFA-LoRA) is recorded with its changes and never matches the task's runs
    ffa = [c for c in task["columns"] if c["label"] == "identity-ffa"]
    assert ffa and ffa[0]["changes"] == {"model.lora_train": "b"}


def test_the_reference_line_names_the_task_the_dense_result_and_the_seed():
    ref = reference_for(load_config())
    line = reference_line({"reference": ref, "seed": 0})
    dense = ref["dense"]
    assert line.startswith("recorded on this task (lora-bench minilm-rt-lora-adamw/iid): dense fp32 ")
    assert f"{dense['final_metric']['mean']:.3f} ± {dense['final_metric']['std']:.3f} (3 seeds)" in line
    assert f"dense with seed 0: {dense['per_seed']['0']:.3f}" in line
    assert reference_line({"reference": None}) is None


def test_every_recorded_task_has_a_dense_column_and_a_config():
    tasks = load_references()
    assert len(tasks) >= 1
    for t in tasks:
        labels = [c["label"] for c in t["columns"]]
        assert t["dense"] in labels and "fl" in t["config"] and "seed" not in t["config"]["fl"]


def test_the_pages_show_the_default_runs_recorded_figures_as_generated():
    mod = _default_run_script()
    table = mod.table()
    for page in mod.PAGES:
        assert mod.block((ROOT / page).read_text(encoding="utf-8")) == table, (
            f"{page}: run python docs/results/default_run.py --write"
        )
    choices = mod.block((ROOT / mod.CHOICES_PAGE).read_text(encoding="utf-8"), mod.CHOICES)
    assert choices == mod.choices(), "run python docs/results/default_run.py --write"
    assert "(default)" in choices
    others = mod.other_tasks()
    assert others  # SmolLM2's task: its columns by total MB in docs/results.md
    for task in others:
        shown = mod.block((ROOT / mod.OTHER_PAGE).read_text(encoding="utf-8"), mod.other_markers(task))
        assert shown == mod.choices(task), f"{task['study']}: run python docs/results/default_run.py --write"


def _default_run_script():
    spec = importlib.util.spec_from_file_location("default_run_script", ROOT / "docs/results/default_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_run_on_a_recorded_task_writes_and_prints_its_reference(tmp_path, monkeypatch, capsys):
    """End to end through ``fedsqueeze run``: a toy task recorded in a stand-in references file."""
    import fedsqueeze.fl.loop as loop
    from fedsqueeze.cli import main as cli_main
    from fedsqueeze.fl import reference as ref_mod
    from fedsqueeze.fl.toy import ToyWorkload

    monkeypatch.setattr(loop, "build_workload", lambda config: ToyWorkload(config.data.num_clients))
    cfg = tmp_path / "toy.toml"
    cfg.write_text(
        '[model]\nname = "toy"\n[data]\nnum_clients = 4\n[fl]\nrounds = 2\nclients_per_round = 2\n'
        '[codec]\nname = "flm_topk"\n',
        encoding="utf-8",
    )
    task = load_config(cfg).to_dict()
    del task["fl"]["seed"], task["fl"]["target_metric"]
    column = {"final_metric": {"mean": 0.5, "std": 0.01, "n": 2}, "per_seed": {"0": 0.49, "1": 0.51}}
    record = {
        "study": "toy-bench", "task": "toy", "partition": "iid", "command": "fedsqueeze study toy-bench",
        "machine": None, "metric_name": "accuracy", "dense": "identity", "config": task,
        "columns": [{"label": "identity", "codec": {"name": "identity", "options": {}},
                     "downlink": {"name": "identity", "options": {}}, **column,
                     "uplink_mb": 1.0, "downlink_mb": 1.0, "total_mb": 2.0}],
    }  # fmt: skip
    monkeypatch.setattr(ref_mod, "load_references", lambda: (record,))
    out = tmp_path / "out"
    assert cli_main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == (
        "recorded on this task (toy-bench toy/iid): dense fp32 0.500 ± 0.010 (2 seeds) at 2.00 MB; "
        "dense with seed 0: 0.490"
    )
    assert printed[-1].startswith("2 rounds, final accuracy")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["reference"]["dense"]["total_mb"] == 2.0 and summary["reference"]["same_config"] is None
    # another recipe: no reference, and no line
    assert (
        cli_main(["run", str(cfg), "--set", "train.lr=0.5", "--out", str(tmp_path / "b"), "--no-progress"])
        == 0
    )
    assert not any(line.startswith("recorded") for line in capsys.readouterr().out.splitlines())
    assert json.loads((tmp_path / "b" / "summary.json").read_text(encoding="utf-8"))["reference"] is None


def test_the_equal_accuracy_plot_draws_every_recorded_column(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "docs" / "results"))
    try:
        spec = importlib.util.spec_from_file_location(
            "equal_accuracy", ROOT / "docs/results/equal_accuracy.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "docs" / "results"))
    drawn = []
    real = mod.plt.Axes.scatter
    monkeypatch.setattr(
        mod.plt.Axes, "scatter", lambda self, x, y, **kw: drawn.append((x, y)) or real(self, x, y, **kw)
    )
    default = reference_for(load_config())["same_config"]
    for i, task in enumerate(load_references()):  # lora-bench's task and SmolLM2's
        drawn.clear()
        assert mod.plot(task, default, tmp_path / f"{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        want = sorted((c["total_mb"], c["final_metric"]["mean"]) for c in task["columns"])
        assert sorted(drawn) == want  # one point per recorded column, at its total MB and mean accuracy


def test_a_columns_recipe_changes_read_as_words():
    changes = _default_run_script()._changes
    assert changes(
        {"fl.clients_per_round": 2, "train.max_steps": 40, "model.lora_r": 4, "model.lora_alpha": 8}
    ) == [
        "2 clients a round × 40 local steps",
        "LoRA rank 4",
    ]
    assert changes({"fl.rounds": 6, "train.max_steps": 40}) == ["6 rounds × 40 local steps"]
    assert changes({"fl.clients_per_round": 2}) == ["2 clients a round"]
    assert changes({"fl.uplink_rates": [4, 2], "fl.seed": 3}) == ["fl.seed = 3"]
