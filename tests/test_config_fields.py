"""``config.fields``: allowed values live in the field metadata, read by the validator and the docs."""

from __future__ import annotations

import dataclasses

import pytest

from fedsqueeze import ConfigError
from fedsqueeze.config.doc import ALLOWED
from fedsqueeze.config.fields import Range, setting, validate


@dataclasses.dataclass(frozen=True)
class _Toy:
    mode: str = setting("a", choices=("a", "b"))
    rate: float = setting(0.5, range=Range(0, 1, low_closed=False))
    steps: int | None = setting(None, range=Range(1))

    def __post_init__(self) -> None:
        validate(self, "toy")


def test_one_validator_reads_the_metadata() -> None:
    assert _Toy(steps=3).steps == 3 and _Toy().steps is None  # None passes: unset
    with pytest.raises(ConfigError, match=r"^toy\.mode = 'c' is not allowed; choose one of a, b$"):
        _Toy(mode="c")
    with pytest.raises(ConfigError, match=r"^toy\.rate must be in \(0, 1\), got 0$"):
        _Toy(rate=0)
    with pytest.raises(ConfigError, match=r"^toy\.steps must be >= 1, got 0$"):
        _Toy(steps=0)
    with pytest.raises(ConfigError, match="toy.rate must be in"):
        _Toy(rate=float("nan"))


def test_the_docs_table_is_the_metadata() -> None:
    assert ALLOWED["tgap.steps"] == ">= 1" and ALLOWED["fl.seed"] == "[0, 2**63)"
    assert ALLOWED["model.pooling"] == "auto, cls, mean" and ALLOWED["train.logit_adjust"] == ">= 0"
