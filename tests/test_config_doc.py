"""docs/config.md (generated key reference), the TOML printer and `fedsqueeze run --print-config`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import fedsqueeze.fl.loop as loop
from fedsqueeze.cli import main as cli_main
from fedsqueeze.config import RunConfig, load_config, preset_names
from fedsqueeze.config.doc import ALLOWED, KINDS, config_reference, config_toml
from fedsqueeze.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_up_to_date():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert text == config_reference(), "regenerate: python -m fedsqueeze.config.doc > docs/config.md"


def test_every_key_is_listed_with_a_description():
    ref = config_reference()
    for section, kind in KINDS.items():
        for field in dataclasses.fields(kind):
            rows = ref.split(f"## [{section}]")[1].splitlines()
            row = next(line for line in rows if f"| `{field.name}` |" in line)
            assert row.rstrip(" |").rsplit("|", 1)[1].strip(), f"{section}.{field.name} has no description"
    for key in ("gen_max_new_tokens", "max_train_examples", "num_layers"):
        assert f"`{key}`" in ref


def _is_choice(allowed: str) -> bool:
    return allowed[0].isalpha()


def _bad_values(allowed: str) -> list[object]:
    if _is_choice(allowed):
        return ["bogus"]
    m = re.fullmatch(r"([\[(])([-\d.e*]+), ([-\d.e*]+)([\])])", allowed)
    if m:
        lo, hi = eval(m.group(2)), eval(m.group(3))  # our own table
        return [lo - 1 if m.group(1) == "[" else lo, hi if m.group(4) == ")" else hi + 1]
    return {"> 0": [0], ">= 0": [-1], ">= 1": [0], "0 (off) or >= 1": [0.5]}.get(
        allowed, [0, 9] if allowed == "1..8" else [0]
    )


# Keys whose values are accepted only beside another key of the section (a verbalizer needs a causal LM).
CONTEXT = {"model.classifier": {"name": "smollm2-135m"}}


@pytest.mark.parametrize("key", sorted(ALLOWED))
def test_allowed_column_matches_the_validation(key):
    section, name = key.split(".")
    allowed = ALLOWED[key]
    if _is_choice(allowed) and key != "tgap.device":
        for choice in (c.strip() for c in allowed.split(",")):
            RunConfig.from_dict({section: {**CONTEXT.get(key, {}), name: choice}})  # every value is accepted
    for bad in _bad_values(allowed):
        if isinstance(bad, float) and name in ("rounds", "seed", "depth", "min_replies", "clients_per_round"):
            bad = int(bad)
        with pytest.raises(ConfigError):
            RunConfig.from_dict({section: {name: bad}})


@pytest.mark.parametrize("name", preset_names())
def test_printed_toml_reads_back_to_the_same_config(tmp_path, name):
    config = load_config(name, ["fl.target_metric=0.7", "codec.options={}"])
    path = tmp_path / "resolved.toml"
    path.write_text(config_toml(config), encoding="utf-8")
    assert load_config(path) == config


def test_print_config_prints_the_resolved_toml_without_loading_a_model(monkeypatch, capsys):
    def no_model(config):
        raise AssertionError("--print-config must not load a model")

    monkeypatch.setattr(loop, "build_workload", no_model)
    assert cli_main(["run", "smoke", "--set", "fl.rounds=5", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# The resolved run config") and "\nrounds = 5\n" in out
    assert 'name = "tiny-bert"' in out and "options = { density = 0.05 }" in out
