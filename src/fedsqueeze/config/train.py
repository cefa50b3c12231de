"""``[train]``: local training of one client in one round (:class:`LocalTrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fields import POSITIVE, Range, setting, validate
from .sections import register_section

__all__ = ["OPTIMIZERS", "LocalTrainConfig"]

# Local optimizers by name (``train.optimizer`` allows these names). "adam" adds weight decay to the
# gradient (L2, coupled; the FLM-TopK authors' code), "adamw" decays the weights apart from the gradient step
# (Loshchilov & Hutter; transformers' Trainer). Here, not in models/, so the config imports no model code.
OPTIMIZERS: dict[str, type[torch.optim.Adam]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class LocalTrainConfig:
    """Local training of one client in one round (paper defaults: Adam+amsgrad, lr 1e-3, wd 0.02).

    Parameters
    ----------
    epochs
        Passes over the client's shard per round.
    batch_size
        Examples per optimizer step.
    lr
        Adam learning rate of the LoRA tensors.
    weight_decay
        Adam weight decay.
    amsgrad
        Use Adam's amsgrad variant.
    optimizer
        ``"adam"``: the weight decay is added to the gradient (L2), so Adam's normalisation turns it into a
        step of about ``lr`` towards zero on a tensor whose gradient is tiny, such as LoRA's A while B is
        still near zero. ``"adamw"``: decoupled weight decay, ``lr · weight_decay · w`` per step.
    max_steps
        Cap on optimizer steps per round; ``None``: run all ``epochs``.
    head_lr
        Learning rate of the non-LoRA trainables (the freshly initialised classifier head); ``None``: ``lr``.
    logit_adjust
        τ of the label-skew correction of FedLC (Zhang et al., ICML 2022) / logit adjustment (Menon et al.,
        ICLR 2021): classification clients train on ``logits + τ·log π_client`` with ``π_client`` their own
        (add-one smoothed) label frequencies, so a client holding mostly one label pushes the shared head
        far less towards it; evaluation uses the plain logits. ``0`` turns it off; tasks without classes
        (instruction tuning, gsm8k) ignore it.
    """

    epochs: int = setting(1, range=POSITIVE)
    batch_size: int = setting(16, range=POSITIVE)
    lr: float = setting(3e-3, range=POSITIVE)
    weight_decay: float = setting(0.02, range=Range(0))
    amsgrad: bool = True
    optimizer: str = setting("adamw", choices=tuple(OPTIMIZERS))
    max_steps: int | None = setting(20, range=POSITIVE)
    head_lr: float | None = setting(1e-3, range=POSITIVE)
    logit_adjust: float = setting(1.0, range=Range(0, note=" (0 turns it off)"))

    def __post_init__(self) -> None:
        validate(self, "train")


register_section("train", LocalTrainConfig)
