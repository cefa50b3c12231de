"""Offline model loading, LoRA specs and adapter tensor helpers."""

from __future__ import annotations

import pytest
import torch

from fedsqueeze.config import DataConfig, ModelConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.loading import load_base_model, load_tokenizer, minilm_dir
from fedsqueeze.models.lora import apply_lora, read_tensors, split_trainable, stable_name, write_tensors


def _tiny_bert(num_layers=None, targets=None):
    tok = load_tokenizer("tiny-bert")
    torch.manual_seed(0)
    base = load_base_model("tiny-bert", tok, num_labels=3, num_layers=num_layers)
    return apply_lora(
        base, "tiny-bert", r=4, alpha=8, dropout=0.0, target_modules=targets, classification=True
    )


def test_stable_names():
    assert (
        stable_name("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight")
        == "bert.encoder.layer.0.attention.self.query.lora_A.weight"
    )
    assert stable_name("base_model.model.classifier.modules_to_save.default.bias") == "classifier.bias"


def test_tiny_bert_lora_and_head_split():
    model = _tiny_bert()
    lora, head = split_trainable(model)
    # 2 layers x (query, value) x (A, B); A is r x 32, B is 32 x r.
    assert len(lora) == 8
    assert all(".lora_A." in k or ".lora_B." in k for k in lora)
    assert list(head) == ["classifier.weight", "classifier.bias"]
    assert tuple(head["classifier.weight"].shape) == (3, 32)
    # names follow the model's parameter order
    order = [stable_name(n) for n, p in model.named_parameters() if p.requires_grad]
    assert order == [*lora, *head]
    assert sum(p.numel() for p in lora.values()) == 2 * 2 * (4 * 32 + 32 * 4)


def test_num_layers_truncates_and_target_modules_apply():
    lora, _ = split_trainable(_tiny_bert(num_layers=1, targets=("query", "key", "value")))
    assert len(lora) == 6
    assert all("layer.0." in k for k in lora)


def test_unknown_target_module_is_config_error():
    with pytest.raises(ConfigError):
        _tiny_bert(targets=("nonexistent_proj",))


def test_read_write_roundtrip_and_shape_check():
    lora, _ = split_trainable(_tiny_bert())
    snap = read_tensors(lora)
    new = {k: torch.randn_like(v) for k, v in snap.items()}
    write_tensors(lora, new)
    assert all(torch.equal(lora[k].detach(), new[k]) for k in new)
    new[next(iter(new))] = new[next(iter(new))] + 1  # read copies are independent of the parameters
    assert not torch.equal(lora[next(iter(lora))].detach(), new[next(iter(new))])
    bad = dict(snap)
    bad.pop(next(iter(bad)))
    with pytest.raises(ConfigError):
        write_tensors(lora, bad)


def test_minilm_loads_offline_with_paper_lora_size():
    assert (minilm_dir() / "model.safetensors").is_file()
    tok = load_tokenizer("minilm")
    model = apply_lora(
        load_base_model("minilm", tok, num_labels=2),
        "minilm",
        r=16,
        alpha=32,
        dropout=0.05,
        target_modules=None,
        classification=True,
    )
    lora, head = split_trainable(model)
    assert sum(p.numel() for p in lora.values()) == 147_456  # 6 layers x 2 x (16x384 + 384x16)
    assert sum(p.numel() for p in head.values()) == 770
    # the pretrained weights really loaded (not a random init)
    from safetensors import safe_open

    with safe_open(str(minilm_dir() / "model.safetensors"), "pt") as f:
        want = f.get_tensor("encoder.layer.3.attention.self.query.weight")
    got = model.base_model.model.bert.encoder.layer[3].attention.self.query.base_layer.weight
    assert torch.equal(got.detach(), want.to(got.dtype))


def test_num_layers_beyond_model_is_config_error():
    tok = load_tokenizer("minilm")
    with pytest.raises(ConfigError):
        load_base_model("minilm", tok, num_labels=2, num_layers=7)


def test_encoder_cannot_do_gsm8k():
    from fedsqueeze.models.workload import build_workload

    with pytest.raises(ConfigError):
        build_workload(ModelConfig(name="tiny-bert"), DataConfig(dataset="gsm8k", test_examples=4), seed=0)
