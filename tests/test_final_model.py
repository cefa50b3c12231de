"""The final model of a run: final_params.safetensors (every driver) and final_adapter/ in PEFT's format."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.fl.final import FINAL_ADAPTER, FINAL_PARAMS, save_final
from fedsqueeze.fl.toy import ToyWorkload


def test_run_writes_the_final_params(tmp_path):
    cfg = RunConfig(
        model=ModelConfig(name="toy"),
        data=DataConfig(num_clients=4),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8),
        fl=FLConfig(rounds=2, clients_per_round=2),
        codec=CodecConfig("topk", {"density": 0.1}),
    )
    run(cfg, tmp_path, workload=ToyWorkload(4))
    got, ck = load_file(str(tmp_path / FINAL_PARAMS)), load_checkpoint(tmp_path)
    assert set(got) == {f"lora/{k}" for k in ck["lora"]} | {f"head/{k}" for k in ck["head"]}
    for part in ("lora", "head"):
        for k, v in ck[part].items():
            assert torch.equal(got[f"{part}/{k}"], v), k
    assert not (tmp_path / FINAL_ADAPTER).exists()  # the toy workload has no PEFT model


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_final_adapter_loads_back_with_peft_and_equals_the_final_params(tmp_path):
    from peft import PeftModel

    from fedsqueeze.models.loading import load_base_model, load_tokenizer
    from fedsqueeze.models.lora import split_trainable
    from fedsqueeze.models.workload import build_workload

    model = ModelConfig(name="tiny-bert", lora_r=4, lora_alpha=8.0, lora_dropout=0.0, max_length=16)
    wl = build_workload(model, DataConfig(num_clients=2, max_train_examples=40, test_examples=8), seed=0)
    lora, head = wl.initial_params()
    gen = torch.Generator().manual_seed(1)
    lora = {k: v + torch.randn(v.shape, generator=gen) for k, v in lora.items()}  # unlike any fresh adapter
    head = {k: v + torch.randn(v.shape, generator=gen) for k, v in head.items()}
    save_final(tmp_path, lora, head, wl)
    folder = tmp_path / FINAL_ADAPTER
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()

    base = load_base_model("tiny-bert", load_tokenizer("tiny-bert"), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(folder))
    lora_p, head_p = split_trainable(_trainable(loaded))
    params = load_file(str(tmp_path / FINAL_PARAMS))
    assert set(lora_p) == set(lora) and set(head_p) == set(head)
    for k, p in lora_p.items():
        assert torch.equal(p.detach(), lora[k]) and torch.equal(params[f"lora/{k}"], lora[k]), k
    for k, p in head_p.items():
        assert torch.equal(p.detach(), head[k]) and torch.equal(params[f"head/{k}"], head[k]), k


def _trainable(peft_model):
    """A loaded adapter is frozen (inference mode); mark its adapter and head tensors as the trainables."""
    for name, p in peft_model.named_parameters():
        p.requires_grad_(".lora_" in name or ".modules_to_save." in name)
    return peft_model
