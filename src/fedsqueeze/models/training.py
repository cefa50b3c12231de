"""What local training of every workload shares: the optimizer of ``train.optimizer`` and FedLC's label prior.

Used by the real workloads (:mod:`fedsqueeze.models.workload`, :mod:`fedsqueeze.models.tasks`) and the
in-code test workload (:mod:`fedsqueeze.fl.toy`). Only torch; no transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config.train import OPTIMIZERS, LocalTrainConfig

__all__ = ["log_label_prior", "make_optimizer"]


def log_label_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``log π`` of a client's labels, add-one smoothed (never ``-inf``): the FedLC logit offset per class."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).to(torch.float64)
    return torch.log((counts + 1.0) / (counts.sum() + num_classes)).to(torch.float32)


def make_optimizer(groups: list[dict[str, Any]], cfg: LocalTrainConfig) -> torch.optim.Optimizer:
    """The local optimizer ``cfg.optimizer`` over ``groups`` (lr, weight decay, amsgrad: ``cfg``)."""
    return OPTIMIZERS[cfg.optimizer](groups, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)
