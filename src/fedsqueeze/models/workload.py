"""``build_workload``: a real model + dataset + partition behind the :class:`~fedsqueeze.fl.workload.Workload`
protocol.

One PEFT model is kept in memory; each ``train_client`` / ``evaluate`` call loads the given ``(lora, head)``
tensors into it. Randomness is isolated: training forks the global torch RNG (dropout) and shuffles with
its own ``torch.Generator``, so the caller's RNG streams are untouched and results depend only on inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._host import cpu_count
from ..config import DataConfig, LocalTrainConfig, ModelConfig, check_classifier, is_causal
from ..data.own import load_data
from ..data.partition import given_test_split, partition
from ..data.sft import encode_sft, sft_references
from ..data.sources import RawDataset
from ..data.text import encode_causal, encode_prompt, encode_texts
from ..data.verbalize import encode_verbalized, label_token_ids, verbalizer_for
from ..errors import ConfigError
from ..spec import UpdateSpec
from .layer_cache import LayerCache
from .loading import check_dtype, load_base_model, load_tokenizer, require_llm
from .lora import apply_lora, freeze_lora_a, read_tensors, split_trainable, stable_name, write_tensors
from .tasks import ClassificationTask, GenerationTask, SFTTask, VerbalizerTask, to_device
from .training import make_optimizer

__all__ = ["PeftWorkload", "build_workload", "configure_threads"]

_SEED_MASK = (1 << 63) - 1


def configure_threads() -> int:
    """Use the CPUs this process may run on, unless ``OMP_NUM_THREADS`` or ``FEDSQUEEZE_THREADS`` is set.

    (``torch``'s default counts the host's cores, which oversubscribes a container limited to 2.)
    """
    env = os.environ.get("FEDSQUEEZE_THREADS")
    if env:
        torch.set_num_threads(max(1, int(env)))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cpu_count())))
    return torch.get_num_threads()


def _derive_seeds(seed: int, client: int) -> tuple[int, int]:
    # Two independent 63-bit streams (shuffling, dropout) from the loop's seed and the client id.
    a, b = np.random.SeedSequence([seed & _SEED_MASK, client & _SEED_MASK, 0xF5]).generate_state(2, np.uint64)
    return int(a) & _SEED_MASK, int(b) & _SEED_MASK


class PeftWorkload:
    """A PEFT model, a task and a client partition; implements the ``Workload`` protocol.

    Attributes
    ----------
    lora_spec, head_spec
        Specs of the LoRA tensors and of the other trainable tensors (classifier head; empty for LMs).
        With ``model.lora_train = "b"`` the LoRA tensors are the ``B`` factors only.
    frozen_lora
        The LoRA tensors frozen at their seeded initialisation (``A`` with ``model.lora_train = "b"``; else
        empty): part of the model and of the saved adapter, never trained nor sent.
    metric_name
        ``"accuracy"`` (classification), ``"exact_match"`` (gsm8k) or ``"eval_loss"`` (instruction tuning).
    metric_higher_is_better
        Whether a larger ``metric_name`` is better (``False`` for a loss); the task's own declaration.
    info
        Plain facts for logs: model, dataset, sizes.
    """

    def __init__(
        self,
        model: Any,
        task: Any,
        parts: list[np.ndarray],
        info: dict[str, Any],
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.task = task
        task.device = self.device
        self.parts = parts
        self._lora_params, self._head_params = split_trainable(model)
        frozen = {n: p for n, p in model.named_parameters() if ".lora_" in n and not p.requires_grad}
        self.frozen_lora = read_tensors({stable_name(n): p for n, p in frozen.items()})
        self.lora_spec = UpdateSpec.from_tensors(self._lora_params)
        self.head_spec = UpdateSpec.from_tensors(self._head_params)
        self.metric_name: str = task.metric_name
        self.metric_higher_is_better: bool = getattr(task, "metric_higher_is_better", True)
        self._init = (read_tensors(self._lora_params), read_tensors(self._head_params))
        self.info = {
            **info,
            "lora_numel": self.lora_spec.numel,
            "head_numel": self.head_spec.numel,
            "lora_frozen_numel": sum(t.numel() for t in self.frozen_lora.values()),
            "num_train": task.num_train,
            "num_test": task.num_test,
        }

    # -- protocol -----------------------------------------------------------------------------------
    def num_clients(self) -> int:
        return len(self.parts)

    def client_num_examples(self, client: int) -> int:
        return len(self.parts[client])

    def initial_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copies of the LoRA and head tensors the model was built with (deterministic from the seed)."""
        return (
            {k: v.clone() for k, v in self._init[0].items()},
            {k: v.clone() for k, v in self._init[1].items()},
        )

    def load(self, lora: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]) -> None:
        """Copy ``(lora, head)`` into the model (the inputs are not kept or modified)."""
        write_tensors(self._lora_params, lora)
        write_tensors(self._head_params, head)

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
        """Local training of ``client``: Adam (``amsgrad`` per ``cfg``) over its shard, shuffled each epoch.

        Stops after ``cfg.epochs`` epochs or ``cfg.max_steps`` optimizer steps, whichever comes first.
        With ``train_head=False`` the head takes no gradient and comes back unchanged. Returns the new
        ``(lora, head)`` and the mean training loss over the steps taken.
        """
        if not 0 <= client < len(self.parts):
            raise ConfigError(f"client {client} out of range (0..{len(self.parts) - 1})")
        shard = torch.as_tensor(self.parts[client], dtype=torch.long)
        shuffle_seed, dropout_seed = _derive_seeds(seed, client)
        gen = torch.Generator().manual_seed(shuffle_seed)
        self.load(lora, head)
        groups: list[dict[str, Any]] = [{"params": list(self._lora_params.values())}]
        for p in self._head_params.values():
            p.requires_grad_(train_head)  # a fixed head takes no gradient (nor the time to compute it)
        if self._head_params and train_head:
            groups.append({"params": list(self._head_params.values()), "lr": cfg.head_lr or cfg.lr})
        opt = make_optimizer(groups, cfg)
        loss_kwargs: dict[str, torch.Tensor] = {}
        # FedLC's label-skew correction needs classes: tasks without them (SFT, gsm8k) train unadjusted.
        if cfg.logit_adjust > 0 and hasattr(self.task, "log_prior"):
            loss_kwargs["logit_bias"] = cfg.logit_adjust * self.task.log_prior(self.parts[client])
        losses: list[float] = []
        # Dropout draws from the model's device RNG: fork (and seed) that one too when it is a GPU.
        gpus = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed(dropout_seed)
            self.model.train()
            try:
                for _epoch in range(cfg.epochs):
                    order = shard[torch.randperm(len(shard), generator=gen)].tolist()
                    for start in range(0, len(order), cfg.batch_size):
                        if cfg.max_steps is not None and len(losses) >= cfg.max_steps:
                            break
                        batch = to_device(
                            self.task.train_batch(order[start : start + cfg.batch_size]), self.device
                        )
                        opt.zero_grad(set_to_none=True)
                        loss = self.task.loss(self.model, batch, **loss_kwargs)
                        loss.backward()
                        opt.step()
                        losses.append(float(loss.detach()))
            finally:
                self.model.eval()
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        return read_tensors(self._lora_params), read_tensors(self._head_params), mean_loss

    def evaluate(self, lora: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out metrics of the model with ``(lora, head)`` loaded."""
        self.load(lora, head)
        self.model.eval()
        return self.task.evaluate(self.model)

    def save_adapter(
        self, lora: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], path: str | Path
    ) -> None:
        """Write ``(lora, head)`` as a PEFT adapter folder (``adapter_model.safetensors`` +
        ``adapter_config.json``; the head is PEFT's ``modules_to_save``) via ``save_pretrained``. The
        frozen LoRA tensors (:attr:`frozen_lora`) are written too, at their seeded values."""
        self.load(lora, head)
        self.model.save_pretrained(str(path))


def _split(raw: RawDataset, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training pool and held-out indices: a seeded split, or the given held-out rows (``test_dataset``)."""
    return given_test_split(
        len(raw), raw.test_rows, data.test_examples, seed=data.seed, max_train=data.max_train_examples
    )


def _skewed(raw: RawDataset, train: np.ndarray, labels: np.ndarray | None) -> np.ndarray | None:
    """What a Dirichlet partition skews: ``group_field`` values if set, else ``labels`` (``None``: sizes)."""
    if raw.groups is None:
        return labels
    return np.unique(np.asarray(raw.groups)[train], return_inverse=True)[1]


def _classification_task(
    raw: RawDataset, tok: Any, data: DataConfig, max_length: int, *, verbalizer: bool = False
) -> tuple[ClassificationTask, list]:
    train, test = _split(raw, data)
    labels = np.asarray(raw.labels, dtype=np.int64)
    texts = raw.texts
    kwargs: dict[str, Any] = {}
    if verbalizer:
        verb = verbalizer_for(data.dataset, raw.label_names, data.label_words)
        kwargs["label_ids"] = label_token_ids(tok, verb)

        def encode(idx: np.ndarray) -> list[list[int]]:
            return encode_verbalized(tok, [texts[i] for i in idx], verb, max_length)
    else:

        def encode(idx: np.ndarray) -> list[list[int]]:
            return encode_texts(tok, [texts[i] for i in idx], max_length)

    task = (VerbalizerTask if verbalizer else ClassificationTask)(
        encode(train),
        labels[train],
        encode(test),
        labels[test],
        num_classes=len(raw.label_names),
        pad_id=int(tok.pad_token_id),
        **kwargs,
    )
    parts = partition(
        len(train),
        data.num_clients,
        data.partition,
        labels=_skewed(raw, train, labels[train]),
        alpha=data.alpha,
        seed=data.seed,
    )
    return task, parts


def _generation_task(
    raw: RawDataset, tok: Any, data: DataConfig, max_length: int, *, verbalizer: bool = False
) -> tuple[GenerationTask, list]:
    train, test = _split(raw, data)
    q, a = raw.texts, raw.answers
    if a is None:
        raise ConfigError(f"dataset {raw.name!r} has no answers, which a generation task trains on")

    def pairs(idx: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
        enc = [encode_causal(tok, q[i], a[i], max_length) for i in idx]
        return [e[0] for e in enc], [e[1] for e in enc]

    train_ids, train_labels = pairs(train)
    test_ids, test_labels = pairs(test)
    task = GenerationTask(
        train_ids,
        train_labels,
        test_ids,
        test_labels,
        [encode_prompt(tok, q[i], max_length) for i in test],
        [a[i] for i in test],
        tokenizer=tok,
        max_new_tokens=data.gen_max_new_tokens,
    )
    # gsm8k has no labels: "dirichlet" becomes a quantity skew (client sizes ~ Dir(alpha)).
    parts = partition(
        len(train), data.num_clients, data.partition, labels=None, alpha=data.alpha, seed=data.seed
    )
    return task, parts


def _sft_task(
    raw: RawDataset, tok: Any, data: DataConfig, max_length: int, *, verbalizer: bool = False
) -> tuple[SFTTask, list]:
    train, test = _split(raw, data)
    train_ids, train_labels, _ = encode_sft(tok, raw, train.tolist(), max_length)
    test_ids, test_labels, test_prompts = encode_sft(tok, raw, test.tolist(), max_length)
    task = SFTTask(
        train_ids,
        train_labels,
        test_ids,
        test_labels,
        test_prompts,
        sft_references(raw, test.tolist()),
        tokenizer=tok,
        max_new_tokens=data.gen_max_new_tokens,
        exact_match=data.exact_match,
    )
    # Without data.group_field, "dirichlet" is a quantity skew (client sizes ~ Dir(alpha)), as for gsm8k.
    parts = partition(
        len(train),
        data.num_clients,
        data.partition,
        labels=_skewed(raw, train, None),
        alpha=data.alpha,
        seed=data.seed,
    )
    return task, parts


#: Task builders by :data:`fedsqueeze.data.sources.TASK_KINDS` kind: ``(raw, tokenizer, data, max_length,
#: verbalizer=...) -> (task, client index arrays)``.
TASK_BUILDERS: dict[str, Callable[..., tuple[Any, list]]] = {
    "classification": _classification_task,
    "generation": _generation_task,
    "sft": _sft_task,
}


def build_workload(model: ModelConfig, data: DataConfig, *, seed: int) -> PeftWorkload:
    """Load ``model`` with a fresh LoRA adapter, tokenise ``data``, split and partition it.

    Parameters
    ----------
    model, data
        What to build. gsm8k needs a causal model (``smollm2-135m`` or ``tiny-llama``), and so does
        ``model.classifier = "verbalizer"`` (which also needs a classification dataset); the verbalizer
        builds a causal LM with LoRA only (empty ``head_spec``).
    seed
        Seeds the random parts of the model (LoRA ``A``, classifier head, tiny models' weights), so
        :meth:`PeftWorkload.initial_params` is a function of it, and so is the frozen ``A`` of
        ``model.lora_train = "b"``, which every client and the server build alike. The split and partition
        use ``data.seed``.

    Raises
    ------
    ConfigError
        For an impossible combination (an encoder on gsm8k, too few examples for the clients, ...).
    MissingExtraError
        ``fedsqueeze[llm]`` is not installed (checked before any data or model loads).
    """
    check_classifier(model, data)
    require_llm(model.name)
    check_dtype(model.dtype, _resolve_device(model.device))
    causal = is_causal(model)  # resolves model.kind (one-line error if it contradicts) before data loads
    configure_threads()
    raw = load_data(data)
    generation = not raw.is_classification  # gsm8k or instruction tuning: a causal LM's tokens
    verbalizer = model.classifier == "verbalizer"
    if verbalizer and generation:
        raise ConfigError(
            f"model.classifier = 'verbalizer' needs a classification dataset; {data.dataset!r} is "
            "instruction-tuning data (map data.text_field + data.label_field for classification)"
        )
    if generation and not causal:
        raise ConfigError(
            f"{data.dataset} needs a causal LM: set model.name to smollm2-135m, tiny-llama or a causal LM "
            "directory"
        )
    tok = load_tokenizer(model.name)
    task, parts = TASK_BUILDERS[raw.kind](raw, tok, data, model.max_length, verbalizer=verbalizer)
    head = not (generation or verbalizer)  # a new classifier head (trained as PEFT's modules_to_save)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed & _SEED_MASK)
        base = load_base_model(
            model.name,
            tok,
            num_labels=len(raw.label_names) if head else None,
            num_layers=model.num_layers,
            pooling=model.pooling,
            kind=model.kind,
            dtype=model.dtype,
        )
        layers = _lora_layers(base, model.lora_layers)
        peft_model = apply_lora(
            base,
            model.name,
            r=model.lora_r,
            alpha=model.lora_alpha,
            dropout=model.lora_dropout,
            target_modules=model.target_modules,
            classification=head,
            layers=layers,
        )
        if model.lora_train == "b":  # FFA-LoRA: A keeps the seeded values every client draws alike
            freeze_lora_a(peft_model)
    peft_model.eval()
    if layers is not None and layers[0] > 0 and (verbalizer or generation) and model.layer_cache_mb > 0:
        task.layer_cache = LayerCache(peft_model, layers[0], max_bytes=model.layer_cache_mb << 20)
    device = _resolve_device(model.device)
    info = {
        "model": model.name,
        "classifier": "none" if generation else model.classifier,
        "dataset": data.dataset,
        "num_clients": data.num_clients,
        "device": str(device),
    }
    return PeftWorkload(peft_model, task, parts, info, device=device)


def _lora_layers(base: Any, top: int | None) -> list[int] | None:
    """Indices of the top ``top`` transformer layers of ``base`` (``None``: LoRA on every layer)."""
    if top is None:
        return None
    total = int(base.config.num_hidden_layers)
    if top > total:
        raise ConfigError(f"model.lora_layers = {top} but the model has only {total} layers")
    return list(range(total - top, total))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device = 'cuda' but torch sees no GPU; use model.device = 'cpu' or 'auto'")
    return torch.device(name)
