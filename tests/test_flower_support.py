"""Support for tests/test_flower.py, imported by Flower's ClientApp processes (PYTHONPATH=tests); no tests."""

from __future__ import annotations

import os
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
