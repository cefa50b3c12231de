"""Your own data: files, folders and hf: datasets mapped to classification or instruction tuning."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fedsqueeze.cli import main as cli_main
from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.config.data import DATASETS
from fedsqueeze.data import own
from fedsqueeze.data.files import Table
from fedsqueeze.data.own import load_data
from fedsqueeze.data.partition import dirichlet_partition
from fedsqueeze.data.sources import BUILTIN_DATASETS, load_dataset
from fedsqueeze.data.text import IGNORE_INDEX
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.loading import load_tokenizer
from fedsqueeze.models.workload import _split, build_workload

BERT = ModelConfig(name="tiny-bert", lora_r=2, max_length=32)
LLAMA = ModelConfig(name="tiny-llama", lora_r=2, lora_dropout=0.0, max_length=32)
CAUSAL = LocalTrainConfig(batch_size=4, lr=1e-2, max_steps=2, logit_adjust=0.0)


# -- data made in the tests --------------------------------------------------------------------------------
def _qa_rows(n: int, offset: int = 0) -> list[dict]:
    rng = np.random.default_rng(offset)
    rows = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(1, 9, size=2))
        rows.append({"question": f"What is {a} plus {b}?", "answer": str(a + b), "topic": "ab"[i % 2]})
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _reviews_csv(path, n: int = 60, stars=(1, 3, 5)):
    words = {1: "awful dull", 3: "fine enough", 5: "great fun"}
    lines = ["review,stars"]
    for i in range(n):
        s = stars[i % len(stars)]
        lines.append(f'"{words.get(s, "meh")} film number {i}",{s}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    chats = [
        {
            "messages": [
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["answer"]},
                {"role": "user", "content": "thanks"},  # after the last assistant turn: dropped
            ]
        }
        for r in _qa_rows(12)
    ]
    pq.write_table(pa.Table.from_pylist(_qa_rows(7, offset=99)), d / "qa_test.parquet")
    return {
        "qa": _jsonl(d / "qa.jsonl", _qa_rows(40)),
        "qa_test": d / "qa_test.parquet",
        "reviews": _reviews_csv(d / "reviews.csv"),
        "chat": _jsonl(d / "chat.jsonl", chats),
    }


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


# -- the registry ------------------------------------------------------------------------------------------
def test_builtins_are_registry_entries_with_their_kind():
    assert DATASETS == tuple(BUILTIN_DATASETS) == ("rotten_tomatoes", "bbc_news", "gsm8k", "gsm8k_sft")
    assert {n: e.kind for n, e in BUILTIN_DATASETS.items()} == {
        "rotten_tomatoes": "classification",
        "bbc_news": "classification",
        "gsm8k": "generation",
        "gsm8k_sft": "sft",
    }
    for name in ("rotten_tomatoes", "gsm8k"):
        assert load_data(DataConfig(dataset=name)) is load_dataset(name)  # the same cached object
    assert load_dataset("gsm8k").kind == "generation" and load_dataset("bbc_news").kind == "classification"
    sft, gen = load_dataset("gsm8k_sft"), load_dataset("gsm8k")  # the same problems, scored by their loss
    assert sft.kind == "sft" and sft.texts == gen.texts and sft.answers == gen.answers and sft.labels is None


def test_importing_fedsqueeze_does_not_import_datasets():
    code = (
        "import sys, fedsqueeze, fedsqueeze.config, fedsqueeze.models.workload, fedsqueeze.data.own;"
        "print(sorted(m for m in ('datasets', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- classification ----------------------------------------------------------------------------------------
def test_csv_classification_with_tiny_bert(files):
    data = DataConfig(
        dataset=str(files["reviews"]),
        text_field="review",
        label_field="stars",
        num_clients=3,
        test_examples=9,
    )
    raw = load_data(data)
    assert raw.kind == "classification" and raw.label_names == ("1", "3", "5") and len(raw) == 60
    w = build_workload(BERT, data, seed=0)
    assert w.metric_name == "accuracy" and w.metric_higher_is_better is True
    assert w.task.num_classes == 3 and w.head_spec.numel > 0
    assert (w.info["num_train"], w.info["num_test"]) == (51, 9)
    assert sum(len(p) for p in w.parts) == 51
    m = w.evaluate(*w.initial_params())
    assert set(m) >= {"accuracy", "macro_f1", "eval_loss"}
    *_, loss = w.train_client(0, *w.initial_params(), LocalTrainConfig(batch_size=8, max_steps=2), seed=0)
    assert math.isfinite(loss)


def test_label_names_are_sorted_values_numbers_in_numeric_order(tmp_path):
    nums = load_data(
        DataConfig(
            dataset=str(_reviews_csv(tmp_path / "n.csv", stars=(10, 2, 1))),
            text_field="review",
            label_field="stars",
        )
    )
    assert nums.label_names == ("1", "2", "10")
    assert [nums.label_names[y] for y in nums.labels[:3]] == ["10", "2", "1"]
    rows = [{"t": f"x{i}", "y": lab} for i, lab in enumerate(["pos", "neg", "Neutral", "neg"])]
    text = load_data(
        DataConfig(dataset=str(_jsonl(tmp_path / "s.jsonl", rows)), text_field="t", label_field="y")
    )
    assert text.label_names == ("Neutral", "neg", "pos") and text.labels == (2, 1, 0, 1)


def test_tiny_llama_verbalizer_with_label_words(files, tok):
    data = DataConfig(
        dataset=str(files["reviews"]),
        text_field="review",
        label_field="stars",
        label_words=("bad", " okay", "good"),
        num_clients=2,
        test_examples=6,
    )
    model = ModelConfig(name="tiny-llama", lora_r=2, max_length=40, classifier="verbalizer")
    w = build_workload(model, data, seed=0)
    assert w.head_spec.numel == 0 and w.metric_name == "accuracy"
    assert [tok.decode([int(i)]) for i in w.task.label_ids] == [" bad", " okay", " good"]
    prompt = tok.decode(w.task.test_ids[0])
    assert prompt.startswith("Text: ") and prompt.endswith("\nAnswer (bad, okay, good):")
    assert 0.0 <= w.evaluate(*w.initial_params())["accuracy"] <= 1.0
    # the label names themselves (" 1", " 3", " 5") are two tokens each for this tokenizer
    with pytest.raises(ConfigError, match=r"label word ' 1' is 2 tokens.*data.label_words") as err:
        build_workload(
            model,
            DataConfig(
                dataset=str(files["reviews"]),
                text_field="review",
                label_field="stars",
                num_clients=2,
                test_examples=6,
            ),
            seed=0,
        )
    _one_line(err)
    with pytest.raises(ConfigError, match="2 words for 3 labels") as err:
        build_workload(
            model,
            DataConfig(
                dataset=str(files["reviews"]),
                text_field="review",
                label_field="stars",
                label_words=("bad", "good"),
                num_clients=2,
                test_examples=6,
            ),
            seed=0,
        )
    _one_line(err)
    with pytest.raises(ConfigError, match="question alone is") as err:
        build_workload(ModelConfig(name="tiny-llama", max_length=8, classifier="verbalizer"), data, seed=0)
    _one_line(err)


# -- instruction tuning ------------------------------------------------------------------------------------
def test_jsonl_instruction_tuning_with_tiny_llama(files, tok):
    data = DataConfig(
        dataset=str(files["qa"]),
        prompt_field="question",
        response_field="answer",
        num_clients=2,
        test_examples=4,
    )
    w = build_workload(LLAMA, data, seed=0)
    assert w.metric_name == "eval_loss" and w.metric_higher_is_better is False
    assert w.head_spec.numel == 0 and w.info["classifier"] == "none"
    assert (w.task.num_train, w.task.num_test) == (36, 4)
    ids, labels = w.task.train_ids[0], w.task.train_labels[0]
    prompt_len = sum(y == IGNORE_INDEX for y in labels)
    q = tok.decode(ids[:prompt_len])
    assert q.startswith("What is ") and q.endswith("?\n")
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[prompt_len:-1]) == str(eval(q[len("What is ") : -2].replace("plus", "+")))
    m = w.evaluate(*w.initial_params())
    assert set(m) == {"eval_loss", "perplexity"}  # no generation unless asked
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    lora, head, loss = w.train_client(0, *w.initial_params(), CAUSAL, seed=0)
    assert math.isfinite(loss) and head == {}
    em = build_workload(
        LLAMA,
        DataConfig(
            dataset=str(files["qa"]),
            prompt_field="question",
            response_field="answer",
            num_clients=2,
            test_examples=4,
            exact_match=True,
            gen_max_new_tokens=2,
        ),
        seed=0,
    )
    m = em.evaluate(lora, head)
    assert 0.0 <= m["exact_match"] <= 1.0 and len(em.task.last_generations) == 4


def test_chat_messages_column_through_the_chat_template(files, tok):
    data = DataConfig(dataset=str(files["chat"]), num_clients=2, test_examples=3)
    raw = load_data(data)
    assert raw.kind == "sft" and raw.messages is not None and len(raw) == 12
    assert all(turns[-1][0] == "assistant" for turns in raw.messages)
    w = build_workload(ModelConfig(name="tiny-llama", lora_r=2, max_length=96), data, seed=0)
    assert w.metric_name == "eval_loss"
    ids, labels = w.task.train_ids[0], w.task.train_labels[0]
    n = sum(y == IGNORE_INDEX for y in labels)
    assert tok.decode(ids[:n]).endswith("<|im_start|>assistant\n")
    response = tok.decode(ids[n:])
    assert response.endswith("<|im_end|>\n") and response[: -len("<|im_end|>\n")].isdigit()
    assert "thanks" not in tok.decode(ids)
    assert math.isfinite(w.evaluate(*w.initial_params())["eval_loss"])


def test_test_dataset_is_the_held_out_set(files, tmp_path, tok):
    data = DataConfig(
        dataset=str(files["qa"]),
        test_dataset=str(files["qa_test"]),
        prompt_field="question",
        response_field="answer",
        num_clients=2,
        test_examples=100,
        max_train_examples=30,
    )
    raw = load_data(data)
    assert raw.test_rows == 7 and len(raw) == 47
    w = build_workload(LLAMA, data, seed=0)
    assert (w.task.num_train, w.task.num_test) == (30, 7)  # all 7 given rows, fewer than test_examples
    held_out = {tok.decode(p) for p in w.task.test_prompts}
    assert held_out == {r["question"] + "\n" for r in _qa_rows(7, offset=99)}
    fewer = build_workload(LLAMA, DataConfig(**{**data.__dict__, "test_examples": 3}), seed=0)
    assert fewer.task.num_test == 3 and {tok.decode(p) for p in fewer.task.test_prompts} <= held_out
    # classification: test labels must be training labels
    unseen = _reviews_csv(tmp_path / "unseen.csv", n=4, stars=(7,))
    with pytest.raises(ConfigError, match="labels the training data lacks: 7") as err:
        load_data(
            DataConfig(
                dataset=str(files["reviews"]),
                test_dataset=str(unseen),
                text_field="review",
                label_field="stars",
            )
        )
    _one_line(err)


def test_a_folder_of_files_is_one_dataset(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", _qa_rows(5))
    _jsonl(folder / "b.jsonl", _qa_rows(6, offset=5))
    (folder / "notes.txt").write_text("ignored")
    raw = load_data(DataConfig(dataset=str(folder), prompt_field="question", response_field="answer"))
    assert len(raw) == 11 and raw.kind == "sft"
    pq.write_table(pa.Table.from_pylist(_qa_rows(2)), folder / "c.parquet")
    with pytest.raises(ConfigError, match="mixes json and parquet") as err:
        DataConfig(dataset=str(folder), prompt_field="question", response_field="answer")
    _one_line(err)


def test_group_field_gives_a_dirichlet_partition_over_its_values(files):
    data = DataConfig(
        dataset=str(files["qa"]),
        prompt_field="question",
        response_field="answer",
        group_field="topic",
        partition="dirichlet",
        num_clients=2,
        test_examples=4,
        alpha=0.05,
    )
    raw = load_data(data)
    w = build_workload(LLAMA, data, seed=0)
    train, _ = _split(raw, data)
    groups = np.unique(np.asarray(raw.groups)[train], return_inverse=True)[1]
    expected = dirichlet_partition(groups, 2, 0.05, seed=data.seed)
    assert all(np.array_equal(a, b) for a, b in zip(w.parts, expected, strict=True))
    quantity = build_workload(LLAMA, DataConfig(**{**data.__dict__, "group_field": None}), seed=0)
    assert not all(np.array_equal(a, b) for a, b in zip(quantity.parts, expected, strict=True))


def test_hub_split_names_and_class_labels(monkeypatch):
    # hf: is read by datasets from the hub; here read_table is replaced, which checks the dispatch.
    calls = []

    def fake(value, key, *, split="train"):
        calls.append((value, key, split))
        y = [0, 1, 1] if split == "train" else [1, 0]
        text = [f"t{i}" for i in range(len(y))]
        return Table(
            f"{value}:{split}",
            {"text": pa.chunked_array([text]), "label": pa.chunked_array([y])},
            {"label": ("neg", "pos")},
        )

    monkeypatch.setattr(own, "read_table", fake)
    raw = load_data(
        DataConfig(dataset="hf:someone/reviews", test_dataset="test", text_field="text", label_field="label")
    )
    assert calls == [
        ("hf:someone/reviews", "data.dataset", "train"),
        ("hf:someone/reviews", "data.test_dataset", "test"),
    ]
    assert raw.label_names == ("neg", "pos") and raw.labels == (0, 1, 1, 1, 0) and raw.test_rows == 2


# -- errors: one line each ---------------------------------------------------------------------------------
def _config_error(needle: str, **data) -> str:
    with pytest.raises(ConfigError, match=needle) as err:
        load_data(DataConfig(**data))
    return _one_line(err)


def test_config_time_errors(tmp_path, files):
    qa = str(files["qa"])
    cases = [
        (dict(dataset=str(tmp_path / "nope.jsonl")), "does not exist"),
        (dict(dataset="imdb"), "neither a built-in dataset"),
        (dict(dataset=qa, text_field="question"), r"data.text_field needs data.label_field"),
        (dict(dataset=qa, label_field="answer"), r"data.label_field needs data.text_field"),
        (dict(dataset=qa, prompt_field="question"), r"data.prompt_field needs data.response_field"),
        (dict(dataset=qa, response_field="answer"), r"data.response_field needs data.prompt_field"),
        (dict(dataset=qa, text_field="a", label_field="b", prompt_field="c", response_field="d"), "not both"),
        (dict(dataset="rotten_tomatoes", text_field="a", label_field="b"), "applies to your own data"),
        (dict(dataset="gsm8k", test_dataset=qa), "applies to your own data"),
        (
            dict(dataset=qa, test_dataset="test", prompt_field="question", response_field="answer"),
            "split name",
        ),
        (dict(dataset="hf:"), "names no dataset"),
        (
            dict(dataset=qa, prompt_field="question", response_field="answer", label_words=("a", "b")),
            "label_words applies to classification",
        ),
        (dict(dataset=qa, text_field="question", label_field="answer", label_words=("a", "a")), "distinct"),
        (dict(dataset=0), "must be a string"),
    ]
    for data, needle in cases:
        with pytest.raises(ConfigError, match=needle) as err:
            DataConfig(**data)
        _one_line(err)
    odd = tmp_path / "data.txt"
    odd.write_text("x")
    with pytest.raises(ConfigError, match=r"unsupported format '.txt'") as err:
        DataConfig(dataset=str(odd))
    _one_line(err)
    with pytest.raises(ConfigError, match="label_words are the verbalizer's words") as err:
        RunConfig(
            model=ModelConfig(name="tiny-bert"),
            data=DataConfig(
                dataset=str(files["reviews"]),
                text_field="review",
                label_field="stars",
                label_words=("a", "b", "c"),
            ),
        )
    _one_line(err)
    with pytest.raises(ConfigError, match="needs a classification dataset") as err:
        RunConfig(
            model=ModelConfig(name="tiny-llama", classifier="verbalizer"),
            data=DataConfig(dataset=qa, prompt_field="question", response_field="answer"),
        )
    _one_line(err)


def test_file_errors(tmp_path, files, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\nnot json\n')
    _config_error(
        r"cannot read .*bad.jsonl", dataset=str(bad), prompt_field="question", response_field="answer"
    )
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x00\x01 not parquet")
    _config_error(r"cannot read .*junk.parquet", dataset=str(junk), prompt_field="q", response_field="a")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _config_error("is empty", dataset=str(empty), prompt_field="q", response_field="a")
    header = tmp_path / "header.csv"
    header.write_text("review,stars\n")
    _config_error("no rows", dataset=str(header), text_field="review", label_field="stars")
    msg = _config_error(
        "is not a column", dataset=str(files["qa"]), prompt_field="prompt", response_field="answer"
    )
    assert msg.endswith("it has: question, answer, topic")
    _config_error(r"say which columns.*it has: review, stars", dataset=str(files["reviews"]))
    one = _reviews_csv(tmp_path / "one.csv", n=5, stars=(4,))
    _config_error(r"one class \('4'\)", dataset=str(one), text_field="review", label_field="stars")
    holes = _jsonl(tmp_path / "holes.jsonl", [{"q": "a", "a": "b"}, {"q": None, "a": "c"}])
    _config_error(r"1 empty values .*row 1", dataset=str(holes), prompt_field="q", response_field="a")
    no_reply = _jsonl(tmp_path / "no_reply.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    _config_error("no assistant message", dataset=str(no_reply))
    monkeypatch.delenv("FEDSQUEEZE_OFFLINE", raising=False)
    _config_error(r"hf:imdb.*FEDSQUEEZE_OFFLINE=0", dataset="hf:imdb", text_field="text", label_field="label")


def test_a_prompt_that_leaves_no_room_for_the_response(tmp_path):
    rows = [*_qa_rows(6), {"question": "word " * 40, "answer": "1", "topic": "a"}]
    data = DataConfig(
        dataset=str(_jsonl(tmp_path / "long.jsonl", rows)),
        prompt_field="question",
        response_field="answer",
        num_clients=2,
        test_examples=1,
        max_train_examples=None,
    )
    # The long row is in the training pool or the held-out set, and both are encoded.
    with pytest.raises(ConfigError, match=r"the prompt alone is \d+ tokens\).*max_length") as err:
        build_workload(ModelConfig(name="tiny-llama", max_length=16, lora_r=2), data, seed=0)
    assert "1 of " in _one_line(err) and "model.max_length = 16" in str(err.value)


def test_verbalizer_on_instruction_data_is_refused(files):
    model = ModelConfig(name="tiny-llama", classifier="verbalizer")
    with pytest.raises(ConfigError, match="needs a classification dataset") as err:
        build_workload(model, DataConfig(dataset=str(files["chat"]), test_examples=2, num_clients=2), seed=0)
    _one_line(err)


# -- the command line --------------------------------------------------------------------------------------
def test_cli_run_on_an_instruction_file(files, tmp_path, capsys):
    out = tmp_path / "run"
    sets = {
        "data.dataset": str(files["qa"]),
        "data.prompt_field": "question",
        "data.response_field": "answer",
        "data.partition": "iid",
        "model.name": "tiny-llama",
        "model.lora_r": "2",
        "fl.rounds": "2",
        "train.max_steps": "2",
        "train.batch_size": "4",
        "train.logit_adjust": "0",  # FedLC shifts class logits; an LM's tokens have none
        "data.num_clients": "2",
        "fl.clients_per_round": "2",
        "data.test_examples": "4",
    }
    argv = ["run", "--out", str(out), "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_name"] == "eval_loss"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval_metric") is not None]
    assert evals and all(r["eval_metric_name"] == "eval_loss" and "perplexity" in r["eval"] for r in evals)
    assert (out / "final_adapter" / "adapter_config.json").is_file()
    assert torch.isfinite(torch.tensor([r["eval_metric"] for r in evals])).all()
