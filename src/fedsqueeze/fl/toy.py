"""A tiny pure-torch workload for tests and examples: LoRA on a frozen random layer over Gaussian clusters.

Model: ``logits = head(tanh((W₀ + s·B A) x))`` with ``W₀`` frozen and random, LoRA ``A`` (r×dim) and ``B``
(hidden×r) and a linear head. Data: one Gaussian cluster per class; each client gets a label-skewed sample
(class proportions from a Dirichlet) of its own size. Everything is a function of ``seed``; a round of a few
clients takes milliseconds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn.functional import cross_entropy

from ..config import LocalTrainConfig
from ..models.training import log_label_prior, make_optimizer
from ..spec import UpdateSpec

__all__ = ["ToyWorkload"]


class ToyWorkload:
    """Implements :class:`~fedsqueeze.fl.workload.Workload` on synthetic data with a tiny LoRA model.

    Parameters
    ----------
    num_clients
        Clients in the federation.
    dim, hidden, num_classes, rank
        Input width, hidden width, classes and LoRA rank.
    min_examples, max_examples
        Range of the per-client sample counts (drawn per client, so FedAvg weights differ).
    alpha
        Dirichlet concentration of the per-client label mix (small = non-IID).
    test_examples
        Size of the held-out set (balanced over classes).
    seed
        Fixes data, partition and initial parameters.
    """

    metric_name = "accuracy"

    def __init__(
        self,
        num_clients: int = 6,
        *,
        dim: int = 12,
        hidden: int = 16,
        num_classes: int = 3,
        rank: int = 4,
        min_examples: int = 20,
        max_examples: int = 60,
        alpha: float = 0.5,
        test_examples: int = 240,
        noise: float = 1.2,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.num_classes, self.scale = num_classes, 2.0 / rank
        self.means = torch.as_tensor(rng.normal(0.0, 1.0, (num_classes, dim)), dtype=torch.float32)
        self.noise = noise
        self.w0 = torch.as_tensor(rng.normal(0.0, 1.0 / math.sqrt(dim), (hidden, dim)), dtype=torch.float32)
        self.lora_spec = UpdateSpec.from_shapes({"layer.lora_A": (rank, dim), "layer.lora_B": (hidden, rank)})
        self.head_spec = UpdateSpec.from_shapes(
            {"head.weight": (num_classes, hidden), "head.bias": (num_classes,)}
        )
        self._init = (
            {
                "layer.lora_A": torch.as_tensor(rng.normal(0, 0.3, (rank, dim)), dtype=torch.float32),
                "layer.lora_B": torch.as_tensor(rng.normal(0, 0.05, (hidden, rank)), dtype=torch.float32),
            },
            {
                "head.weight": torch.as_tensor(
                    rng.normal(0, 0.1, (num_classes, hidden)), dtype=torch.float32
                ),
                "head.bias": torch.zeros(num_classes),
            },
        )
        self.clients: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(num_clients):
            n = int(rng.integers(min_examples, max_examples + 1))
            labels = rng.choice(num_classes, size=n, p=rng.dirichlet([alpha] * num_classes))
            self.clients.append(self._sample(rng, labels))
        self.test = self._sample(rng, np.arange(test_examples) % num_classes)
        self.info = {"model": "toy", "num_clients": num_clients, "lora_numel": self.lora_spec.numel}

    def _sample(self, rng: np.random.Generator, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.as_tensor(labels, dtype=torch.long)
        x = self.means[y] + self.noise * torch.as_tensor(
            rng.normal(0.0, 1.0, (len(labels), self.means.shape[1])), dtype=torch.float32
        )
        return x, y

    # -- protocol -----------------------------------------------------------------------------------------
    def num_clients(self) -> int:
        return len(self.clients)

    def client_num_examples(self, client: int) -> int:
        return len(self.clients[client][1])

    def initial_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return (
            {k: v.clone() for k, v in self._init[0].items()},
            {k: v.clone() for k, v in self._init[1].items()},
        )

    def _logits(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.w0 + self.scale * p["layer.lora_B"] @ p["layer.lora_A"]
        return torch.tanh(x @ w.T) @ p["head.weight"].T + p["head.bias"]

    def train_client(
        self,
        client: int,
        lora: dict[str, torch.Tensor],
        head: dict[str, torch.Tensor],
        cfg: LocalTrainConfig,
        *,
        seed: int,
        train_head: bool = True,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        x, y = self.clients[client]
        params = {k: v.detach().clone().requires_grad_(True) for k, v in {**lora, **head}.items()}
        head_lr = cfg.head_lr or cfg.lr
        groups: list[dict[str, Any]] = [{"params": [params[k] for k in lora]}]
        if train_head:
            groups.append({"params": [params[k] for k in head], "lr": head_lr})
        else:
            for k in head:
                params[k].requires_grad_(False)
        opt = make_optimizer(groups, cfg)
        gen = torch.Generator().manual_seed(seed & ((1 << 63) - 1))
        bias = torch.zeros(self.num_classes)
        if cfg.logit_adjust > 0:  # FedLC: τ·log of this client's add-one smoothed label frequencies
            bias = cfg.logit_adjust * log_label_prior(y, self.num_classes)
        losses: list[float] = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), cfg.batch_size):
                if cfg.max_steps is not None and len(losses) >= cfg.max_steps:
                    break
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = cross_entropy(self._logits(x[idx], params) + bias, y[idx])
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        out = {k: v.detach().clone() for k, v in params.items()}
        new_lora = {k: out[k] for k in self.lora_spec.names}
        new_head = {k: out[k] for k in self.head_spec.names}
        return new_lora, new_head, float(np.mean(losses)) if losses else float("nan")

    def evaluate(self, lora: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, float]:
        x, y = self.test
        with torch.no_grad():
            logits = self._logits(x, {**lora, **head})
            return {
                "accuracy": float((logits.argmax(1) == y).float().mean()),
                "eval_loss": float(cross_entropy(logits, y)),
            }
