"""The seam between the round loop and the ML side.

The federated loop (``fedsqueeze.fl``) sees a :class:`Workload`: a model, a dataset and its partition, able
to train one client locally and to evaluate. It never imports transformers. Real workloads are built by
``fedsqueeze.models.workload.build_workload``; tests use a tiny in-code one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..data.own import check_data_config
from ..data.sources import BUILTIN_DATASETS
from ..data.verbalize import VERBALIZERS
from ..errors import ConfigError
from ..models.registry import ALL_LINEAR, AUTO, DTYPES, KINDS, TOY, available, check_name, resolve_kind
from ..spec import UpdateSpec
from .fields import Range, setting, validate

__all__ = [
    "CAUSAL_MODELS",
    "CLASSIFIERS",
    "HEAD_MODES",
    "LORA_TRAIN",
    "OPTIMIZERS",
    "DataConfig",
    "LocalTrainConfig",
    "ModelConfig",
    "Workload",
    "check_classifier",
    "is_causal",
    "log_label_prior",
    "make_optimizer",
]

# The built-in model names (fedsqueeze.models.registry) and toy (fl.toy.ToyWorkload, tests); model.name also
# takes a model directory or a hub id.
MODELS = (*available(), TOY)
CAUSAL_MODELS = tuple(n for n in available() if resolve_kind(n) == "causal-lm")  # gsm8k, verbalizers
MODEL_KINDS = (AUTO, *KINDS)
DATASETS = tuple(BUILTIN_DATASETS)  # the built-in ones; data.dataset also takes files, folders and hf:NAME
PARTITIONS = ("iid", "dirichlet")
POOLINGS = ("auto", "cls", "mean")
DEVICES = ("cpu", "cuda", "auto")  # classification heads: see fedsqueeze.models.pooling
HEAD_MODES = ("train", "first_round", "frozen")
# Local optimizers by name. "adam" adds weight decay to the gradient (L2, coupled; the FLM-TopK authors'
# code), "adamw" decays the weights apart from the gradient step (Loshchilov & Hutter; transformers' Trainer).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CLASSIFIERS = ("head", "verbalizer")  # verbalizer: fedsqueeze.data.verbalize
LORA_TRAIN = ("both", "b")  # b: FFA-LoRA, A frozen at its seeded initialisation (docs/ffa-lora.md)


POSITIVE = Range(0, low_closed=False)  # "> 0"


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model and which LoRA adapter.

    Parameters
    ----------
    name
        The model: ``minilm`` (all-MiniLM-L6-v2, classification), ``smollm2-135m`` (causal LM),
        ``tiny-bert`` / ``tiny-llama`` (randomly initialised miniature models, tests only), ``toy`` (a tiny
        in-code workload, tests only), a local directory holding a Hugging Face model (its ``config.json``,
        weights and tokenizer, as ``save_pretrained`` writes them) or a Hugging Face hub id (only with
        ``FEDSQUEEZE_OFFLINE=0``).
    lora_r, lora_alpha, lora_dropout
        LoRA rank, scaling α and dropout of the adapter (PEFT ``LoraConfig``).
    target_modules
        Modules that get a LoRA adapter (short names such as ``q_proj``), or ``all-linear`` (every linear
        layer but the output layer and the classification head); ``None``: the model's default
        (query/value or q_proj/v_proj for the built-ins, PEFT's default for the architecture otherwise).
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
    kind
        ``causal-lm`` or ``encoder``; ``auto``: the built-in model's own, else ``causal-lm`` when the
        ``architectures`` in its ``config.json`` name a ``...ForCausalLM``. gsm8k and the verbalizer need a
        causal LM.
    dtype
        Precision of the frozen base model: ``float32``, ``bfloat16`` or ``float16``; the LoRA tensors and a
        classification head stay ``float32``.
    lora_train
        Which LoRA factors the clients train: ``both`` (``A`` and ``B``) or ``b`` (FFA-LoRA, Sun et al.,
        ICLR 2024): every ``A`` stays at its seeded initialisation, which every client and the server draw
        alike from ``fl.seed``, so only ``B`` is trained, compressed, sent both ways and aggregated (about
        half the LoRA parameters; with ``A`` shared, ``(mean B)·A`` is exactly the mean of the clients'
        ``B·A``). ``A`` is never sent; ``final_adapter/`` still holds it. Fewer trainable parameters: a
        random ``A`` may cost accuracy (docs/ffa-lora.md). PEFT models only, not ``toy``.
    """

    name: str = setting(
        "minilm", allowed=f"`{'`, `'.join(MODELS)}`, a model directory, or a hub id (`FEDSQUEEZE_OFFLINE=0`)"
    )
    lora_r: int = setting(16, range=POSITIVE)
    lora_alpha: float = setting(32.0, range=POSITIVE)
    lora_dropout: float = setting(0.05, range=Range(0, 1))
    target_modules: tuple[str, ...] | None = setting(
        None, allowed=f"`{ALL_LINEAR}` or a list of module names"
    )
    max_length: int = setting(32, range=POSITIVE)
    num_layers: int | None = setting(None, range=POSITIVE)
    lora_layers: int | None = setting(None, range=POSITIVE)
    layer_cache_mb: int = setting(4096, range=Range(0, note=" (0 turns it off)"))
    pooling: str = setting("auto", choices=POOLINGS)
    device: str = setting("cpu", choices=DEVICES)
    head: str = setting("train", choices=HEAD_MODES)
    classifier: str = setting("head", choices=CLASSIFIERS)
    kind: str = setting(AUTO, choices=MODEL_KINDS)
    dtype: str = setting("float32", choices=DTYPES)
    lora_train: str = setting("both", choices=LORA_TRAIN)

    def __post_init__(self) -> None:
        validate(self, "model")
        check_name(self.name)
        if self.lora_train != "both" and self.name == TOY:
            raise ConfigError(
                f"model.lora_train = {self.lora_train!r} needs a PEFT model; the toy workload trains both "
                "factors"
            )
        if self.target_modules is not None:
            targets = self.target_modules
            targets = (targets,) if isinstance(targets, str) else tuple(targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ConfigError(
                    f'model.target_modules must be module names (e.g. ["q_proj", "v_proj"]) or '
                    f'"{ALL_LINEAR}", got {self.target_modules!r}'
                )
            if ALL_LINEAR in targets and len(targets) > 1:
                raise ConfigError(
                    f'model.target_modules = "{ALL_LINEAR}" stands alone, not in a list of names'
                )
            object.__setattr__(self, "target_modules", targets)
        if self.classifier == "verbalizer" and not is_causal(self):
            raise ConfigError(
                f"model.classifier = 'verbalizer' needs a causal LM ({', '.join(CAUSAL_MODELS)} or a causal "
                f"LM directory), not {self.name!r}"
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
        ``rotten_tomatoes`` (review snippets, 2 classes), ``bbc_news`` (articles, 5 classes), ``gsm8k``
        (math problems, exact match of the final number; needs a causal model), or your own data: a
        ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, a folder of such files (one format), or
        ``hf:NAME[:CONFIG]``, a Hugging Face hub dataset's ``train`` split (only with
        ``FEDSQUEEZE_OFFLINE=0``). Your own data is read with Hugging Face ``datasets``
        (``pip install 'fedsqueeze[data]'``) and mapped to a task by ``text_field`` + ``label_field``
        (classification), ``prompt_field`` + ``response_field`` (instruction tuning) or, with neither, a
        ``messages`` column of chats (instruction tuning through the tokenizer's chat template; the last
        assistant message is the response). Instruction tuning trains on the response tokens only and its
        main metric is ``eval_loss``, the held-out loss per response token (lower is better), with
        ``perplexity`` beside it; it needs a causal model.
    num_clients
        Clients the training pool is split among.
    partition
        ``iid`` (uniform split) or ``dirichlet`` (label skew with concentration ``alpha``; over
        ``group_field`` when set; for instruction tuning without it, a skew of client sizes).
    alpha
        Dirichlet concentration of the label skew (smaller: more skewed).
    max_train_examples
        Cap on the training pool (seeded choice); ``None``: all of it.
    test_examples
        Size of the held-out evaluation set (seeded choice).
    seed
        Seed of the split and the partition (kept apart from ``fl.seed``).
    gen_max_new_tokens
        Generation budget of the gsm8k evaluation (and of ``exact_match``).
    test_dataset
        Your own held-out set: a file or folder (the same columns as ``dataset``), or for an ``hf:`` dataset
        a split name such as ``test``; ``test_examples`` of it are used (a seeded choice), or all if fewer.
        ``None``: a seeded split of ``dataset``.
    text_field, label_field
        Columns of a classification dataset: the input text and the label (strings or numbers; the label
        names are the sorted distinct values, numbers in numeric order). Set both.
    prompt_field, response_field
        Columns of an instruction-tuning dataset: the prompt and the response. The model sees the prompt,
        a newline (unless the prompt ends with white space) and the response; a prompt that leaves no room
        for the response within ``model.max_length`` is an error, a long response is cut. Set both.
    label_words
        The verbalizer's words (``model.classifier = "verbalizer"``), one per label in label-name order,
        each a single token of the model's tokenizer (a leading space is added where missing); ``None``:
        the built-in datasets' words, or your own label names.
    group_field
        A column of your own data whose values the ``dirichlet`` partition skews instead of the labels
        (e.g. a topic or a source per example).
    exact_match
        Instruction tuning only: also generate greedily (``gen_max_new_tokens``) and report
        ``exact_match`` against the reference response (up to white space). Slow; meant for short answers.
    """

    dataset: str = setting(
        "rotten_tomatoes",
        allowed=f"`{'`, `'.join(DATASETS)}`, a `.jsonl`/`.json`/`.csv`/`.parquet` file or folder, "
        "`hf:NAME[:CONFIG]`",
    )
    num_clients: int = setting(20, range=POSITIVE)
    partition: str = setting("dirichlet", choices=PARTITIONS)
    alpha: float = setting(0.5, range=POSITIVE)
    max_train_examples: int | None = setting(None, range=POSITIVE)
    test_examples: int = setting(500, range=POSITIVE)
    seed: int = 0
    gen_max_new_tokens: int = setting(128, range=POSITIVE)
    test_dataset: str | None = None
    text_field: str | None = None
    label_field: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    label_words: tuple[str, ...] | None = None
    group_field: str | None = None
    exact_match: bool = False

    def __post_init__(self) -> None:
        validate(self, "data")
        check_data_config(self)


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
    lr: float = setting(5e-3, range=POSITIVE)
    weight_decay: float = setting(0.02, range=Range(0))
    amsgrad: bool = True
    optimizer: str = setting("adam", choices=tuple(OPTIMIZERS))
    max_steps: int | None = setting(40, range=POSITIVE)
    head_lr: float | None = setting(None, range=POSITIVE)
    logit_adjust: float = setting(1.0, range=Range(0, note=" (0 turns it off)"))

    def __post_init__(self) -> None:
        validate(self, "train")


def is_causal(model: ModelConfig) -> bool:
    """Whether ``model`` is a causal LM (what gsm8k and the verbalizer need), by its resolved kind
    (:func:`fedsqueeze.models.registry.resolve_kind`: a built-in's own, else ``model.kind`` or ``auto``'s
    reading of ``config.json``). The toy workload is not."""
    return model.name != TOY and resolve_kind(model.name, model.kind) == "causal-lm"


def check_classifier(model: ModelConfig, data: DataConfig) -> None:
    """:class:`~fedsqueeze.ConfigError` when ``model.classifier`` does not fit ``data.dataset`` (the rule
    that spans two sections; ``RunConfig`` and ``build_workload`` both call it)."""
    if model.classifier != "verbalizer":
        if data.label_words is not None:
            raise ConfigError(
                "data.label_words are the verbalizer's words: set model.classifier = 'verbalizer'"
            )
        return
    builtin = data.dataset in BUILTIN_DATASETS
    if (builtin and data.dataset not in VERBALIZERS) or data.prompt_field is not None:
        raise ConfigError(
            f"model.classifier = 'verbalizer' needs a classification dataset ({', '.join(VERBALIZERS)} or "
            f"your own with data.text_field + data.label_field), not {data.dataset!r}"
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
