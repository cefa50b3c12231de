"""`fedsqueeze flower supernode --data PATH`: a SuperNode trains on its own file(s), the server evaluates."""

from __future__ import annotations

import json
import shlex

import pytest
from flwr.common.config import parse_config_args

from fedsqueeze.cli import build_parser
from fedsqueeze.cli import main as cli_main
from fedsqueeze.cli.flower_supernode import build_command
from fedsqueeze.config import DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.node_data import (
    LocalData,
    NodeSettings,
    local_data,
    node_config_entries,
    node_settings,
    node_workload,
)
from support.flower import FakeGrid

TRAIN = LocalTrainConfig(batch_size=4, lr=1e-2, max_steps=2, logit_adjust=0.0)


def _qa(path, n: int, offset: int = 0, q: str = "question", a: str = "answer"):
    rows = [{q: f"What is {i + offset} plus 1?", a: str(i + offset + 1)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _reviews(path, n: int, text: str = "review", label: str = "stars"):
    lines = [f"{text},{label}"] + [
        f"film {i} was {'great' if i % 2 else 'dull'},{1 + 4 * (i % 2)}" for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sft_job(server_file, test_file=None, n: int = 4, rounds: int = 1) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="tiny-llama", lora_r=2, lora_dropout=0.0, max_length=32),
        data=DataConfig(
            dataset=str(server_file),
            test_dataset=None if test_file is None else str(test_file),
            prompt_field="question",
            response_field="answer",
            partition="iid",
            num_clients=n,
            test_examples=4,
        ),
        train=TRAIN,
        fl=FLConfig(rounds=rounds, clients_per_round=2, seed=3),
    )


def _node(settings: FlowerSettings, local: LocalData) -> FlowerSettings:
    node_config = parse_config_args([" ".join(["partition-id=1", *node_config_entries(local)])])
    return node_settings(settings.to_run_config(), node_config)


# -- the node's workload -----------------------------------------------------------------------------------
def test_a_node_trains_on_every_row_of_its_own_jsonl(tmp_path):
    job = FlowerSettings(_sft_job(_qa(tmp_path / "server.jsonl", 30)))
    own = _qa(tmp_path / "mine.jsonl", 13, offset=100)
    node = _node(job, LocalData(str(own)))
    assert isinstance(node, NodeSettings)
    assert (node.digest, node.config.data.dataset) == (job.digest, str(own))  # the server's digest, own data
    wl = node_workload(node, 1)
    assert wl.client_num_examples(1) == 13 and wl.info["num_train"] == 13
    # Exactly the file's rows: the prompts it trains on are those of mine.jsonl, none of server.jsonl.
    from fedsqueeze.data.own import load_data

    raw = load_data(node.config.data)
    assert raw.texts[:13] == tuple(f"What is {i} plus 1?" for i in range(100, 113))
    # The model is the job's: the same specs and initial tensors as the server's workload.
    from fedsqueeze.flower.settings import make_workload

    server = make_workload(job)
    assert wl.lora_spec == server.lora_spec and wl.head_spec == server.head_spec
    for a, b in zip(wl.initial_params()[0].values(), server.initial_params()[0].values(), strict=True):
        assert a.equal(b)
    lora, head = wl.initial_params()
    _, _, loss = wl.train_client(1, lora, head, TRAIN, seed=0)
    assert loss == loss  # finite training on the node's rows
    with pytest.raises(ConfigError, match="trains client 1 on its own data, not client 0"):
        wl.client_num_examples(0)


def test_a_node_renames_the_jobs_columns_and_a_wrong_column_lists_the_files(tmp_path):
    job = FlowerSettings(
        RunConfig(
            model=ModelConfig(name="tiny-bert", lora_r=2, max_length=16),
            data=DataConfig(
                dataset=str(_reviews(tmp_path / "server.csv", 40)),
                text_field="review",
                label_field="stars",
                num_clients=5,
                test_examples=8,
            ),
            train=TRAIN,
        )
    )
    own = _reviews(tmp_path / "mine.csv", 9, text="body", label="score")
    with pytest.raises(ConfigError) as err:
        node_workload(_node(job, LocalData(str(own))), 1)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"data.text_field = 'review' is not a column of {str(own)!r}; it has: body, score "
        "(start this SuperNode with --set data.text_field=COLUMN)"
    )

    renamed = LocalData(str(own), (("data.text_field", "body"), ("data.label_field", "score")))
    wl = node_workload(_node(job, renamed), 1)
    assert wl.client_num_examples(1) == 9 and wl.head_spec.numel > 0
    with pytest.raises(ConfigError, match="the job does not map data.prompt_field"):
        _node(job, LocalData(str(own), (("data.prompt_field", "body"),)))


# -- the CLI ----------------------------------------------------------------------------------------------
def test_the_supernode_command_carries_the_data_in_its_node_config(tmp_path, monkeypatch):
    own = _reviews(tmp_path / "my data.csv", 4, text="body")
    monkeypatch.chdir(tmp_path)
    argv = "flower supernode --insecure --superlink 127.0.0.1:9091 --partition-id 2 --data 'my data.csv'"
    args = build_parser().parse_args([*shlex.split(argv), "--set", "data.text_field=body"])
    cmd = build_command(args)
    node_config = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert node_config["partition-id"] == 2
    assert local_data(node_config) == LocalData(str(own), (("data.text_field", "body"),))
    assert local_data({"partition-id": 2}) is None  # without --data: slice 2 of the job's dataset


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsqueeze: error: "), err
    return lines[0].removeprefix("fedsqueeze: error: ")


