"""The seam between the round loop and the ML side.

The federated loop (``fedsqueeze.fl``) sees a :class:`Workload`: a model, a dataset and its partition, able
to train one client locally and to evaluate. It never imports transformers. Real workloads are built by
``fedsqueeze.models.workload.build_workload``; tests use a tiny in-code one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..errors import ConfigError
from ..spec import UpdateSpec

__all__ = ["DataConfig", "LocalTrainConfig", "ModelConfig", "Workload", "log_label_prior"]

MODELS = ("minilm", "smollm2-135m", "tiny-bert", "tiny-llama", "toy")  # toy: fl.toy.ToyWorkload (tests)
DATASETS = ("rotten_tomatoes", "bbc_news", "gsm8k")
PARTITIONS = ("iid", "dirichlet")
POOLINGS = ("auto", "cls", "mean")
DEVICES = ("cpu", "cuda", "auto")  # classification heads: see fedsqueeze.models.pooling


def _choice(section: str, key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{key} = {value!r} is not allowed; choose one of {', '.join(allowed)}")


def _positive(section: str, key: str, value: float | int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        raise ConfigError(f"{section}.{key} must be > 0, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model and which LoRA adapter.

    Parameters
    ----------
    name
        The model: ``minilm`` (all-MiniLM-L6-v2, classification), ``smollm2-135m`` (causal LM),
        ``tiny-bert`` / ``tiny-llama`` (randomly initialised miniature models, tests only) or ``toy`` (a tiny
        in-code workload, tests only).
    lora_r, lora_alpha, lora_dropout
        LoRA rank, scaling α and dropout of the adapter (PEFT ``LoraConfig``).
    target_modules
        Modules that get a LoRA adapter; ``None``: the model's default (query/value or q_proj/v_proj).
    max_length
        Tokens per example after truncation.
    num_layers
        Keep only the first this many transformer layers (smoke runs of big models); ``None``: all.
    pooling
        What a classification head reads: ``cls`` (the BERT pooler over ``[CLS]``), ``mean`` (masked token
        mean, how sentence-transformers models such as MiniLM were trained) or ``auto`` (``mean`` for
        ``minilm``, ``cls`` otherwise).
    device
        Where local training and evaluation run: ``cpu``, ``cuda`` or ``auto`` (``cuda`` when available);
        updates, codecs and aggregation always stay on the CPU.
    """

    name: str = "minilm"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    max_length: int = 32
    num_layers: int | None = None
    pooling: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        _choice("model", "name", self.name, MODELS)
        _choice("model", "pooling", self.pooling, POOLINGS)
        _choice("model", "device", self.device, DEVICES)
        _positive("model", "lora_r", self.lora_r)
        _positive("model", "lora_alpha", self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _positive("model", "max_length", self.max_length)
        _positive("model", "num_layers", self.num_layers, allow_none=True)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how many clients and how it is split among them.

    Parameters
    ----------
    dataset
        ``rotten_tomatoes`` (review snippets, 2 classes), ``bbc_news`` (articles, 5 classes) or ``gsm8k``
        (math problems, exact match of the final number; needs a causal model).
    num_clients
        Clients the training pool is split among.
    partition
        ``iid`` (uniform split) or ``dirichlet`` (label skew with concentration ``alpha``).
    alpha
        Dirichlet concentration of the label skew (smaller: more skewed).
    max_train_examples
        Cap on the training pool (seeded choice); ``None``: all of it.
    test_examples
        Size of the held-out evaluation set (seeded choice).
    seed
        Seed of the split and the partition (kept apart from ``fl.seed``).
    gen_max_new_tokens
        Generation budget of the gsm8k evaluation.
    """

    dataset: str = "rotten_tomatoes"
    num_clients: int = 20
    partition: str = "dirichlet"
    alpha: float = 0.5
    max_train_examples: int | None = None
    test_examples: int = 500
    seed: int = 0
    gen_max_new_tokens: int = 128

    def __post_init__(self) -> None:
        _choice("data", "dataset", self.dataset, DATASETS)
        _choice("data", "partition", self.partition, PARTITIONS)
        _positive("data", "num_clients", self.num_clients)
        _positive("data", "alpha", self.alpha)
        _positive("data", "max_train_examples", self.max_train_examples, allow_none=True)
        _positive("data", "test_examples", self.test_examples)
        _positive("data", "gen_max_new_tokens", self.gen_max_new_tokens)


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
    max_steps
        Cap on optimizer steps per round; ``None``: run all ``epochs``.
    head_lr
        Learning rate of the non-LoRA trainables (the freshly initialised classifier head); ``None``: ``lr``.
    logit_adjust
        τ of the label-skew correction of FedLC (Zhang et al., ICML 2022) / logit adjustment (Menon et al.,
        ICLR 2021): classification clients train on ``logits + τ·log π_client`` with ``π_client`` their own
        (add-one smoothed) label frequencies, so a client holding mostly one label pushes the shared head
        far less towards it; evaluation uses the plain logits. ``0`` turns it off.
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 5e-3
    weight_decay: float = 0.02
    amsgrad: bool = True
    max_steps: int | None = 40
    head_lr: float | None = None
    logit_adjust: float = 1.0

    def __post_init__(self) -> None:
        _positive("train", "epochs", self.epochs)
        _positive("train", "head_lr", self.head_lr, allow_none=True)
        _positive("train", "batch_size", self.batch_size)
        _positive("train", "lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _positive("train", "max_steps", self.max_steps, allow_none=True)
        if not self.logit_adjust >= 0:
            raise ConfigError(f"train.logit_adjust must be >= 0 (0 turns it off), got {self.logit_adjust}")


def log_label_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``log π`` of a client's labels, add-one smoothed (never ``-inf``): the FedLC logit offset per class."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).to(torch.float64)
    return torch.log((counts + 1.0) / (counts.sum() + num_classes)).to(torch.float32)


@runtime_checkable
class Workload(Protocol):
    """A model + dataset + partition, seen by the round loop.

    Attributes
    ----------
    lora_spec
        The LoRA tensors, in state-dict order: what the uplink codec compresses.
    head_spec
        Other trainable tensors (e.g. a classifier head), sent densely and counted; may be empty.
    metric_name
        Name of the main evaluation metric (``"accuracy"`` or ``"exact_match"``); higher is better.
    """

    lora_spec: UpdateSpec
    head_spec: UpdateSpec
    metric_name: str

    def num_clients(self) -> int: ...

    def client_num_examples(self, client: int) -> int: ...

    def initial_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The global ``(lora, head)`` tensors before round 1 (deterministic from the build seed)."""
        ...

    def train_client(
        self,
        client: int,
        lora: dict[str, torch.Tensor],
        head: dict[str, torch.Tensor],
        cfg: LocalTrainConfig,
        *,
        seed: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        """Train ``client`` from ``(lora, head)``; return the new ``(lora, head)`` and the mean train loss.

        Must be deterministic given the inputs and ``seed`` and must not modify its inputs.
        """
        ...

    def evaluate(self, lora: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out metrics; includes ``metric_name`` (and e.g. ``macro_f1``, ``eval_loss``)."""
        ...
