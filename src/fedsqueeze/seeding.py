"""Seeds and client sampling: pure functions of (run seed, round, client); a resume needs no RNG state."""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import UsageError

__all__ = ["derive_seed", "sample_clients"]

_MASK63 = (1 << 63) - 1


def derive_seed(run_seed: int, server_round: int, client: int, purpose: str) -> int:
    """A uint64 seed for one (round, client, purpose) from the run seed (BLAKE2b of the four fields).

    Hashing (rather than ``run_seed + round``) keeps the streams of neighbouring rounds and clients
    unrelated. ``client = -1`` is used for server-side draws (sampling, downlink).

    Parameters
    ----------
    purpose
        Which stream: ``"encode"``, ``"train"``, ``"sample"``, ``"downlink"``.
    """
    msg = f"fedsqueeze/{purpose}/{int(run_seed)}/{int(server_round)}/{int(client)}".encode()
    return int.from_bytes(hashlib.blake2b(msg, digest_size=8).digest(), "little")


def sample_clients(run_seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """``k`` distinct clients of ``range(num_clients)``, uniformly without replacement, sorted ascending."""
    if not 0 < k <= num_clients:
        raise UsageError(f"cannot sample {k} of {num_clients} clients")
    rng = np.random.default_rng(derive_seed(run_seed, server_round, -1, "sample") & _MASK63)
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))
