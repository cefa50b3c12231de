"""Importing fedsqueeze has no side effects; the command line and the Flower apps set offline mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsqueeze import cli
from fedsqueeze.flower import FLOWER_ENV, apply_offline_env
from fedsqueeze.offline import HUB_OFFLINE_ENV, OPT_OUT_VAR, apply_offline_mode, offline_requested

SRC = Path(__file__).resolve().parents[1] / "src"
EXTRAS = ("transformers", "peft", "flwr", "matplotlib", "rich", "ray", "gguf", "accelerate")

# Imports every fedsqueeze module with the extras made unimportable (as if not installed), and compares the
# environment and some process-wide library settings before and after.
IMPORT_ALL = r"""
import importlib, json, logging, os, pkgutil, sys, warnings
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import raises ModuleNotFoundError, as when not installed
# The core's own dependencies first: what *they* do when imported is not fedsqueeze's doing.
import constriction, numpy, safetensors.torch, scipy.optimize, scipy.special, scipy.stats, torch
def state():
    return {
        "env": dict(os.environ),
        "threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad": torch.is_grad_enabled(),
        "warnings": [repr(f) for f in warnings.filters],
        "log_handlers": len(logging.getLogger().handlers),
        "log_level": logging.getLogger().level,
        "np_err": numpy.geterr(),
        "np_print": repr(numpy.get_printoptions()),
    }
before = state()
import fedsqueeze
needs_extra = []
for mod in pkgutil.walk_packages(fedsqueeze.__path__, "fedsqueeze."):
    try:
        importlib.import_module(mod.name)
    except ModuleNotFoundError as exc:
        needs_extra.append([mod.name, exc.name.split(".")[0]])
after = state()
changed = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
if "env" in changed:
    b, a = before["env"], after["env"]
    changed["env"] = {k: [b.get(k), a.get(k)] for k in set(b) | set(a) if b.get(k) != a.get(k)}
print(json.dumps({"changed": changed, "needs_extra": needs_extra, "dir": dir(fedsqueeze)}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HUB_OFFLINE_ENV and k != OPT_OUT_VAR}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **extra)
    return env


def test_importing_every_module_changes_no_environment_or_global_state():
    res = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, ",".join(EXTRAS)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["changed"] == {}
    # Only these modules import an extra at import time; everything else imports without any extra.
    assert sorted(map(tuple, out["needs_extra"])) == [
        ("fedsqueeze.cli.codecs", "rich"),
        ("fedsqueeze.flower.client_app", "flwr"),
        ("fedsqueeze.flower.downlink", "flwr"),
        ("fedsqueeze.flower.frames", "flwr"),
        ("fedsqueeze.flower.job_strategy", "flwr"),
        ("fedsqueeze.flower.mods", "flwr"),
        ("fedsqueeze.flower.records", "flwr"),
        ("fedsqueeze.flower.server_app", "flwr"),
        ("fedsqueeze.flower.stock_rounds", "flwr"),
        ("fedsqueeze.flower.store", "flwr"),
        ("fedsqueeze.flower.strategy", "flwr"),
        ("fedsqueeze.models.pooling", "transformers"),
    ]
    public = [n for n in out["dir"] if not n.startswith("_")]
    assert "os" not in public and "annotations" not in public
    assert {"Codec", "UpdateSpec", "decode", "ErrorFeedback", "MissingExtraError"} <= set(public)


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        ({}, dict(HUB_OFFLINE_ENV)),
        ({OPT_OUT_VAR: "0"}, {}),
        ({OPT_OUT_VAR: " Off "}, {}),
        ({OPT_OUT_VAR: "1"}, dict(HUB_OFFLINE_ENV)),
        ({"HF_HUB_OFFLINE": "0"}, {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}),  # user's value wins
    ],
)
def test_apply_offline_mode(given, expect):
    env = apply_offline_mode(dict(given))
    assert {k: env.get(k) for k in HUB_OFFLINE_ENV if k in env} == expect
    assert offline_requested(given) == bool(expect)


def test_flower_env_keeps_flower_offline_even_when_the_hub_is_on():
    env = apply_offline_env({OPT_OUT_VAR: "0"})
    assert all(env[k] == v for k, v in FLOWER_ENV.items())
    assert not set(HUB_OFFLINE_ENV) & set(env)
    env = apply_offline_env({})
    assert all(env[k] == v for k, v in {**FLOWER_ENV, **HUB_OFFLINE_ENV}.items())


def _cli_env(monkeypatch, **given: str) -> dict[str, str | None]:
    for key in (*HUB_OFFLINE_ENV, OPT_OUT_VAR):
        monkeypatch.delenv(key, raising=False)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["codecs", "--plain"]) == 0
    return {k: os.environ.get(k) for k in HUB_OFFLINE_ENV}


def test_cli_sets_offline_mode(monkeypatch, capsys):
    assert _cli_env(monkeypatch) == HUB_OFFLINE_ENV
    assert "identity" in capsys.readouterr().out


def test_cli_offline_opt_out(monkeypatch, capsys):
    assert _cli_env(monkeypatch, FEDSQUEEZE_OFFLINE="0") == {k: None for k in HUB_OFFLINE_ENV}
    assert _cli_env(monkeypatch, HF_HUB_OFFLINE="0") == {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}


def test_help_documents_offline_mode(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "HF_HUB_OFFLINE=1" in text and "FEDSQUEEZE_OFFLINE=0" in text
