"""The training-recipe options of the workloads: mean pooling, head learning rate, FedLC logit adjustment
and the device setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsqueeze.config import DataConfig, LocalTrainConfig, ModelConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.models.pooling import MeanPoolBertForSequenceClassification, masked_mean, resolve_pooling
from fedsqueeze.models.workload import build_workload

DATA = DataConfig(dataset="rotten_tomatoes", num_clients=4, max_train_examples=200, test_examples=32)


def _bert(pooling: str):
    model = ModelConfig(name="tiny-bert", lora_r=4, max_length=24, pooling=pooling)
    return build_workload(model, DATA, seed=3)


def test_masked_mean_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(masked_mean(h, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(masked_mean(h, None), h.mean(dim=1))


def test_auto_pooling_is_mean_for_minilm_only():
    assert resolve_pooling("minilm", "auto") == "mean"
    assert resolve_pooling("tiny-bert", "auto") == "cls"
    assert resolve_pooling("tiny-bert", "mean") == "mean"


def test_mean_pooling_model_keeps_names_and_ignores_padding():
    cls, mean = _bert("cls"), _bert("mean")
    assert isinstance(mean.model.base_model.model, MeanPoolBertForSequenceClassification)
    assert mean.lora_spec == cls.lora_spec and mean.head_spec == cls.head_spec
    lora, head = mean.initial_params()
    mean.load(lora, head)
    ids = torch.tensor([[101, 2023, 2003, 102]])
    one = mean.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    two = mean.model(input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    # and it trains: LoRA moves and the loss is finite
    cfg = LocalTrainConfig(batch_size=8, lr=5e-2, max_steps=6)
    new_lora, _, loss = mean.train_client(0, lora, head, cfg, seed=0)
    assert any(not torch.equal(new_lora[k], lora[k]) for k in lora)
    assert np.isfinite(loss)


def test_mean_pooling_is_refused_for_causal_models():
    with pytest.raises(ConfigError, match="pooling"):
        build_workload(
            ModelConfig(name="tiny-llama", lora_r=2, max_length=24, pooling="mean"),
            DataConfig(dataset="gsm8k", num_clients=2, max_train_examples=8, test_examples=2),
            seed=0,
        )


def test_head_lr_only_changes_how_far_the_head_moves():
    w = _bert("cls")
    lora, head = w.initial_params()
    base = LocalTrainConfig(batch_size=8, lr=1e-3, max_steps=3)
    _, same_h, _ = w.train_client(1, lora, head, base, seed=5)
    _, explicit_h, _ = w.train_client(
        1, lora, head, LocalTrainConfig(batch_size=8, lr=1e-3, max_steps=3, head_lr=1e-3), seed=5
    )
    assert all(torch.equal(same_h[k], explicit_h[k]) for k in head)  # head_lr = lr is the old behaviour
    _, fast_h, _ = w.train_client(
        1, lora, head, LocalTrainConfig(batch_size=8, lr=1e-3, max_steps=3, head_lr=1e-1), seed=5
    )

    def moved(a):
        return sum(float((a[k] - head[k]).abs().sum()) for k in head)

    assert moved(fast_h) > 10 * moved(same_h)


def test_log_prior_is_smoothed_client_label_frequency():
    w = _bert("cls")
    task = w.task
    idx = w.parts[0]
    counts = np.bincount(task.train_labels[idx], minlength=task.num_classes)
    expected = np.log((counts + 1) / (counts.sum() + task.num_classes))
    torch.testing.assert_close(task.log_prior(idx), torch.tensor(expected, dtype=torch.float32))
    single = [int(np.flatnonzero(task.train_labels == 1)[0])] * 50  # one label only: finite, not -inf
    assert torch.isfinite(task.log_prior(single)).all()


def test_logit_adjustment_changes_training_and_is_deterministic():
    w = _bert("cls")
    lora, head = w.initial_params()
    plain = w.train_client(
        2, lora, head, LocalTrainConfig(batch_size=8, lr=1e-2, max_steps=3, logit_adjust=0.0), seed=1
    )
    cfg = LocalTrainConfig(batch_size=8, lr=1e-2, max_steps=3, logit_adjust=1.0)
    adj1 = w.train_client(2, lora, head, cfg, seed=1)
    adj2 = w.train_client(2, lora, head, cfg, seed=1)
    assert all(torch.equal(adj1[1][k], adj2[1][k]) for k in head)
    assert any(not torch.equal(adj1[1][k], plain[1][k]) for k in head)


def test_logit_adjustment_damps_a_skewed_clients_pull_on_the_bias():
    # Toy workload, a client holding 94 % of one label: with FedLC its head's bias moves far less towards
    # that label. (A client with one label only still moves it: Adam's step size ignores how small the
    # remaining gradient is.)
    w = ToyWorkload(num_clients=3, alpha=0.01, seed=0)
    y = w.clients[1][1]
    counts = torch.bincount(y)
    assert 0.9 < float(counts.max()) / len(y) < 1.0
    lora, head = w.initial_params()
    cfg = dict(batch_size=16, lr=5e-2, max_steps=20, optimizer="adam", head_lr=None)
    _, plain, _ = w.train_client(1, lora, head, LocalTrainConfig(**cfg, logit_adjust=0.0), seed=0)
    _, adj, _ = w.train_client(1, lora, head, LocalTrainConfig(**cfg, logit_adjust=1.0), seed=0)
    top = int(counts.argmax())
    drift_plain = float(plain["head.bias"][top] - head["head.bias"][top])
    drift_adj = float(adj["head.bias"][top] - head["head.bias"][top])
    assert drift_plain > 0 and abs(drift_adj) < 0.5 * drift_plain


def test_recipe_options_are_validated():
    with pytest.raises(ConfigError, match="logit_adjust"):
        LocalTrainConfig(logit_adjust=-1.0)
    with pytest.raises(ConfigError, match="head_lr"):
        LocalTrainConfig(head_lr=0.0)
    with pytest.raises(ConfigError, match="pooling"):
        ModelConfig(pooling="max")
    with pytest.raises(ConfigError, match="device"):
        ModelConfig(device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no GPU"):
        build_workload(ModelConfig(name="tiny-bert", lora_r=2, max_length=16, device="cuda"), DATA, seed=0)
