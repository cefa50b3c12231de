"""``RunConfig.differences``: the one "same config" test (resume, TGAP reuse, finished study cells)."""

from __future__ import annotations

import pytest

from fedsqueeze import ConfigError
from fedsqueeze.config import load_config
from fedsqueeze.fl.federation import check_same_config


def _cfg(*sets: str):
    return load_config("smoke", ["model.name=toy", *sets])


def test_only_rounds_may_differ_by_default() -> None:
    saved = _cfg("fl.rounds=2").to_dict()
    assert _cfg("fl.rounds=5").differences(saved) == []
    assert _cfg("fl.rounds=5").differences(saved, except_rounds=False) == ["fl.rounds"]
    assert _cfg("fl.rounds=2", "fl.seed=3").differences(saved) == ["fl.seed"]


def test_missing_keys_count_as_their_defaults_and_lists_equal_tuples() -> None:
    now = _cfg("model.target_modules=['query']")
    saved = now.to_dict()
    del saved["tgap"]  # a file from before [tgap] existed
    saved["fl"] = {k: v for k, v in saved["fl"].items() if k != "trim_fraction"}
    assert now.differences(saved) == []
    enabled = {**now.to_dict(), "tgap": {**now.to_dict()["tgap"], "seed": 7}}
    assert now.differences(enabled) == ["tgap.seed"]


def test_resume_check_names_the_keys() -> None:
    saved = _cfg().to_dict()
    with pytest.raises(ConfigError, match=r"^--resume with a different config \(fl\.seed\); only fl\.rounds"):
        check_same_config(saved, _cfg("fl.seed=4").to_dict())
