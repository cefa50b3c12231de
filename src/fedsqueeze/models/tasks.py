"""What a workload trains and measures: sequence classification, gsm8k answer generation, instruction tuning.

A task holds the tokenised training pool and held-out set; it turns index lists into batches, computes
the training loss and evaluates a model. It knows nothing about clients or LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.functional import cross_entropy

from ..data import metrics
from ..data.text import (
    IGNORE_INDEX,
    collate_causal,
    collate_classification,
    collate_prompts,
)
from ..errors import ConfigError
from .training import log_label_prior

__all__ = ["ClassificationTask", "GenerationTask", "SFTTask", "VerbalizerTask", "to_device"]


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor on ``device`` (a no-op on the CPU)."""
    return {k: v.to(device) for k, v in batch.items()}


def _by_length(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    # Evaluation order does not change the metrics; sorting by length cuts padding (and time) a lot.
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class ClassificationTask:
    """Sequence classification; metrics ``accuracy`` (main), ``macro_f1``, ``eval_loss``."""

    metric_name = "accuracy"
    metric_higher_is_better = True

    def __init__(
        self,
        train_ids: list[list[int]],
        train_labels: Sequence[int],
        test_ids: list[list[int]],
        test_labels: Sequence[int],
        *,
        num_classes: int,
        pad_id: int,
        eval_batch_size: int = 128,
    ) -> None:
        self.train_ids = train_ids
        self.train_labels = np.asarray(train_labels, dtype=np.int64)
        self.test_ids = test_ids
        self.test_labels = np.asarray(test_labels, dtype=np.int64)
        self.num_classes = num_classes
        self.pad_id = pad_id
        self.eval_batch_size = eval_batch_size
        self.device: torch.device | str = "cpu"  # where evaluation batches go (set by the workload)

    @property
    def num_train(self) -> int:
        return len(self.train_ids)

    @property
    def num_test(self) -> int:
        return len(self.test_ids)

    def collate(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> dict[str, torch.Tensor]:
        """A batch of ``ids`` with their ``labels`` (right-padded)."""
        return collate_classification(ids, labels, self.pad_id)

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``[batch, num_classes]`` float32 class logits of ``batch``."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def train_batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.collate([self.train_ids[i] for i in idx], self.train_labels[list(idx)].tolist())

    def test_batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.collate([self.test_ids[i] for i in idx], self.test_labels[list(idx)].tolist())

    def log_prior(self, idx: Sequence[int]) -> torch.Tensor:
        """``log π`` of the labels of training examples ``idx``, add-one smoothed (never ``-inf``)."""
        labels = torch.as_tensor(self.train_labels[np.asarray(idx, dtype=np.int64)])
        return log_label_prior(labels, self.num_classes)

    def loss(
        self, model: Any, batch: dict[str, torch.Tensor], logit_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy of the batch; ``logit_bias`` (``[num_classes]``) is added to the logits first."""
        logits = self.logits(model, batch)
        if logit_bias is not None:
            logits = logits + logit_bias.to(logits.device)
        return cross_entropy(logits, batch["labels"])

    @torch.no_grad()
    def evaluate(self, model: Any) -> dict[str, float]:
        preds = np.zeros(self.num_test, dtype=np.int64)
        loss_sum = 0.0
        for idx in _by_length([len(x) for x in self.test_ids], self.eval_batch_size):
            batch = self.test_batch(idx.tolist())
            logits = self.logits(model, to_device(batch, self.device))
            loss_sum += float(cross_entropy(logits, batch["labels"].to(logits.device), reduction="sum"))
            preds[idx] = logits.argmax(-1).cpu().numpy()
        return {
            "accuracy": metrics.accuracy(preds, self.test_labels),
            "macro_f1": metrics.macro_f1(preds, self.test_labels, self.num_classes),
            "eval_loss": loss_sum / max(self.num_test, 1),
        }


class VerbalizerTask(ClassificationTask):
    """Classification by a causal LM's next token: the class logits are the LM's logits of the label words
    at the last prompt position (:mod:`fedsqueeze.data.verbalize`); same metrics as
    :class:`ClassificationTask`.

    The training loss (:meth:`ClassificationTask.loss`) is thus the cross-entropy over the label-word logits
    only, a softmax restricted to the ``num_classes`` label tokens, and not the full-vocabulary next-token
    cross-entropy: it is the quantity the accuracy's argmax reads, spends no gradient on pushing down the
    other ~49k tokens, and lets ``train.logit_adjust`` (FedLC) shift class logits as for a head.

    Prompts are left-padded with position ids counted over the real tokens (as ``generate`` does), so the
    last position of every row is its last prompt token and the LM head runs at that position only
    (``logits_to_keep=1``).
    """

    def __init__(self, *args: Any, label_ids: Sequence[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(label_ids) != self.num_classes:
            raise ConfigError(f"{len(label_ids)} label tokens for {self.num_classes} classes")
        self.label_ids = torch.as_tensor(list(label_ids), dtype=torch.long)
        # Set by the workload when LoRA sits on the top layers only (model.lora_layers): the frozen
        # bottom layers then run once per example (fedsqueeze.models.layer_cache).
        self.layer_cache: Any = None

    # Example keys of the layer cache: training example i is i, held-out example i is -(i + 1).
    def train_batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().train_batch(idx)
        batch["example_key"] = torch.as_tensor(list(idx), dtype=torch.long)
        return batch

    def test_batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().test_batch(idx)
        batch["example_key"] = -1 - torch.as_tensor(list(idx), dtype=torch.long)
        return batch

    def collate(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> dict[str, torch.Tensor]:
        """Left-padded prompts with ``position_ids`` (0 at each row's first real token) and ``labels``."""
        batch = collate_prompts(ids, self.pad_id)
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        return batch

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.layer_cache is not None and "example_key" in batch:
            keys = batch["example_key"].tolist()
            return self.layer_cache.label_logits(batch, keys, self.label_ids)
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()[:, self.label_ids.to(out.logits.device)]


class GenerationTask:
    """gsm8k: causal-LM training on answer tokens; metrics ``exact_match`` (main) and ``eval_loss``.

    ``exact_match`` compares the final number of a greedy, batched generation (at most ``max_new_tokens``
    new tokens) with the reference ``#### N``. ``eval_loss`` is the teacher-forced loss per answer token.
    """

    metric_name = "exact_match"
    metric_higher_is_better = True

    def __init__(
        self,
        train_ids: list[list[int]],
        train_labels: list[list[int]],
        test_ids: list[list[int]],
        test_labels: list[list[int]],
        test_prompts: list[list[int]],
        test_answers: Sequence[str],
        *,
        tokenizer: Any,
        max_new_tokens: int,
        eval_batch_size: int = 16,
    ) -> None:
        self.train_ids, self.train_labels = train_ids, train_labels
        self.test_ids, self.test_labels = test_ids, test_labels
        self.test_prompts = test_prompts
        self.test_answers = list(test_answers)
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.max_new_tokens = max_new_tokens
        self.eval_batch_size = eval_batch_size
        self.last_generations: list[str] = []  # kept for inspection / debugging
        self.device: torch.device | str = "cpu"  # where evaluation batches go (set by the workload)
        # Set by the workload when LoRA sits on the top layers only (model.lora_layers): the frozen bottom
        # layers then run once per example and the LM head only at answer tokens (models.layer_cache).
        self.layer_cache: Any = None

    @property
    def num_train(self) -> int:
        return len(self.train_ids)

    @property
    def num_test(self) -> int:
        return len(self.test_prompts)

    # Example keys of the layer cache, as for VerbalizerTask: training example i is i, held-out i is -(i + 1).
    def train_batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = collate_causal(
            [self.train_ids[i] for i in idx], [self.train_labels[i] for i in idx], self.pad_id
        )
        batch["example_key"] = torch.as_tensor(list(idx), dtype=torch.long)
        return batch

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.layer_cache is not None and "example_key" in batch:
            keys = batch["example_key"].tolist()
            return self.layer_cache.token_loss(batch, keys, ignore_index=IGNORE_INDEX, reduction="mean")[0]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        return cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )

    @torch.no_grad()
    def evaluate(self, model: Any) -> dict[str, float]:
        eval_loss = self.heldout_loss(model)
        gens = self.generate(model)
        return {
            "exact_match": metrics.gsm8k_exact_match(gens, self.test_answers),
            "eval_loss": eval_loss,
        }

    @torch.no_grad()
    def heldout_loss(self, model: Any) -> float:
        """Teacher-forced cross-entropy per answer token over the held-out set."""
        loss_sum, tokens = 0.0, 0
        for idx in _by_length([len(x) for x in self.test_ids], self.eval_batch_size):
            batch = collate_causal(
                [self.test_ids[i] for i in idx], [self.test_labels[i] for i in idx], self.pad_id
            )
            batch = to_device(batch, self.device)
            if self.layer_cache is not None:
                keys = [-1 - int(i) for i in idx]
                part, count = self.layer_cache.token_loss(
                    batch, keys, ignore_index=IGNORE_INDEX, reduction="sum"
                )
                loss_sum, tokens = loss_sum + float(part), tokens + count
                continue
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:].reshape(-1)
            loss_sum += float(
                cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                    labels,
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            tokens += int((labels != IGNORE_INDEX).sum())
        return loss_sum / max(tokens, 1)

    @torch.no_grad()
    def generate(self, model: Any) -> list[str]:
        """Greedy, batched generations (at most ``max_new_tokens``) of the held-out prompts, decoded."""
        from .loading import quiet_transformers

        gens = [""] * self.num_test
        for idx in _by_length([len(x) for x in self.test_prompts], self.eval_batch_size):
            batch = to_device(collate_prompts([self.test_prompts[i] for i in idx], self.pad_id), self.device)
            with quiet_transformers():
                out = model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)
            for j, text in zip(idx, texts, strict=True):
                gens[j] = text
        self.last_generations = gens
        return gens


class SFTTask(GenerationTask):
    """Instruction tuning on your own data: the loss on response tokens only, as for gsm8k.

    The main metric is ``eval_loss``, the held-out cross-entropy per response token (lower is better),
    with ``perplexity`` (its exponential) beside it. With ``exact_match=True`` the evaluation also
    generates greedily and adds ``exact_match``: the fraction of generations equal to the reference
    response up to white space (meant for short answers; generation is the slow part of an evaluation).
    """

    metric_name = "eval_loss"
    metric_higher_is_better = False

    def __init__(self, *args: Any, exact_match: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exact_match = exact_match

    @torch.no_grad()
    def evaluate(self, model: Any) -> dict[str, float]:
        eval_loss = self.heldout_loss(model)
        out = {"eval_loss": eval_loss, "perplexity": math.exp(eval_loss) if eval_loss < 700 else math.inf}
        if self.exact_match:
            out["exact_match"] = metrics.exact_match(self.generate(model), self.test_answers)
        return out
