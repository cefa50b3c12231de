"""RunConfig: TOML presets, --set overrides, errors that name the key; the `fedsqueeze run` CLI."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

import fedsqueeze.fl.loop as loop
from fedsqueeze.cli import main as cli_main
from fedsqueeze.config import (
    CODEC_DEFAULT,
    DOWNLINK_DEFAULT,
    RunConfig,
    apply_overrides,
    load_config,
    preset_names,
)
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl.toy import ToyWorkload

ROOT = Path(__file__).resolve().parents[1]


def test_presets_and_study_grids_are_stored_once_as_package_data():
    packaged = resources.files("fedsqueeze") / "configs"
    names = sorted(p.name for p in packaged.iterdir() if p.name.endswith(".toml"))
    assert {"default.toml", "smoke.toml", "paper.toml"} <= set(names)
    grids = sorted(p.name for p in (packaged / "study").iterdir() if p.name.endswith(".toml"))
    assert {"default.toml", "e2e-default.toml", "full.toml"} <= set(grids)
    assert sorted((ROOT / "configs").rglob("*.toml")) == []  # no second copy in the repository root
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"configs/*.toml"' in pyproject and '"configs/study/*.toml"' in pyproject
    assert '"configs/*.json"' in pyproject and (packaged / "references.json").is_file()  # summary's reference


def test_presets_load_and_default_is_the_embedded_default():
    for name in preset_names():
        assert isinstance(load_config(name), RunConfig)
    cfg = load_config()
    assert (cfg.model.name, cfg.data.dataset, cfg.data.num_clients) == ("minilm", "rotten_tomatoes", 20)
    # the LoRA-carried task (lora-bench's AdamW/IID one): the head trains in round 1 only
    assert (cfg.data.partition, cfg.fl.clients_per_round, cfg.fl.rounds) == ("iid", 4, 12)
    assert (cfg.model.head, cfg.train.optimizer, cfg.train.max_steps) == ("first_round", "adamw", 20)
    assert (cfg.codec.name, cfg.codec.options) == (CODEC_DEFAULT[0], dict(CODEC_DEFAULT[1]))
    assert (cfg.downlink.name, cfg.downlink.options) == (DOWNLINK_DEFAULT[0], dict(DOWNLINK_DEFAULT[1]))
    old = load_config("skewed-head")  # the previous default, kept for the grids built on it
    assert (old.data.partition, old.data.alpha, old.fl.clients_per_round) == ("dirichlet", 0.5, 5)
    assert (old.model.head, old.train.optimizer, old.codec.name) == ("train", "adam", "flm_topk")
    assert load_config("paper").downlink.name == "identity"  # the papers' dense broadcast
    paper = load_config("paper")
    assert (paper.data.num_clients, paper.fl.clients_per_round, paper.fl.rounds) == (100, 10, 200)
    assert (paper.train.epochs, paper.train.batch_size, paper.model.lora_r) == (5, 64, 16)
    assert paper.model.head == "first_round"  # the FLM-TopK authors' protocol: only LoRA moves after round 1


def test_config_file_roundtrip_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[fl]\nrounds = 7\n[codec]\nname = "topk"\noptions = { density = 0.1 }\n')
    cfg = load_config(
        path, ["fl.seed=3", "train.lr=5e-4", 'model.target_modules=["query"]', "model.name=tiny-bert"]
    )
    assert (cfg.fl.rounds, cfg.fl.seed, cfg.train.lr) == (7, 3, 5e-4)
    assert cfg.model.target_modules == ("query",) and cfg.model.name == "tiny-bert"  # bare word -> string
    assert cfg.codec.options == {"density": 0.1}
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    cfg2 = load_config(path, ["codec.options.density=0.2", "downlink.name=topk", "fl.target_metric=0.8"])
    assert (
        cfg2.codec.options == {"density": 0.2}
        and cfg2.downlink.name == "topk"
        and cfg2.fl.target_metric == 0.8
    )
    assert RunConfig.from_dict({"downlink": "fp16"}).downlink.name == "fp16"  # string shorthand


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fl.rouns=3", "unknown key fl.rouns; allowed: rounds, clients_per_round"),
        ("model.lora_rank=4", "unknown key model.lora_rank; allowed: name, lora_r"),
        ("fl.rounds=abc", "fl.rounds must be an integer"),
        ("fl.error_feedback=1", "fl.error_feedback must be true or false"),
        ("fl.rounds=0", "fl.rounds must be >= 1"),
        ("model.name=gpt5", "model.name = 'gpt5' is not allowed; choose one of minilm"),
        ("data.partition=skewed", "data.partition"),
        ("codec.name=nope", "unknown codec 'nope'; available:"),
        ("codec.options.densty=0.1", "no option(s) densty; allowed: "),
        ("codec.colour=red", "unknown key codec.colour; allowed: name, options"),
        ("optim.lr=1", "unknown section optim"),
        ("fl.clients_per_round=21", "exceeds data.num_clients"),
        ("fl.min_replies=9", "fl.min_replies"),
        ("rounds=3", "unknown section rounds"),
        ("fl.rounds", "key=value"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_files():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/file.toml")
    with pytest.raises(ConfigError, match="unknown section"):
        RunConfig.from_dict({"model": {}, "extra": {}})
    with pytest.raises(ConfigError, match="not a table"):
        apply_overrides({"fl": 3}, ["fl.rounds=2"])


def test_cli_run_end_to_end_with_toy_workload(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "build_workload", lambda config: ToyWorkload(6))
    cfg = tmp_path / "toy.toml"
    cfg.write_text(
        "[data]\nnum_clients = 6\n[train]\nlr = 0.05\nmax_steps = 2\n"
        '[fl]\nrounds = 2\nclients_per_round = 2\n[codec]\nname = "topk"\n'
    )
    out = tmp_path / "out"
    argv = [
        "run",
        str(cfg),
        "--set",
        "fl.rounds=3",
        "--out",
        str(out),
        "--no-progress",
        "--capture-updates",
        "2",
    ]
    assert cli_main(argv) == 0
    assert "3 rounds, final accuracy" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["config"]["fl"]["rounds"] == 3
    assert (out / "captures.safetensors").is_file() and (out / "accuracy_vs_uplink.png").is_file()
    assert (
        cli_main(["run", str(cfg), "--out", str(out), "--set", "fl.rounds=4", "--resume", "--no-progress"])
        == 0
    )
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert cli_main(["run", str(cfg), "--set", "fl.rouns=2", "--out", str(tmp_path / "x")]) == 2
    assert "unknown key fl.rouns" in capsys.readouterr().err


def test_resume_without_config_continues_the_run_it_was(tmp_path, monkeypatch, capsys):
    """The README's sequence: a 3-round run, then `run --out DIR --resume` (no CONFIG, no --set)."""
    monkeypatch.setattr(loop, "build_workload", lambda config: ToyWorkload(config.data.num_clients))
    cfg = tmp_path / "toy.toml"
    cfg.write_text(  # the toy's 112 parameters: a codec whose frame fits them (wf_ecq's header does not)
        '[model]\nname = "toy"\n[data]\nnum_clients = 6\n[fl]\nrounds = 2\nclients_per_round = 2\n'
        '[codec]\nname = "flm_topk"'
    )
    out = tmp_path / "out"
    assert cli_main(["run", str(cfg), "--set", "fl.rounds=3", "--out", str(out), "--no-progress"]) == 0
    assert cli_main(["run", "--out", str(out), "--resume", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["config"]["fl"]["rounds"] == 3
    assert cli_main(["run", "--out", str(out), "--resume", "--set", "fl.rounds=4", "--no-progress"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    # With CONFIG the config is that file's; its 2 rounds are behind the checkpoint: one line says how.
    assert cli_main(["run", str(cfg), "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint is at round 4, past fl.rounds = 2; resume without CONFIG" in err


def test_set_and_codec_strings_share_one_value_grammar() -> None:
    from fedsqueeze.bench.rd import parse_codec
    from fedsqueeze.config.coerce import parse_value

    for text, value in [("3", 3), ("0.5", 0.5), ("true", True), ("null", None), ('["q"]', ["q"])]:
        assert parse_value(text) == value
        assert apply_overrides({}, [f"fl.x={text}"])["fl"]["x"] == value
        assert parse_codec(f"topk:x={text}") == ("topk", {"x": value})
    assert parse_value(" elias_fano ") == "elias_fano"
    assert apply_overrides({}, ["fl.target_metric=null"]) == {"fl": {"target_metric": None}}


def test_the_default_preset_is_the_code_defaults() -> None:
    import tomllib

    assert load_config("default") == RunConfig() == load_config()
    raw = tomllib.loads((resources.files("fedsqueeze") / "configs" / "default.toml").read_text("utf-8"))
    assert raw == {"base": "none"}  # one source: the dataclasses hold the values
    cfg = RunConfig()
    assert (cfg.fl.rounds, cfg.fl.target_metric, cfg.codec.name, cfg.train.max_steps) == (
        12,
        0.8,
        CODEC_DEFAULT[0],
        20,
    )


def test_null_unsets_a_key_in_a_file_and_with_set(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[fl]\ntarget_metric = "null"\n[train]\nmax_steps = "null"\n', encoding="utf-8")
    cfg = load_config(path)
    assert cfg.fl.target_metric is None and cfg.train.max_steps is None
    assert load_config(None, ["fl.target_metric=null"]).fl.target_metric is None


def test_downlink_options_without_a_name_refine_the_default_downlink(tmp_path):
    assert load_config(None, ["downlink.options.rate=0.1"]).downlink.options == {"rate": 0.1}
    assert load_config(None, ["downlink.name=flm_topk"]).downlink.options == {}  # a new codec: its defaults
    path = tmp_path / "c.toml"
    path.write_text("[downlink]\n", encoding="utf-8")  # an empty table is the default downlink
    assert load_config(path).downlink == RunConfig().downlink
    path.write_text("[downlink]\noptions = { block = 2048 }\n", encoding="utf-8")
    assert load_config(path).downlink.options == {**DOWNLINK_DEFAULT[1], "block": 2048}
