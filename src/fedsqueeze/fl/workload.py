"""The seam between the round loop and the ML side: the :class:`Workload` protocol.

The federated loop (``fedsqueeze.fl``) sees a :class:`Workload`: a model, a dataset and its partition, able
to train one client locally and to evaluate. It never imports transformers. Real workloads are built by
``fedsqueeze.models.workload.build_workload``; tests use a tiny in-code one (:mod:`fedsqueeze.fl.toy`). The
config sections of a workload (``[model]``, ``[data]``, ``[train]``) live in :mod:`fedsqueeze.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from ..spec import UpdateSpec

if TYPE_CHECKING:
    from ..config.train import LocalTrainConfig

__all__ = ["Workload"]


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
