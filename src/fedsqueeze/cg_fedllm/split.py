"""The TGAP / FAF data split: each client's examples are split once into a pre-training share and the rest.

CG-FedLLM splits every client's data D1 : D2 = 3 : 7 (``docs/cg-fedllm.md``, "TGAP"): TGAP collects its
snapshots on D1, the federated fine-tuning (FAF) runs on D2. The split is per client, seeded, and disjoint.

The workload itself is not changed: :func:`restrict_workload` returns a shallow copy whose clients see only
a subset of their examples. It works on the two client-data layouts of the project's workloads:
``workload.parts`` (one index array per client: ``fedsqueeze.models.workload.PeftWorkload``) and
``workload.clients`` (one ``(x, y)`` tensor pair per client: ``fedsqueeze.fl.toy.ToyWorkload``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..seeding import derive_seed

__all__ = ["client_split", "restrict_workload", "split_workload"]

_MASK63 = (1 << 63) - 1


def client_split(
    sizes: Sequence[int], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each client's local positions ``range(sizes[c])`` into ``(pre, rest)``.

    ``pre`` holds ``round(fraction · n)`` positions (at least 1, at most ``n − 1``), chosen by a permutation
    seeded from ``(seed, client)``; both arrays are sorted and together cover ``range(n)`` exactly once.

    Raises
    ------
    ConfigError
        A client with fewer than 2 examples (it cannot give both phases data) or ``fraction`` not in (0, 1).
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"tgap.fraction must be in (0, 1), got {fraction}")
    pre: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for client, n in enumerate(int(s) for s in sizes):
        if n < 2:
            raise ConfigError(
                f"client {client} has {n} example(s); the TGAP split needs at least 2 per client "
                "(use fewer clients or more data, or tgap.enabled = false)"
            )
        k = min(max(round(fraction * n), 1), n - 1)
        rng = np.random.default_rng(derive_seed(seed, 0, client, "tgap-split") & _MASK63)
        perm = rng.permutation(n)
        pre.append(np.sort(perm[:k]))
        rest.append(np.sort(perm[k:]))
    return pre, rest


def _client_sizes(workload: Any) -> list[int]:
    return [int(workload.client_num_examples(c)) for c in range(workload.num_clients())]


def restrict_workload(workload: Any, subsets: Sequence[np.ndarray]) -> Any:
    """A shallow copy of ``workload`` whose client ``c`` has only its examples at positions ``subsets[c]``.

    The copy shares the model, tokenizer and test set with the original (they are used one at a time), so
    this costs no memory beyond the index arrays.

    Raises
    ------
    ConfigError
        The workload keeps its client data in neither ``parts`` nor ``clients`` (see the module docstring).
    """
    n = workload.num_clients()
    if len(subsets) != n:
        raise ConfigError(f"{len(subsets)} subsets for {n} clients")
    out = copy.copy(workload)
    if isinstance(getattr(workload, "parts", None), list):
        out.parts = [np.asarray(part)[np.asarray(sub, dtype=np.int64)] for part, sub in zip(
            workload.parts, subsets, strict=True
        )]  # fmt: skip
    elif isinstance(getattr(workload, "clients", None), list):
        out.clients = []
        for data, sub in zip(workload.clients, subsets, strict=True):
            idx = torch.as_tensor(np.asarray(sub, dtype=np.int64))
            out.clients.append(tuple(t[idx] for t in data))
    else:
        raise ConfigError(
            f"cannot split the clients of {type(workload).__name__} for TGAP: it keeps its client data in "
            "neither `parts` (index arrays) nor `clients` ((x, y) pairs)"
        )
    if isinstance(getattr(workload, "info", None), dict):
        out.info = dict(workload.info)
    return out


def split_workload(workload: Any, fraction: float, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """``(pre, rest, info)``: the workload restricted to each client's TGAP share and to the remainder.

    ``info`` has the per-client example counts of both sides (``pre_examples``, ``faf_examples``).
    """
    pre_idx, rest_idx = client_split(_client_sizes(workload), fraction, seed)
    pre, rest = restrict_workload(workload, pre_idx), restrict_workload(workload, rest_idx)
    info = {
        "fraction": fraction,
        "pre_examples": [len(i) for i in pre_idx],
        "faf_examples": [len(i) for i in rest_idx],
    }
    return pre, rest, info
