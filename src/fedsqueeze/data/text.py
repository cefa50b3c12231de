"""Tokenisation and collation: classification batches and chat-formatted causal-LM batches for gsm8k.

Examples are tokenised once (lists of token ids); batches are padded to their longest member. Tokenizers
are duck-typed (anything with ``__call__``, ``pad_token_id`` and, for gsm8k, ``apply_chat_template``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "GSM8K_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "clean_gsm8k_answer",
    "collate_causal",
    "collate_classification",
    "collate_prompts",
    "encode_causal",
    "encode_prompt",
    "encode_texts",
]

IGNORE_INDEX = -100  # label value the loss skips (prompt and padding tokens)

# Short on purpose: the default SmolLM2 system prompt costs ~20 tokens of every sequence.
GSM8K_SYSTEM_PROMPT = "Solve the math problem step by step. End with '#### <number>'."

_CALC = re.compile(r"<<[^>]*>>")


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (with the model's special tokens), truncated to ``max_length``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def collate_classification(
    ids: Sequence[Sequence[int]], labels: Sequence[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad ``ids`` to the longest; returns ``input_ids``, ``attention_mask``, ``labels``."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": torch.as_tensor(labels, dtype=torch.long),
    }


def clean_gsm8k_answer(answer: str) -> str:
    """A GSM8K solution without its calculator annotations ``<<3*4=12>>`` (kept: the ``#### N`` line)."""
    return _CALC.sub("", answer).strip()


def _prompt_text(tokenizer: Any, question: str) -> str:
    messages = [
        {"role": "system", "content": GSM8K_SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, question: str, max_length: int) -> list[int]:
    """Chat-formatted prompt ids ending with the assistant header; the *start* is cut if too long."""
    ids = list(tokenizer(_prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"])
    return ids[-max_length:]


def encode_causal(tokenizer: Any, question: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """Ids and labels of ``prompt + answer + <eos>``; labels are ``IGNORE_INDEX`` on the prompt.

    The loss is on the answer tokens only. Sequences longer than ``max_length`` lose the start of the
    prompt first (keeping at least half of ``max_length`` for the answer), then the end of the answer.
    """
    prompt = list(tokenizer(_prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"])
    target = list(tokenizer(clean_gsm8k_answer(answer), add_special_tokens=False)["input_ids"])
    target.append(int(tokenizer.eos_token_id))
    if len(prompt) + len(target) > max_length:
        keep_prompt = max(max_length - len(target), max_length // 2)
        prompt = prompt[-keep_prompt:] if keep_prompt > 0 else []
        target = target[: max_length - len(prompt)]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def collate_causal(
    ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad causal-LM examples; padded label positions are ``IGNORE_INDEX``."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    lab = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
        lab[i, : len(y)] = torch.as_tensor(y, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": lab}


def collate_prompts(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation (new tokens then follow every prompt directly)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        if x:
            input_ids[i, width - len(x) :] = torch.as_tensor(x, dtype=torch.long)
            mask[i, width - len(x) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
