"""The client step: train locally, form ``u = θ_global − θ_local``, compress it with error feedback.

Engine-agnostic: the local loop calls :func:`client_step` directly. On Flower the same step is split at the
wire: the ClientApp trains (``Workload.train_client``) and ``fedsqueeze.flower.compress_mod`` forms ``u`` in
float32 and encodes it with the same error feedback, seed and reference, so its frames equal
``reply.lora_payload`` / ``reply.head_payload`` byte for byte (``tests/test_federation_drivers.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..codecs import ErrorFeedback, get
from ..config import LocalTrainConfig
from ..spec import UpdateSpec
from .workload import Workload

__all__ = ["ClientReply", "client_step", "encode_dense", "relative_error"]


@dataclass
class ClientReply:
    """What one client produced in one round.

    Only ``lora_payload``, ``head_payload`` and ``num_examples`` travel to the server; the other fields are
    local diagnostics (the raw update feeds ``--capture-updates`` and the dense reference aggregate; a driver
    whose clients keep it passes ``None``). ``seconds`` is the client's wall-clock time, set by the driver.
    """

    client: int
    num_examples: int
    lora_payload: bytes
    head_payload: bytes
    train_loss: float
    raw_update: torch.Tensor | None  # flat float32 θ_global − θ_local over the LoRA spec, before EF
    rel_error: float | None  # ‖p − p̂‖² / ‖p‖² of the compressor input p = u + residual
    residual_norm: float  # ‖residual‖ after this round
    seconds: float | None = None  # the client's wall-clock time this round (``client_s`` of the row)

    @property
    def uplink_bytes(self) -> int:
        return len(self.lora_payload) + len(self.head_payload)


def relative_error(ref: torch.Tensor, approx: torch.Tensor) -> float | None:
    """``‖ref − approx‖² / ‖ref‖²`` in float64 (``0.0`` when both are zero, ``None`` when only ``ref`` is)."""
    ref64, approx64 = ref.to(torch.float64), approx.to(torch.float64)
    num = float((ref64 - approx64).pow(2).sum())
    den = float(ref64.pow(2).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else None
    return num / den


def encode_dense(flat: torch.Tensor, spec: UpdateSpec, *, seed: int = 0) -> bytes:
    """An ``identity`` (fp32) frame of ``flat``; ``b""`` when the spec is empty (nothing to send)."""
    if spec.numel == 0:
        return b""
    return get("identity").encode_with_spec(flat.to(torch.float32), spec, seed=seed)


def client_step(
    workload: Workload,
    client: int,
    lora: Mapping[str, torch.Tensor],
    head: Mapping[str, torch.Tensor],
    train_cfg: LocalTrainConfig,
    ef: ErrorFeedback,
    *,
    train_seed: int,
    encode_seed: int,
    train_head: bool = True,
    reference: torch.Tensor | None = None,
) -> ClientReply:
    """Train ``client`` from the global ``(lora, head)`` and encode its update.

    Parameters
    ----------
    ef
        This client's :class:`~fedsqueeze.ErrorFeedback` around the uplink codec (its residual and codec
        state persist across the rounds the client takes part in; ``enabled=False`` for no feedback).
    train_seed, encode_seed
        Seeds of local training (shuffling, dropout) and of the codec's random choices.
    train_head
        Whether the head trains this round (``model.head``); a fixed head sends no head frame.
    reference
        What a predictive codec codes the update against (the round's :attr:`RoundPlan.references` entry).

    Returns
    -------
    ClientReply
        LoRA frame from ``ef``, head frame (identity codec, no feedback), loss and diagnostics.
    """
    lspec, hspec = workload.lora_spec, workload.head_spec
    new_lora, new_head, loss = workload.train_client(
        client, dict(lora), dict(head), train_cfg, seed=train_seed & ((1 << 63) - 1), train_head=train_head
    )
    u = lspec.flatten(lora) - lspec.flatten(new_lora)
    u_head = hspec.flatten(head) - hspec.flatten(new_head)

    before = None if (ef.residual is None or not ef.enabled) else ef.residual.clone()
    lora_payload = ef.encode_flat(u, lspec, seed=encode_seed, reference=reference)
    p = u.to(torch.float64) if before is None else u.to(torch.float64) + before
    assert ef.last_decoded is not None
    rel = relative_error(p, ef.last_decoded)
    return ClientReply(
        client=client,
        num_examples=int(workload.client_num_examples(client)),
        lora_payload=lora_payload,
        head_payload=encode_dense(u_head, hspec, seed=encode_seed) if train_head else b"",
        train_loss=float(loss),
        raw_update=u,
        rel_error=rel,
        residual_norm=ef.residual_norm,
    )
