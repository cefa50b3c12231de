"""build_workload: the Workload protocol over real tokenizers, tiny models, MiniLM and SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig
from fedsqueeze.fl.workload import Workload
from fedsqueeze.models.workload import build_workload

SMALL_TRAIN = LocalTrainConfig(batch_size=8, lr=1e-2, max_steps=3)


def _clone(d):
    return {k: v.clone() for k, v in d.items()}


def _equal(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_bert():
    return build_workload(
        ModelConfig(name="tiny-bert", lora_r=4, max_length=32),
        DataConfig(dataset="rotten_tomatoes", num_clients=6, max_train_examples=600, test_examples=64),
        seed=7,
    )


def test_tiny_bert_implements_the_protocol(tiny_bert):
    w = tiny_bert
    assert isinstance(w, Workload)
    assert w.metric_name == "accuracy"
    assert w.num_clients() == 6
    assert sum(w.client_num_examples(c) for c in range(6)) == 600
    lora, head = w.initial_params()
    w.lora_spec.check(lora)
    w.head_spec.check(head)
    assert w.head_spec.names == ("classifier.weight", "classifier.bias")
    # LoRA B starts at zero, A does not
    assert all(float(v.abs().sum()) == 0 for k, v in lora.items() if ".lora_B." in k)
    assert all(float(v.abs().sum()) > 0 for k, v in lora.items() if ".lora_A." in k)


def test_initial_params_are_fresh_copies_and_seeded(tiny_bert):
    a, ha = tiny_bert.initial_params()
    b, hb = tiny_bert.initial_params()
    assert _equal(a, b) and _equal(ha, hb)
    next(iter(a.values())).add_(1.0)
    c, _ = tiny_bert.initial_params()
    assert _equal(b, c)
    same = build_workload(
        ModelConfig(name="tiny-bert", lora_r=4, max_length=32),
        DataConfig(dataset="rotten_tomatoes", num_clients=6, max_train_examples=600, test_examples=64),
        seed=7,
    )
    other = build_workload(
        ModelConfig(name="tiny-bert", lora_r=4, max_length=32),
        DataConfig(dataset="rotten_tomatoes", num_clients=6, max_train_examples=600, test_examples=64),
        seed=8,
    )
    assert _equal(same.initial_params()[0], b) and _equal(same.initial_params()[1], hb)
    assert not _equal(other.initial_params()[0], b)


def test_train_client_is_deterministic_changes_lora_and_keeps_inputs(tiny_bert):
    w = tiny_bert
    lora, head = w.initial_params()
    lora0, head0 = _clone(lora), _clone(head)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    l1, h1, loss1 = w.train_client(2, lora, head, SMALL_TRAIN, seed=11)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    assert _equal(lora, lora0) and _equal(head, head0)  # inputs not modified
    l2, h2, loss2 = w.train_client(2, lora, head, SMALL_TRAIN, seed=11)
    assert _equal(l1, l2) and _equal(h1, h2) and loss1 == loss2
    assert math.isfinite(loss1)
    assert not _equal(l1, lora0) and not _equal(h1, head0)
    assert any(float(v.abs().sum()) > 0 for k, v in l1.items() if ".lora_B." in k)
    l3, _, _ = w.train_client(2, lora, head, SMALL_TRAIN, seed=12)
    assert not _equal(l1, l3)
    # training another client in between does not leak state into the next call
    w.train_client(3, l1, h1, SMALL_TRAIN, seed=5)
    l4, h4, _ = w.train_client(2, lora, head, SMALL_TRAIN, seed=11)
    assert _equal(l1, l4) and _equal(h1, h4)


def test_max_steps_and_epochs(tiny_bert, monkeypatch):
    w = tiny_bert
    calls = []
    real = w.task.train_batch
    monkeypatch.setattr(w.task, "train_batch", lambda idx: calls.append(len(idx)) or real(idx))
    lora, head = w.initial_params()
    w.train_client(0, lora, head, LocalTrainConfig(batch_size=4, max_steps=2), seed=0)
    assert calls == [4, 4]
    calls.clear()
    n = w.client_num_examples(1)
    w.train_client(1, lora, head, LocalTrainConfig(batch_size=1000, epochs=2), seed=0)
    assert calls == [n, n]


def test_evaluate_returns_metrics(tiny_bert):
    lora, head = tiny_bert.initial_params()
    m = tiny_bert.evaluate(lora, head)
    assert set(m) >= {"accuracy", "macro_f1", "eval_loss"}
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
    assert m == tiny_bert.evaluate(lora, head)


def test_tiny_llama_gsm8k_trains_and_evaluates():
    w = build_workload(
        ModelConfig(name="tiny-llama", lora_r=4, max_length=48),
        DataConfig(
            dataset="gsm8k", num_clients=3, max_train_examples=30, test_examples=3, gen_max_new_tokens=4
        ),
        seed=0,
    )
    assert isinstance(w, Workload)
    assert w.metric_name == "exact_match" and w.head_spec.numel == 0
    assert all(".q_proj." in n or ".v_proj." in n for n in w.lora_spec.names)
    lora, head = w.initial_params()
    cfg = LocalTrainConfig(batch_size=2, lr=1e-2, max_steps=2, logit_adjust=0.0)  # causal LM
    l1, h1, loss = w.train_client(0, lora, head, cfg, seed=1)
    l2, _, loss2 = w.train_client(0, lora, head, cfg, seed=1)
    assert math.isfinite(loss) and loss == loss2 and _equal(l1, l2)
    assert h1 == {} and not _equal(l1, lora)
    m = w.evaluate(l1, h1)
    assert 0.0 <= m["exact_match"] <= 1.0 and math.isfinite(m["eval_loss"])
    assert len(w.task.last_generations) == 3


def test_minilm_smoke():
    """The one real-model test of the default run: MiniLM, a couple of steps, a small evaluation."""
    w = build_workload(
        ModelConfig(name="minilm", max_length=32),
        DataConfig(dataset="rotten_tomatoes", num_clients=4, max_train_examples=64, test_examples=16),
        seed=0,
    )
    assert w.lora_spec.numel == 147_456 and w.head_spec.numel == 770
    lora, head = w.initial_params()
    l1, h1, loss = w.train_client(0, lora, head, LocalTrainConfig(batch_size=4, max_steps=2), seed=0)
    assert math.isfinite(loss) and not _equal(l1, lora)
    m = w.evaluate(l1, h1)
    assert 0.0 <= m["accuracy"] <= 1.0


def test_smollm2_gsm8k_smoke():
    """Real SmolLM2-135M (2 layers): converts the GGUF to the fp32 cache on first use (~30 s)."""
    w = build_workload(
        ModelConfig(name="smollm2-135m", num_layers=2, max_length=48),
        DataConfig(
            dataset="gsm8k", num_clients=2, max_train_examples=8, test_examples=2, gen_max_new_tokens=3
        ),
        seed=0,
    )
    assert w.lora_spec.numel == 2 * (16 * 576 + 576 * 16) + 2 * (16 * 576 + 192 * 16)
    lora, head = w.initial_params()
    l1, h1, loss = w.train_client(
        0, lora, head, LocalTrainConfig(batch_size=2, max_steps=2, logit_adjust=0.0), seed=0
    )
    assert math.isfinite(loss) and not _equal(l1, lora)
    m = w.evaluate(l1, h1)
    assert 0.0 <= m["exact_match"] <= 1.0 and math.isfinite(m["eval_loss"])


def test_tiny_llama_can_classify_with_a_score_head():
    w = build_workload(
        ModelConfig(name="tiny-llama", lora_r=2, max_length=24),
        DataConfig(dataset="bbc_news", num_clients=2, max_train_examples=20, test_examples=8),
        seed=0,
    )
    assert w.metric_name == "accuracy"
    assert w.head_spec.names == ("score.weight",) and w.head_spec.shapes == ((5, 32),)
    lora, head = w.initial_params()
    l1, h1, loss = w.train_client(1, lora, head, LocalTrainConfig(batch_size=4, max_steps=1), seed=0)
    assert math.isfinite(loss) and not _equal(h1, head)
    assert 0.0 <= w.evaluate(l1, h1)["accuracy"] <= 1.0
