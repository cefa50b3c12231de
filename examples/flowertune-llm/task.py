"""Model, data and local training of the FlowerTune-shaped app: PEFT LoRA on a causal LM, GSM8K answers.

Like Flower's FlowerTune LLM template: the clients fine-tune a LoRA adapter and exchange only the adapter
(``get_peft_model_state_dict``). Unlike it, everything comes from the offline assets fedsqueeze installs, so
nothing is downloaded: the model (``FLOWERTUNE_MODEL``: ``smollm2-135m``, the full pretrained
SmolLM2-135M-Instruct with all 30 layers, the default; or ``tiny-llama``, a random 2-layer Llama with
SmolLM2's tokenizer, for a smoke run), and the GSM8K problems (a shard per node). To fit 2 CPU cores, LoRA
sits on the top ``FLOWERTUNE_LORA_LAYERS`` layers (default 4; ``0``: every layer, as FlowerTune does).
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from fedsqueeze.data.sources import load_gsm8k
from fedsqueeze.data.text import collate_causal, encode_causal
from fedsqueeze.models.loading import load_base_model, load_tokenizer

MODEL = os.environ.get("FLOWERTUNE_MODEL", "smollm2-135m")
LORA_LAYERS = int(os.environ.get("FLOWERTUNE_LORA_LAYERS", "4"))
MAX_LENGTH = 64
BATCH = 4
STEPS = 3  # local steps per round
HELD_OUT = 16  # the last GSM8K problems: the server's evaluation set


@cache
def tokenizer() -> Any:
    return load_tokenizer(MODEL)


def get_model() -> Any:
    """The base model (the same on every node: seeded) with a fresh LoRA adapter (FlowerTune's settings)."""
    torch.manual_seed(0)
    base = load_base_model(MODEL, tokenizer(), num_labels=None)
    total = base.config.num_hidden_layers
    top = range(max(total - LORA_LAYERS, 0), total) if LORA_LAYERS else None
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
        layers_to_transform=list(top) if top is not None else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a transformers deprecation inside PEFT
        return get_peft_model(base, config)


def get_parameters(model: Any) -> dict[str, torch.Tensor]:
    """The adapter only, as FlowerTune sends it."""
    return dict(get_peft_model_state_dict(model))


def set_parameters(model: Any, state: dict[str, torch.Tensor]) -> None:
    set_peft_model_state_dict(model, state)


@cache
def _examples(start: int, stop: int, step: int) -> tuple[dict[str, torch.Tensor], ...]:
    data, tok = load_gsm8k(), tokenizer()
    rows = [encode_causal(tok, data.texts[i], data.answers[i], MAX_LENGTH) for i in range(start, stop, step)]
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    return tuple(collate_causal([r[0] for r in b], [r[1] for r in b], tok.pad_token_id) for b in batches)


def train_batches(partition_id: int, num_partitions: int, server_round: int) -> list[dict[str, torch.Tensor]]:
    """This round's ``STEPS`` batches of the node's shard: GSM8K problems ``partition_id::num_partitions``
    (at most 128 of them, tokenized once per process)."""
    stop = min(len(load_gsm8k().texts) - HELD_OUT, partition_id + num_partitions * 128)
    shard = _examples(partition_id, stop, num_partitions)
    return [shard[(server_round * STEPS + i) % len(shard)] for i in range(STEPS)]


def train(model: Any, batches: list[dict[str, torch.Tensor]], lr: float) -> float:
    """``len(batches)`` AdamW steps on the adapter; returns the mean loss."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    total = 0.0
    for batch in batches:
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        total += float(loss.detach())
    return total / len(batches)


def held_out_loss(model: Any) -> float:
    """Mean loss on the last ``HELD_OUT`` GSM8K problems."""
    n = len(load_gsm8k().texts)
    model.eval()
    with torch.no_grad():
        losses = [float(model(**b).loss) for b in _examples(n - HELD_OUT, n, 1)]
    return sum(losses) / len(losses)
