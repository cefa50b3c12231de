"""Verbalizers: classification as the next token of a causal LM, with no new head.

For ``model.classifier = "verbalizer"`` each example becomes a prompt, ``prefix + text + question``, and its
label is the next token, one of the dataset's label words (one word per class, each a single token of the
model's tokenizer, all distinct). The predicted class is the argmax of the LM's logits over the label words
at the last prompt position: one forward pass, no generation. Only the text is truncated; the question is
always kept whole, so the prompt always ends where the label word follows.

Tokenizers are duck-typed: only ``tokenizer(text, add_special_tokens=False)["input_ids"]`` is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError

__all__ = ["VERBALIZERS", "Verbalizer", "encode_verbalized", "label_token_ids", "verbalizer_for"]


@dataclass(frozen=True)
class Verbalizer:
    """How one dataset is asked as a question.

    Attributes
    ----------
    prefix, question
        The prompt is ``prefix + text + question``; ``question`` ends where the label word follows.
    labels
        The dataset's label names (``RawDataset.label_names``), in label-id order: what ``words`` stand for.
    words
        One label word per label, in the same order, each with its leading space (`` positive``).
    """

    prefix: str
    question: str
    labels: tuple[str, ...]
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.words) != len(self.labels):
            raise ConfigError(f"{len(self.words)} label words for {len(self.labels)} labels")


VERBALIZERS: dict[str, Verbalizer] = {
    "rotten_tomatoes": Verbalizer(
        prefix="Review: ",
        question="\nIs this review positive or negative? Answer:",
        labels=("rotten", "fresh"),
        words=(" negative", " positive"),
    ),
    "bbc_news": Verbalizer(
        prefix="Article: ",
        question="\nIs this article about business, entertainment, politics, sports or technology? Answer:",
        labels=("business", "entertainment", "politics", "sports", "tech"),
        words=(" business", " entertainment", " politics", " sports", " technology"),
    ),
}


def _spaced(words: Sequence[str]) -> tuple[str, ...]:
    # The prompt ends with ":" and the label word follows as the next word: it starts with a space.
    return tuple(w if w[:1].isspace() else " " + w for w in words)


def verbalizer_for(
    dataset: str, label_names: Sequence[str], words: Sequence[str] | None = None
) -> Verbalizer:
    """The verbalizer of ``dataset``: the built-in one from :data:`VERBALIZERS`, or one for your own labels.

    Parameters
    ----------
    dataset
        ``data.dataset``: a key of :data:`VERBALIZERS`, or your own data (any other name).
    label_names
        The dataset's label names in label order.
    words
        ``data.label_words``: one word per label, in label order (a leading space is added where missing);
        ``None``: the built-in words, or for your own data the label names themselves.

    Your own data is asked as ``Text: <text>`` and ``Answer (<word>, <word>, ...):``.
    """
    labels = tuple(label_names)
    if words is not None and len(words) != len(labels):
        raise ConfigError(
            f"data.label_words has {len(words)} words for {len(labels)} labels ({', '.join(labels)}); "
            "give one word per label, in that order"
        )
    base = VERBALIZERS.get(dataset)
    if base is not None:
        if labels != base.labels:
            raise ConfigError(f"{dataset}: labels {labels}, verbalizer labels {base.labels}")
        return base if words is None else replace(base, words=_spaced(words))
    chosen = _spaced(labels if words is None else words)
    question = "\nAnswer (" + ", ".join(w.strip() for w in chosen) + "):"
    return Verbalizer(prefix="Text: ", question=question, labels=labels, words=chosen)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_token_ids(tokenizer: Any, verbalizer: Verbalizer) -> list[int]:
    """The token id of each label word; :class:`~fedsqueeze.ConfigError` unless each is one distinct token."""
    out: list[int] = []
    for word in verbalizer.words:
        ids = _ids(tokenizer, word)
        if len(ids) != 1:
            raise ConfigError(
                f"label word {word!r} is {len(ids)} tokens for this tokenizer; it must be one "
                "(choose another in data.label_words)"
            )
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise ConfigError(f"label words {verbalizer.words} do not map to distinct tokens")
    return out


def encode_verbalized(
    tokenizer: Any, texts: Sequence[str], verbalizer: Verbalizer, max_length: int
) -> list[list[int]]:
    """Prompt ids ``prefix + text + question`` per text, at most ``max_length`` tokens (the text is cut).

    The pieces are tokenised apart and joined, so truncation never cuts into the question. No special tokens
    (SmolLM2's tokenizer adds none either).
    """
    question = _ids(tokenizer, verbalizer.question)
    room = max_length - len(question)
    if room < 1:
        raise ConfigError(
            f"model.max_length = {max_length} leaves no room for the text: the question alone is "
            f"{len(question)} tokens"
        )
    return [_ids(tokenizer, verbalizer.prefix + text)[:room] + question for text in texts]
