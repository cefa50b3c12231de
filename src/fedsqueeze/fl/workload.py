"""The seam between the round loop and the ML side.

The federated loop (``fedsqueeze.fl``) sees a :class:`Workload`: a model, a dataset and its partition, able
to train one client locally and to evaluate. It never imports transformers. Real workloads are built by
``fedsqueeze.models.workload.build_workload``; tests use a tiny in-code one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..data.verbalize import VERBALIZERS
from ..errors import ConfigError
from ..spec import UpdateSpec
from .fields import Range, setting, validate

__all__ = [
    "CAUSAL_MODELS",
    "CLASSIFIERS",
    "HEAD_MODES",
    "OPTIMIZERS",
    "DataConfig",
    "LocalTrainConfig",
    "ModelConfig",
    "Workload",
    "check_classifier",
    "log_label_prior",
    "make_optimizer",
]

MODELS = ("minilm", "smollm2-135m", "tiny-bert", "tiny-llama", "toy")  # toy: fl.toy.ToyWorkload (tests)
CAUSAL_MODELS = ("smollm2-135m", "tiny-llama")  # the causal LMs among MODELS (gsm8k, verbalizers)
DATASETS = ("rotten_tomatoes", "bbc_news", "gsm8k")
PARTITIONS = ("iid", "dirichlet")
POOLINGS = ("auto", "cls", "mean")
DEVICES = ("cpu", "cuda", "auto")  # classification heads: see fedsqueeze.models.pooling
HEAD_MODES = ("train", "first_round", "frozen")
# Local optimizers by name. "adam" adds weight decay to the gradient (L2, coupled; the FLM-TopK authors'
# code), "adamw" decays the weights apart from the gradient step (Loshchilov & Hutter; transformers' Trainer).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CLASSIFIERS = ("head", "verbalizer")  # verbalizer: fedsqueeze.data.verbalize


POSITIVE = Range(0, low_closed=False)  # "> 0"


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
    lora_layers
        Put LoRA on the top this many transformer layers only (PEFT's ``layers_to_transform``); ``None``:
        on every layer. With a verbalizer, the frozen layers below then run once per example and their
        output is reused across steps, rounds and clients (:mod:`fedsqueeze.models.layer_cache`).
    layer_cache_mb
        Memory bound of that reuse, in MiB of cached hidden states; examples beyond it are recomputed.
        ``0`` turns the reuse off (every step runs the whole model).
    pooling
        What a classification head reads: ``cls`` (the BERT pooler over ``[CLS]``), ``mean`` (masked token
        mean, how sentence-transformers models such as MiniLM were trained) or ``auto`` (``mean`` for
        ``minilm``, ``cls`` otherwise).
    device
        Where local training and evaluation run: ``cpu``, ``cuda`` or ``auto`` (``cuda`` when available);
        updates, codecs and aggregation always stay on the CPU.
    head
        What happens to the trainable tensors outside LoRA (a classification head): ``train`` (trained by
        the clients every round and sent densely both ways), ``first_round`` (trained in round 1 only, then
        frozen, the FLM-TopK authors' protocol, so from round 2 on the LoRA update carries all learning) or
        ``frozen`` (never trained: the head keeps its seeded initial values, which every client can make
        itself, so it is never sent). A frozen head costs no bytes. Irrelevant for the verbalizer (no head).
    classifier
        How a classification dataset is classified: ``head`` (a new linear head on the model, see
        :attr:`head`) or ``verbalizer`` (a causal LM only: the prompt is the text and a question, the label
        is the next token among one label word per class, e.g. `` positive`` / `` negative``; see
        :mod:`fedsqueeze.data.verbalize`). The verbalizer has no trainable tensor outside LoRA, so LoRA
        carries all the learning and nothing but the LoRA frame is sent; its training loss is the
        cross-entropy over the label-word logits at the last prompt position.
    """

    name: str = setting("minilm", choices=MODELS)
    lora_r: int = setting(16, range=POSITIVE)
    lora_alpha: float = setting(32.0, range=POSITIVE)
    lora_dropout: float = setting(0.05, range=Range(0, 1))
    target_modules: tuple[str, ...] | None = None
    max_length: int = setting(32, range=POSITIVE)
    num_layers: int | None = setting(None, range=POSITIVE)
    lora_layers: int | None = setting(None, range=POSITIVE)
    layer_cache_mb: int = setting(4096, range=Range(0, note=" (0 turns it off)"))
    pooling: str = setting("auto", choices=POOLINGS)
    device: str = setting("cpu", choices=DEVICES)
    head: str = setting("train", choices=HEAD_MODES)
    classifier: str = setting("head", choices=CLASSIFIERS)

    def __post_init__(self) -> None:
        validate(self, "model")
        if self.classifier == "verbalizer" and self.name not in CAUSAL_MODELS:
            raise ConfigError(
                f"model.classifier = 'verbalizer' needs a causal LM ({' or '.join(CAUSAL_MODELS)}), "
                f"not {self.name!r}"
            )

    def trains_head(self, r: int) -> bool:
        """Whether the clients of round ``r`` train the head (per :attr:`head`)."""
        return self.head == "train" or (self.head == "first_round" and r == 1)


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

    dataset: str = setting("rotten_tomatoes", choices=DATASETS)
    num_clients: int = setting(20, range=POSITIVE)
    partition: str = setting("dirichlet", choices=PARTITIONS)
    alpha: float = setting(0.5, range=POSITIVE)
    max_train_examples: int | None = setting(None, range=POSITIVE)
    test_examples: int = setting(500, range=POSITIVE)
    seed: int = 0
    gen_max_new_tokens: int = setting(128, range=POSITIVE)

    def __post_init__(self) -> None:
        validate(self, "data")


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
        far less towards it; evaluation uses the plain logits. ``0`` turns it off.
    """

    epochs: int = setting(1, range=POSITIVE)
    batch_size: int = setting(16, range=POSITIVE)
    lr: float = setting(5e-3, range=POSITIVE)
    weight_decay: float = setting(0.02, range=Range(0))
    amsgrad: bool = True
    optimizer: str = setting("adam", choices=tuple(OPTIMIZERS))
    max_steps: int | None = setting(40, range=POSITIVE)
    head_lr: float | None = setting(None, range=POSITIVE)
    logit_adjust: float = setting(1.0, range=Range(0, note=" (0 turns it off)"))

    def __post_init__(self) -> None:
        validate(self, "train")


def check_classifier(model: ModelConfig, data: DataConfig) -> None:
    """:class:`~fedsqueeze.ConfigError` when ``model.classifier`` does not fit ``data.dataset`` (the rule
    that spans two sections; ``RunConfig`` and ``build_workload`` both call it)."""
    if model.classifier == "verbalizer" and data.dataset not in VERBALIZERS:
        raise ConfigError(
            f"model.classifier = 'verbalizer' needs a classification dataset ({', '.join(VERBALIZERS)}), "
            f"not {data.dataset!r}"
        )


def log_label_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``log π`` of a client's labels, add-one smoothed (never ``-inf``): the FedLC logit offset per class."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).to(torch.float64)
    return torch.log((counts + 1.0) / (counts.sum() + num_classes)).to(torch.float32)


def make_optimizer(groups: list[dict[str, Any]], cfg: LocalTrainConfig) -> torch.optim.Optimizer:
    """The local optimizer ``cfg.optimizer`` over ``groups`` (lr, weight decay, amsgrad: ``cfg``)."""
    return OPTIMIZERS[cfg.optimizer](groups, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)


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
        train_head: bool = True,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        """Train ``client`` from ``(lora, head)``; return the new ``(lora, head)`` and the mean train loss.

        With ``train_head=False`` the head stays fixed (it is returned unchanged). Must be deterministic
        given the inputs and ``seed`` and must not modify its inputs.
        """
        ...

    def evaluate(self, lora: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out metrics; includes ``metric_name`` (and e.g. ``macro_f1``, ``eval_loss``)."""
        ...
