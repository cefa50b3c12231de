"""Held-out splits and client partitioners (IID, Dirichlet over labels, quantity skew), seeded with NumPy.

Every function is a pure function of its arguments: the same seed gives the same split on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = [
    "dirichlet_partition",
    "given_test_split",
    "iid_partition",
    "partition",
    "quantity_skew_partition",
    "train_test_split",
]

# Fewest examples any client may get (fewer if the pool is too small to give everyone this many).
MIN_PER_CLIENT = 4


def train_test_split(
    n: int, test_size: int, *, seed: int, max_train: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into a training pool and a held-out test set, disjoint and seeded.

    The test set is the first ``test_size`` indices of one seeded permutation, so a smaller test set is a
    subset of a larger one with the same seed. The training pool is the rest, capped at ``max_train``.

    Returns
    -------
    (train, test)
        Sorted ``int64`` index arrays.
    """
    if test_size >= n:
        raise ConfigError(f"data.test_examples = {test_size} leaves no training data ({n} examples in all)")
    perm = np.random.default_rng([seed, 0x5E1D]).permutation(n)
    test = perm[:test_size]
    train = perm[test_size:]
    if max_train is not None:
        train = train[:max_train]
    return np.sort(train), np.sort(test)


def given_test_split(
    n: int, test_rows: int, test_size: int, *, seed: int, max_train: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`train_test_split` when the last ``test_rows`` of ``range(n)`` are a given held-out set.

    The training pool is the first ``n - test_rows`` indices (a seeded choice of ``max_train`` of them when
    capped); the test set is a seeded choice of ``test_size`` of the given rows, or all of them if fewer.
    With ``test_rows = 0`` this is :func:`train_test_split`.
    """
    if test_rows == 0:
        return train_test_split(n, test_size, seed=seed, max_train=max_train)
    n_train = n - test_rows
    if n_train < 1:
        raise ConfigError("data.dataset has no rows left for training")
    train = np.random.default_rng([seed, 0x5E1D]).permutation(n_train)[:max_train]
    test = np.random.default_rng([seed, 0x7E57]).permutation(test_rows)[:test_size] + n_train
    return np.sort(train), np.sort(test)


def _min_size(n: int, num_clients: int) -> int:
    if n < num_clients:
        raise ConfigError(f"{n} training examples cannot cover data.num_clients = {num_clients}")
    return min(MIN_PER_CLIENT, n // num_clients)


def iid_partition(n: int, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_clients`` near-equal shards (sizes differ by at most 1)."""
    _min_size(n, num_clients)
    perm = np.random.default_rng([seed, 0x11D]).permutation(n)
    return [np.sort(s) for s in np.array_split(perm, num_clients)]


def _top_up(shards: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    # Move random examples from the currently largest shard to each short one (rare for sane alpha).
    for c in range(len(shards)):
        while len(shards[c]) < min_size:
            donor = int(np.argmax([len(s) for s in shards]))
            j = int(rng.integers(len(shards[donor])))
            shards[c].append(shards[donor].pop(j))


def dirichlet_partition(
    labels: Sequence[int] | np.ndarray, num_clients: int, alpha: float, *, seed: int
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over clients with proportions ``Dir(alpha)``.

    Small ``alpha`` gives each client few dominant classes; large ``alpha`` tends to IID. Every client is
    guaranteed ``min(4, n // num_clients)`` examples: the split is redrawn up to 10 times, then short
    clients are topped up with random examples taken from the largest client.
    """
    if alpha <= 0:
        raise ConfigError(f"data.alpha must be > 0, got {alpha}")
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    min_size = _min_size(n, num_clients)
    rng = np.random.default_rng([seed, 0xD1A])
    classes = np.unique(y)
    shards: list[list[int]] = []
    for _attempt in range(10):
        shards = [[] for _ in range(num_clients)]
        for k in classes:
            idx = rng.permutation(np.flatnonzero(y == k))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for c, part in enumerate(np.split(idx, cuts)):
                shards[c].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            break
    _top_up(shards, min_size, rng)
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def quantity_skew_partition(n: int, num_clients: int, alpha: float, *, seed: int) -> list[np.ndarray]:
    """Unlabelled data (gsm8k): client sizes follow ``Dir(alpha)``, examples are assigned at random.

    This is the "Dirichlet" partition for data without labels: it skews how *much* data each client has,
    not which classes. Every client gets at least ``min(4, n // num_clients)`` examples.
    """
    min_size = _min_size(n, num_clients)
    rng = np.random.default_rng([seed, 0x9517])
    perm = rng.permutation(n)
    spare = n - min_size * num_clients
    p = rng.dirichlet(np.full(num_clients, alpha))
    extra = np.floor(p * spare).astype(np.int64)
    extra[: spare - int(extra.sum())] += 1  # hand out the rounding remainder
    sizes = extra + min_size
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(s) for s in np.split(perm, cuts)]


def partition(
    n: int,
    num_clients: int,
    how: str,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Partition ``range(n)`` among clients: ``"iid"`` or ``"dirichlet"`` (quantity skew without labels).

    Returns one sorted index array per client; together they cover every index exactly once.
    """
    if how == "iid":
        return iid_partition(n, num_clients, seed=seed)
    if how == "dirichlet":
        if labels is None:
            return quantity_skew_partition(n, num_clients, alpha, seed=seed)
        if len(labels) != n:
            raise ConfigError(f"{len(labels)} labels for {n} examples")
        return dirichlet_partition(labels, num_clients, alpha, seed=seed)
    raise ConfigError(f"data.partition = {how!r} is not allowed; choose iid or dirichlet")
