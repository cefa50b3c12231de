"""model.classifier = "verbalizer": a causal LM classifies by its next token among label words, LoRA only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import cross_entropy

from fedsqueeze.config import (
    CodecConfig,
    DataConfig,
    FLConfig,
    LocalTrainConfig,
    ModelConfig,
    RunConfig,
    load_config,
)
from fedsqueeze.data.verbalize import VERBALIZERS, Verbalizer, encode_verbalized, label_token_ids
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.models.loading import load_tokenizer
from fedsqueeze.models.workload import build_workload

MODEL = ModelConfig(name="tiny-llama", lora_r=4, lora_dropout=0.0, max_length=40, classifier="verbalizer")
DATA = DataConfig(dataset="rotten_tomatoes", num_clients=2, max_train_examples=48, test_examples=12)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m")  # tiny-llama uses the same (real) tokenizer


@pytest.fixture(scope="module")
def wl():
    return build_workload(MODEL, DATA, seed=3)


@pytest.mark.parametrize("dataset", sorted(VERBALIZERS))
def test_label_words_are_single_distinct_tokens(tok, dataset):
    verb = VERBALIZERS[dataset]
    ids = label_token_ids(tok, verb)
    assert len(ids) == len(verb.words) == len(set(ids))
    for word, i in zip(verb.words, ids, strict=True):
        assert tok(word, add_special_tokens=False)["input_ids"] == [i]
        assert tok.decode([i]) == word


def test_label_words_that_are_not_one_distinct_token_are_refused(tok):
    long = Verbalizer("", "?", ("a", "b"), (" positive", " antidisestablishmentarianism"))
    with pytest.raises(ConfigError, match="must be one"):
        label_token_ids(tok, long)
    with pytest.raises(ConfigError, match="distinct"):
        label_token_ids(tok, Verbalizer("", "?", ("a", "b"), (" positive", " positive")))


def test_prompts_keep_the_question_whole_and_cut_the_text(tok):
    verb = VERBALIZERS["rotten_tomatoes"]
    question = tok(verb.question, add_special_tokens=False)["input_ids"]
    short, long = encode_verbalized(tok, ["a fine film", "word " * 200], verb, 32)
    assert short == tok("Review: a fine film", add_special_tokens=False)["input_ids"] + question
    assert len(long) == 32 and long[-len(question) :] == question
    with pytest.raises(ConfigError, match="no room"):
        encode_verbalized(tok, ["x"], verb, len(question))


def test_the_head_is_empty_and_the_model_a_causal_lm(wl):
    assert wl.head_spec.numel == 0 and wl.head_spec.names == ()
    assert wl.lora_spec.numel > 0 and all(".lora_A." in n or ".lora_B." in n for n in wl.lora_spec.names)
    assert wl.metric_name == "accuracy" and wl.info["classifier"] == "verbalizer"
    assert type(wl.model.base_model.model).__name__ == "LlamaForCausalLM"
    assert wl.initial_params()[1] == {}


def test_bbc_news_has_five_label_words_in_its_label_order():
    w = build_workload(
        MODEL, DataConfig(dataset="bbc_news", num_clients=2, max_train_examples=10, test_examples=6), seed=0
    )
    tok = load_tokenizer("tiny-llama")
    assert [tok.decode([int(i)]) for i in w.task.label_ids] == list(VERBALIZERS["bbc_news"].words)
    assert w.head_spec.numel == 0 and w.task.num_classes == 5
    assert all(len(x) <= MODEL.max_length for x in w.task.test_ids)
    assert 0.0 <= w.evaluate(*w.initial_params())["accuracy"] <= 1.0


def _hand_eval(wl, lora):
    """Accuracy and loss from one unpadded forward per test prompt: argmax over the label-word logits."""
    wl.load(lora, {})
    ids = wl.task.label_ids
    preds, losses = [], []
    with torch.no_grad():
        for x, y in zip(wl.task.test_ids, wl.task.test_labels, strict=True):
            logits = wl.model(input_ids=torch.tensor([x])).logits[0, -1, ids].float()
            preds.append(int(logits.argmax()))
            losses.append(float(cross_entropy(logits[None], torch.tensor([int(y)]))))
    return np.asarray(preds), float(np.mean(losses))


def test_evaluate_is_the_argmax_over_label_word_logits_at_the_last_prompt_token(wl):
    lora, head = wl.initial_params()
    gen = torch.Generator().manual_seed(0)
    lora = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in lora.items()}  # B non-zero
    lens = {len(x) for x in wl.task.test_ids}
    assert len(lens) > 1  # the batched evaluation really pads (left) and must not change a row
    preds, loss = _hand_eval(wl, lora)
    m = wl.evaluate(lora, head)
    assert m["accuracy"] == pytest.approx(float(np.mean(preds == wl.task.test_labels)))
    assert m["eval_loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    assert set(m) >= {"accuracy", "macro_f1", "eval_loss"}


def test_local_training_lowers_the_label_word_loss(wl):
    lora, head = wl.initial_params()
    saved = wl.parts[0]
    shard = saved[:8]
    batch = wl.task.train_batch(shard.tolist())

    def loss_of(tensors):
        wl.load(tensors, {})
        with torch.no_grad():
            return float(wl.task.loss(wl.model, batch))

    before = loss_of(lora)
    wl.parts[0] = shard  # train on just these 8: six full-batch steps
    try:
        cfg = LocalTrainConfig(batch_size=8, lr=2e-2, epochs=6, max_steps=None, logit_adjust=0.0)
        l1, h1, mean_loss = wl.train_client(0, lora, head, cfg, seed=0)
    finally:
        wl.parts[0] = saved
    assert h1 == {} and math.isfinite(mean_loss)
    assert loss_of(l1) < before - 0.05, (before, loss_of(l1))


def test_a_federated_run_sends_the_lora_frame_only(tmp_path, wl):
    cfg = RunConfig(
        model=MODEL,
        data=DATA,
        train=LocalTrainConfig(batch_size=8, lr=1e-2, max_steps=2),  # logit_adjust on: label-word logits
        fl=FLConfig(rounds=2, clients_per_round=2, eval_every=1),
        codec=CodecConfig("topk", {"density": 0.2}),
    )
    summary = run(cfg, tmp_path, workload=wl)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if "round" in r][-1] == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows if "accuracy" in r)
    assert all(r["uplink_head_bytes"] == 0 and r["uplink_lora_bytes"] > 0 for r in rows if "round" in r)
    assert summary["head_numel"] == 0 and summary["workload"]["head_numel"] == 0
    assert (tmp_path / "final_adapter" / "adapter_config.json").is_file()
    text = json.dumps(summary)
    assert '"classifier": "verbalizer"' in text


@pytest.mark.parametrize(
    ("model", "data", "needle"),
    [
        (dict(name="minilm"), {}, "needs a causal LM"),
        (dict(name="tiny-bert"), {}, "needs a causal LM"),
        (dict(name="tiny-llama"), dict(dataset="gsm8k"), "needs a classification dataset"),
    ],
)
def test_bad_combinations_are_one_line_config_errors(model, data, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        RunConfig(model=ModelConfig(classifier="verbalizer", **model), data=DataConfig(**data))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="choose one of head, verbalizer"):
        ModelConfig(classifier="lm")


def test_config_file_and_build_workload_check_it_too():
    with pytest.raises(ConfigError, match="needs a causal LM"):
        load_config("default", ["model.classifier=verbalizer"])  # default: minilm
    cfg = load_config("default", ["model.classifier=verbalizer", "model.name=smollm2-135m"])
    assert cfg.model.classifier == "verbalizer" and cfg.to_dict()["model"]["classifier"] == "verbalizer"
    with pytest.raises(ConfigError, match="needs a classification dataset"):
        build_workload(MODEL, DataConfig(dataset="gsm8k", test_examples=4), seed=0)