def test_bad_supernode_data_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch):
    import os

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("flower-supernode was started"))
    base = ["flower", "supernode", "--insecure", "--superlink", "127.0.0.1:9091", "--partition-id", "0"]
    missing = tmp_path / "nope.jsonl"
    assert (
        _one_line_error(capsys, [*base, "--data", str(missing)])
        == f"--data: file {str(missing)!r} does not exist"
    )
    assert _one_line_error(capsys, [*base, "--set", "data.text_field=x"]) == (
        "--set renames the columns of this node's own data: give --data PATH too"
    )
    own = _qa(tmp_path / "qa.jsonl", 3)
    assert _one_line_error(capsys, [*base, "--data", str(own), "--set", "model.name=x"]).startswith(
        "--set model.name: a SuperNode renames only the columns (data.text_field, data.label_field, "
    )
    assert _one_line_error(capsys, [*base, "--data", str(tmp_path / "mine")]) == (
        f"--data {tmp_path / 'mine'}: no such file or folder (give a .jsonl/.json/.csv/.parquet file or a "
        "folder of them)"
    )
    assert _one_line_error(capsys, [*base, "--data", "hf:imdb"]).startswith(
        "--data hf:imdb: give a local file"
    )


# -- a whole job: the real ClientApp over in-process messages ----------------------------------------------
def test_a_job_whose_nodes_bring_their_own_files(tmp_path, task_identity):
    from fedsqueeze.flower.server_app import run_rounds

    held_out = _qa(tmp_path / "held_out.jsonl", 6, offset=500)
    job = FlowerSettings(
        _sft_job(_qa(tmp_path / "server.jsonl", 8), held_out, n=2, rounds=2), round_timeout=5
    )
    sizes = {0: 5, 1: 11}
    files = {p: _qa(tmp_path / f"node{p}.jsonl", n, offset=100 * (p + 1)) for p, n in sizes.items()}

    class OwnDataGrid(FakeGrid):
        def context(self, p):
            ctx = super().context(p)
            ctx.node_config.update(
                parse_config_args([" ".join(node_config_entries(LocalData(str(files[p]))))])
            )
            return ctx

    run_rounds(OwnDataGrid(job, 2), job, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["aggregated"] and not row["dropped"]
        assert row["num_examples"] == [sizes[c] for c in row["clients"]]  # each node's own file, all of it
        assert (
            row["eval_metric_name"] == "eval_loss" and row["eval"]["eval_loss"] > 0
        )  # the server's held-out


def test_a_classification_node_missing_a_label_is_refused_with_the_reason(tmp_path, task_identity):
    from fedsqueeze.flower.server_app import run_rounds

    def csv(path, stars):
        lines = ["review,stars"] + [f"film {i} got {s} stars,{s}" for i, s in enumerate(stars * 6)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    cfg = RunConfig(
        model=ModelConfig(name="tiny-bert", lora_r=2, max_length=16),
        data=DataConfig(
            dataset=str(csv(tmp_path / "server.csv", [1, 3, 5])),
            text_field="review",
            label_field="stars",
            num_clients=2,
            partition="iid",
            test_examples=6,
        ),
        train=TRAIN,
        fl=FLConfig(rounds=1, clients_per_round=2, seed=3),
    )
    job = FlowerSettings(cfg, round_timeout=5)
    files = {0: csv(tmp_path / "a.csv", [5, 1, 3]), 1: csv(tmp_path / "b.csv", [1, 5])}  # b lacks 3 stars

    class OwnDataGrid(FakeGrid):
        def context(self, p):
            ctx = super().context(p)
            ctx.node_config.update(
                parse_config_args([" ".join(node_config_entries(LocalData(str(files[p]))))])
            )
            return ctx

    run_rounds(OwnDataGrid(job, 2), job, tmp_path / "out")
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert row["kept"] == [0] and row["num_examples"][row["clients"].index(0)] == 18
    (dropped,) = row["dropped"]
    assert dropped["client"] == 1
    assert (
        "this node's own data has 2 classes: its file must hold every label of the job" in dropped["reason"]
    )


@pytest.mark.slow  # ~2 min on 2 busy cores: SuperLink, 2 SuperNodes, a ClientApp process per message
def test_a_real_deployment_whose_supernodes_bring_their_own_files(tmp_path):
    from support.deployment import Stack, free_port, sent_log

    held_out = _qa(tmp_path / "held_out.jsonl", 6, offset=500)
    cfg = _sft_job(_qa(tmp_path / "server.jsonl", 8), held_out, n=2, rounds=1)
    settings = FlowerSettings(cfg, round_timeout=120, out_dir=str(tmp_path / "out"))
    sizes = {0: 5, 1: 11}
    stack = Stack(tmp_path, 0)
    try:
        for p, n in sizes.items():
            own = _qa(tmp_path / f"node{p}.jsonl", n, offset=100 * (p + 1))
            argv = ["flower", "supernode", "--insecure", "--superlink", f"127.0.0.1:{stack.port}"]
            argv += ["--partition-id", str(p), "--port", str(free_port()), "--data", str(own)]
            argv += ["--state-dir", str(tmp_path / f"state{p}")]
            stack.start(f"node{p}", build_command(build_parser().parse_args(argv)))  # what the CLI execs
        res = stack.flwr_run(settings, timeout=400)
        assert (tmp_path / "out" / "summary.json").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        stack.close()
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(row["kept"]) == [0, 1] and not row["dropped"]
    assert row["num_examples"] == [sizes[c] for c in row["clients"]]
    assert all(len(sent_log(tmp_path, p)) == 1 for p in sizes)
