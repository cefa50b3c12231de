"""``train.optimizer``: coupled (Adam + L2) against decoupled (AdamW) weight decay in local training."""

from __future__ import annotations

import pytest
import torch

from fedsqueeze import ConfigError
from fedsqueeze.config import LocalTrainConfig, RunConfig
from fedsqueeze.config.train import OPTIMIZERS
from fedsqueeze.models.training import make_optimizer


def _step_with_zero_gradient(name: str, steps: int = 5) -> torch.Tensor:
    """The move of a weight whose loss gradient is zero (LoRA's A while B is zero), after ``steps`` steps."""
    w = torch.nn.Parameter(torch.full((4,), 0.05))
    cfg = LocalTrainConfig(lr=3e-3, weight_decay=0.02, optimizer=name)
    opt = make_optimizer([{"params": [w]}], cfg)
    for _ in range(steps):
        opt.zero_grad()
        (w * 0.0).sum().backward()
        opt.step()
    return 0.05 - w.detach()


def test_coupled_decay_moves_a_zero_gradient_weight_by_about_lr_per_step_and_adamw_barely():
    adam, adamw = _step_with_zero_gradient("adam"), _step_with_zero_gradient("adamw")
    # Adam normalises the L2 term wd·w into a step of ~lr: 5 steps of 3e-3 pull w from 0.05 to ~0.035.
    assert torch.allclose(adam, torch.full((4,), 5 * 3e-3), rtol=0.05)
    # AdamW: (1 − lr·wd)^5 shrink, about 1.5e-5 here, a thousand times less.
    assert torch.allclose(adamw, torch.full((4,), 0.05 * (1 - (1 - 3e-3 * 0.02) ** 5)), rtol=1e-3)


def test_without_weight_decay_the_two_take_identical_steps():
    torch.manual_seed(0)
    target = torch.randn(6)
    moved = []
    for name in OPTIMIZERS:
        w = torch.nn.Parameter(torch.zeros(6))
        opt = make_optimizer([{"params": [w]}], LocalTrainConfig(weight_decay=0.0, optimizer=name))
        for _ in range(3):
            opt.zero_grad()
            ((w - target) ** 2).sum().backward()
            opt.step()
        moved.append(w.detach().clone())
    assert torch.equal(moved[0], moved[1])


def test_optimizer_is_a_validated_run_config_key():
    cfg = RunConfig.from_dict({"train": {"optimizer": "adamw"}})
    assert cfg.train.optimizer == "adamw"
    assert RunConfig.from_dict({}).train.optimizer == "adamw"  # the default (the LoRA-carried run)
    # a config saved before the key existed was made with Adam, its default then
    assert RunConfig.from_saved({"train": {"lr": 0.01}}).train.optimizer == "adam"
    assert RunConfig.from_saved({"model": {"name": "toy"}}).model.head == "train"
    with pytest.raises(ConfigError, match="optimizer"):
        RunConfig.from_dict({"train": {"optimizer": "sgd"}})
    # a recorded config from before the key existed counts as Adam (its default then), so finished cells
    # made with Adam stay valid and a run with today's AdamW default does not pass for one of them
    saved = RunConfig.from_dict({}).to_dict()
    del saved["train"]["optimizer"]
    adam = RunConfig.from_dict({"train": {"optimizer": "adam"}})
    assert adam.differences(saved) == []
    assert cfg.differences(saved) == ["train.optimizer"]
