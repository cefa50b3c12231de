"""Reuse the output of a causal LM's frozen bottom layers when LoRA sits on the top layers only.

With LoRA on the top ``N`` decoder layers (``model.lora_layers = N``), nothing below layer ``L - N`` ever
trains: the hidden state an example reaches there is a function of its tokens alone. :class:`LayerCache`
computes it once per example (a no-grad pass through the bottom layers) and keeps it, so every later
training step, evaluation, round and client of the same run pays only for the top ``N`` layers. A verbalizer
task then reads the label logits from the final norm and the label words' rows of the LM head at the last
position; an instruction-tuning (or gsm8k) task applies the LM head at the answer tokens only, the only
positions its loss reads.

Exactness: the top layers see the same inputs (the cached states of the real tokens, the same attention
mask and position ids) as in a full forward pass, so logits and LoRA gradients agree with the uncached
model up to float rounding (``tests/test_layer_cache.py`` checks both). Memory is bounded: states are kept
in the model's dtype, ``[tokens, hidden]`` per example, until ``max_bytes`` is reached; later examples are
computed on the fly and not stored. For SmolLM2-135M (hidden 576, float32) that is about 2.3 KB a token, so
the 8,230 rotten_tomatoes training prompts (median 36 tokens) take under 1 GB.

Across processes: with ``FEDSQUEEZE_LAYER_CACHE_DIR`` set to a folder, states are also written there, one
file per example named by a hash of the frozen layers' weights, the boundary and the example's token ids, and
read back by any later run on the same machine (the cells of a study, for instance). It is a machine-local
speed setting, not part of a run's config: a state read from disk equals the one the run would compute, up
to float rounding. Files are written atomically, so concurrent runs can share the folder.

Works with decoder stacks laid out as Llama's (``model.model.layers``, ``model.model.norm``,
``model.lm_head``; the base forward iterating ``self.layers``), which covers SmolLM2, Llama, Qwen2 and
Mistral in transformers 5.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["STORE_ENV", "LayerCache", "decoder_parts"]

STORE_ENV = "FEDSQUEEZE_LAYER_CACHE_DIR"  # a folder shared by the runs of one machine (optional)


def decoder_parts(model: Any) -> tuple[Any, Any]:
    """``(causal_lm, decoder)`` of a (PEFT-wrapped) causal LM: the ``...ForCausalLM`` and its base model.

    Raises
    ------
    ConfigError
        The model is not laid out as a Llama-style decoder stack.
    """
    lm = model
    # PeftModel -> LoraModel -> ForCausalLM
    for attr in ("base_model", "model"):
        if hasattr(lm, "peft_config") and hasattr(lm, attr):
            lm = getattr(lm, attr)
    decoder = getattr(lm, "model", None)
    if (
        decoder is None
        or not hasattr(decoder, "layers")
        or not hasattr(decoder, "norm")
        or not hasattr(lm, "lm_head")
    ):
        raise ConfigError(
            f"model.lora_layers needs a Llama-style causal LM (model.layers, model.norm, lm_head), "
            f"not {type(lm).__name__}"
        )
    return lm, decoder


class LayerCache:
    """Per-example hidden states at the boundary between frozen bottom and LoRA-carrying top layers.

    Parameters
    ----------
    model
        The PEFT-wrapped causal LM (LoRA only on layers ``boundary`` and above).
    boundary
        Index of the first layer that carries LoRA; layers ``0 .. boundary-1`` are frozen.
    max_bytes
        Bound on the memory held by cached states; beyond it, states are recomputed (or read from the
        store) each time.
    store
        A folder for states shared across processes; ``None``: ``$FEDSQUEEZE_LAYER_CACHE_DIR`` if set, else
        memory only.
    """

    def __init__(
        self, model: Any, boundary: int, *, max_bytes: int = 4 << 30, store: str | Path | None = None
    ) -> None:
        self.lm, self.decoder = decoder_parts(model)
        total = len(self.decoder.layers)
        if not 0 < boundary < total:
            raise ConfigError(f"layer cache boundary {boundary} outside 1..{total - 1}")
        self.boundary = boundary
        self.max_bytes = max_bytes
        self.bytes = 0
        self._states: dict[int, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0
        where = store if store is not None else os.environ.get(STORE_ENV) or None
        self.store = Path(where).expanduser() / self._fingerprint() if where else None

    def _fingerprint(self) -> str:
        """A hash of everything the boundary states depend on: the embedding and frozen layers' weights."""
        h = hashlib.sha256(f"boundary={self.boundary}".encode())
        modules = [self.decoder.embed_tokens, *list(self.decoder.layers)[: self.boundary]]
        for module in modules:
            for name, tensor in module.state_dict().items():
                h.update(name.encode())
                h.update(str(tensor.dtype).encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:32]

    def _path(self, ids: torch.Tensor) -> Path:
        assert self.store is not None
        digest = hashlib.sha256(ids.cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:40]
        return self.store / digest[:2] / f"{digest}.pt"

    def _read(self, ids: torch.Tensor) -> torch.Tensor | None:
        path = self._path(ids)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):  # absent, or half-written
            return None
        if not isinstance(state, torch.Tensor) or state.shape[0] != ids.shape[0]:
            return None
        return state.to(self.decoder.embed_tokens.weight.device)

    def _write(self, ids: torch.Tensor, state: torch.Tensor) -> None:
        path = self._path(ids)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(state.cpu(), f)
            os.replace(tmp, path)  # atomic: readers see the whole file or none
        except OSError:
            pass  # a full or read-only disk only costs speed

    def __len__(self) -> int:
        return len(self._states)

    @contextmanager
    def _layers(self, layers: torch.nn.ModuleList, norm: torch.nn.Module | None) -> Iterator[None]:
        # The base forward runs `self.layers[:num_hidden_layers]` then `self.norm`: swap both for the pass.
        full_layers, full_norm = self.decoder.layers, self.decoder.norm
        self.decoder.layers = layers
        if norm is not None:
            self.decoder.norm = norm
        try:
            yield
        finally:
            self.decoder.layers, self.decoder.norm = full_layers, full_norm

    @torch.no_grad()
    def _bottom(self, batch: dict[str, torch.Tensor], rows: Sequence[int]) -> list[torch.Tensor]:
        """Boundary states of ``rows`` of the batch (left- or right-padded), each ``[tokens, hidden]``."""
        ids = batch["input_ids"][rows]
        mask = batch["attention_mask"][rows]
        pos = _positions(batch)[rows]
        # Drop the columns that are padding in every selected row (rows were padded to the batch's longest);
        # padding sits on one side, so the columns kept are contiguous.
        cols = mask.bool().any(0)
        ids, mask, pos = ids[:, cols], mask[:, cols], pos[:, cols]
        bottom = torch.nn.ModuleList(list(self.decoder.layers)[: self.boundary])
        with self._layers(bottom, torch.nn.Identity()):
            out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        hidden = out.last_hidden_state
        return [hidden[i][mask[i].bool()].detach().clone() for i in range(len(rows))]

    def _keep(self, key: int, state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if self.bytes + size <= self.max_bytes:
            self._states[key] = state
            self.bytes += size

    def states(self, batch: dict[str, torch.Tensor], keys: Sequence[int]) -> torch.Tensor:
        """The left-padded ``[batch, width, hidden]`` boundary states of the batch (zeros at padding)."""
        missing = [i for i, k in enumerate(keys) if k not in self._states]
        fresh: dict[int, torch.Tensor] = {}
        if missing and self.store is not None:
            mask = batch["attention_mask"]
            for i in missing:
                state = self._read(batch["input_ids"][i][mask[i] == 1])
                if state is not None:
                    fresh[i] = state
                    self._keep(keys[i], state)
            self.disk_hits += len(fresh)
            missing = [i for i in missing if i not in fresh]
        if missing:
            self.misses += len(missing)
            for i, state in zip(missing, self._bottom(batch, missing), strict=True):
                fresh[i] = state
                self._keep(keys[i], state)
                if self.store is not None:
                    self._write(batch["input_ids"][i][batch["attention_mask"][i] == 1], state)
        self.hits += len(keys) - len(missing)
        rows = [fresh[i] if i in fresh else self._states[k] for i, k in enumerate(keys)]
        width = batch["input_ids"].shape[1]
        out = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype, device=rows[0].device)
        mask = batch["attention_mask"].bool()
        for i, state in enumerate(rows):  # one copy per example, not per element
            out[i, mask[i]] = state
        return out

    def hidden(self, batch: dict[str, torch.Tensor], keys: Sequence[int]) -> torch.Tensor:
        """``[batch, width, hidden]`` final (normed) hidden states of the batch, via the top layers only:
        what the LM head reads at every position."""
        embeds = self.states(batch, keys)
        top = torch.nn.ModuleList(list(self.decoder.layers)[self.boundary :])
        with self._layers(top, None):
            out = self.decoder(
                inputs_embeds=embeds,
                attention_mask=batch["attention_mask"],
                position_ids=_positions(batch),
                use_cache=False,
            )
        return out.last_hidden_state

    def token_loss(
        self, batch: dict[str, torch.Tensor], keys: Sequence[int], *, ignore_index: int, reduction: str
    ) -> tuple[torch.Tensor, int]:
        """Next-token cross-entropy of the batch's labelled positions (``labels`` shifted by one, as a
        causal LM's loss) and their count, with the LM head applied at those positions only."""
        hidden = self.hidden(batch, keys)[:, :-1]
        labels = batch["labels"][:, 1:].to(hidden.device)
        keep = labels != ignore_index
        logits = self.lm.lm_head(hidden[keep]).float()
        loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction=reduction)
        return loss, int(keep.sum())

    def label_logits(
        self, batch: dict[str, torch.Tensor], keys: Sequence[int], label_ids: torch.Tensor
    ) -> torch.Tensor:
        """``[batch, num_labels]`` logits of ``label_ids`` at the last position (a left-padded batch), via the
        top layers only."""
        last = self.hidden(batch, keys)[:, -1, :]
        weight = self.lm.lm_head.weight[label_ids.to(last.device)]
        bias = getattr(self.lm.lm_head, "bias", None)
        logits = torch.nn.functional.linear(last, weight, None if bias is None else bias[label_ids])
        return logits.float()


def _positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's ``position_ids``, or those a forward pass derives for it: 0 at each row's first real
    token (right padding, as the causal-LM training batches, has none)."""
    pos = batch.get("position_ids")
    if pos is None:
        pos = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    return pos
