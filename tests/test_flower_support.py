"""Support for tests/test_flower.py, imported by Flower's ClientApp processes (PYTHONPATH=tests); no tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from fedsqueeze.fl.toy import ToyWorkload


class _HangingToy(ToyWorkload):
    def train_client(self, client, lora, head, cfg, *, seed, train_head=True):  # type: ignore[override]
        marker = os.environ.get("FSQ_TEST_HANG_MARKER")
        if marker:  # only the SuperNode the test wants to kill has this set
            Path(marker).write_text(str(os.getpid()))
            time.sleep(300)
        return super().train_client(client, lora, head, cfg, seed=seed, train_head=train_head)


def hanging_toy(config):
    """Like ``model.name = "toy"`` (same data and init), but hangs in training where the env says so."""
    return _HangingToy(
        config.data.num_clients, rank=config.model.lora_r, alpha=config.data.alpha, seed=config.fl.seed
    )


class _DyingToy(ToyWorkload):
    """Kills its own process (SIGKILL) in the ``FSQ_TEST_DIE_AT_EVAL``-th evaluation, once: a ServerApp
    that dies after the nodes trained that round, before it checkpoints it (``FSQ_TEST_DIE_MARKER``)."""

    evaluations = 0

    def evaluate(self, lora, head):  # type: ignore[override]
        marker, at = os.environ.get("FSQ_TEST_DIE_MARKER"), os.environ.get("FSQ_TEST_DIE_AT_EVAL")
        _DyingToy.evaluations += 1
        if marker and at and not Path(marker).exists() and _DyingToy.evaluations == int(at):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().evaluate(lora, head)


def dying_toy(config):
    """Like ``model.name = "toy"``, but the process dies in an evaluation where the env says so."""
    return _DyingToy(
        config.data.num_clients, rank=config.model.lora_r, alpha=config.data.alpha, seed=config.fl.seed
    )
