"""Instruction-tuning examples as token ids: ``prompt + response``, labels on the response only.

Two formats (a :class:`~fedsqueeze.data.sources.RawDataset` of kind ``sft`` is one or the other):

- prompt / response pairs (``data.prompt_field`` + ``data.response_field``): the prompt text, a newline
  unless it ends with white space, then the response and ``<eos>``, as TRL does for non-chat data (no chat
  template, so no template's system prompt takes tokens). The prompt gets the tokenizer's special tokens
  (a BOS where the model has one).
- chats (a ``messages`` column): the tokenizer's chat template; the prompt is every turn before the last
  assistant message plus the assistant header, the response is the rest of the rendered chat (the message
  and its end-of-turn token).

The prompt is never cut: one that leaves no room for a response token within ``model.max_length`` is an
error; a long response loses its end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .sources import RawDataset
from .text import IGNORE_INDEX

__all__ = ["SFT_FORMATS", "encode_sft", "sft_references"]


def _pair_texts(tokenizer: Any, raw: RawDataset, idx: Sequence[int]) -> tuple[list[str], list[str], bool]:
    prompts = [raw.texts[i] if raw.texts[i][-1:].isspace() else raw.texts[i] + "\n" for i in idx]
    return prompts, sft_references(raw, idx), True


def _chat_texts(tokenizer: Any, raw: RawDataset, idx: Sequence[int]) -> tuple[list[str], list[str], bool]:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "a 'messages' column needs a tokenizer with a chat template, and this model's has none: "
            "map data.prompt_field and data.response_field instead"
        )
    prompts, responses = [], []
    for i in idx:
        chat = [{"role": r, "content": c} for r, c in (raw.messages or ())[i]]
        prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(chat, tokenize=False)
        if not full.startswith(prompt):  # a template that renders history differently: the message alone
            full = prompt + chat[-1]["content"] + str(tokenizer.eos_token or "")
        prompts.append(prompt)
        responses.append(full[len(prompt) :])
    return prompts, responses, False


#: How each ``sft`` format becomes ``(prompt texts, response texts, prompt gets special tokens)``.
SFT_FORMATS: dict[str, Callable[[Any, RawDataset, Sequence[int]], tuple[list[str], list[str], bool]]] = {
    "pairs": _pair_texts,
    "chat": _chat_texts,
}


def _format(raw: RawDataset) -> str:
    return "chat" if raw.messages is not None else "pairs"


def sft_references(raw: RawDataset, idx: Sequence[int]) -> list[str]:
    """The reference response of each example ``idx`` (the last assistant message of a chat)."""
    if raw.messages is not None:
        return [raw.messages[i][-1][1] for i in idx]
    return [(raw.answers or ())[i] for i in idx]


def _row_name(raw: RawDataset, i: int) -> str:
    first_test = len(raw) - raw.test_rows
    return f"row {i}" if i < first_test else f"row {i - first_test} of data.test_dataset"


def encode_sft(
    tokenizer: Any, raw: RawDataset, idx: Sequence[int], max_length: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Ids, labels and prompt ids of the examples ``idx`` of ``raw`` (kind ``sft``).

    Labels are ``IGNORE_INDEX`` on the prompt; ``<eos>`` ends a pair's response (a chat's end-of-turn
    token does that for a chat). Sequences are at most ``max_length`` tokens: the response is cut.

    Raises
    ------
    ConfigError
        When a prompt leaves no room for the response (the message gives its length and the limit).
    """
    idx = list(idx)
    if not idx:
        return [], [], []
    chat = _format(raw) == "chat"
    prompts, responses, special = SFT_FORMATS[_format(raw)](tokenizer, raw, idx)
    p_ids = [list(x) for x in tokenizer(prompts, add_special_tokens=special)["input_ids"]]
    r_ids = [list(x) for x in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    lengths = np.fromiter(map(len, p_ids), dtype=np.int64, count=len(p_ids))
    too_long = np.flatnonzero(lengths >= max_length)
    if too_long.size:
        j = int(too_long[np.argmax(lengths[too_long])])
        raise ConfigError(
            f"{too_long.size} of {len(idx)} prompts leave no room for the response within model.max_length "
            f"= {max_length} ({_row_name(raw, idx[j])}: the prompt alone is {lengths[j]} tokens); raise "
            "model.max_length or shorten the prompts"
        )
    eos = int(tokenizer.eos_token_id)
    ids, labels = [], []
    for p, r in zip(p_ids, r_ids, strict=True):
        target = (r if chat and eos in r else [*r, eos])[: max_length - len(p)]  # a chat's turn may end it
        ids.append(p + target)
        labels.append([IGNORE_INDEX] * len(p) + target)
    return ids, labels, p_ids
