"""``config/``: the registry of sections, and the layers it keeps (models and data never import fl)."""

from __future__ import annotations

import dataclasses

import pytest

from fedsqueeze.config import RunConfig, TGAPConfig, apply_overrides, load_config, register_section, sections
from fedsqueeze.config.doc import config_toml
from fedsqueeze.errors import ConfigError, UsageError
from test_import_graph import graph

BUILTIN = ("model", "data", "train", "fl", "codec", "downlink", "tgap", "network")


def test_the_builtin_sections_are_registered_in_the_documented_order():
    assert sections.section_names() == BUILTIN
    assert tuple(RunConfig().to_dict()) == BUILTIN
    assert sections.get_section("tgap").kind is TGAPConfig and sections.get_section("tgap").check is not None


def test_a_section_is_registered_once():
    with pytest.raises(UsageError, match="registered already"):
        register_section("tgap", TGAPConfig)


@dataclasses.dataclass(frozen=True)
class _Phase:
    """A phase's own settings (test only).

    Parameters
    ----------
    steps
        How many steps.
    """

    steps: int = 3


def test_a_phase_registers_its_own_section(monkeypatch):
    monkeypatch.setattr(sections, "_SECTIONS", dict(sections._SECTIONS))

    def check(config: RunConfig) -> None:
        if config.section("phase").steps > config.fl.rounds:
            raise ConfigError("phase.steps must be <= fl.rounds")

    register_section("phase", _Phase, check=check)
    assert sections.section_names() == (*BUILTIN, "phase")
    cfg = RunConfig()
    assert cfg.section("phase") == _Phase() and cfg.to_dict()["phase"] == {"steps": 3}
    data = apply_overrides({}, ["phase.steps=2"])
    assert RunConfig.from_dict(data).section("phase") == _Phase(2)
    with pytest.raises(ConfigError, match="phase.steps must be an integer"):
        RunConfig.from_dict({"phase": {"steps": "x"}})
    with pytest.raises(ConfigError, match="phase.steps must be <= fl.rounds"):
        load_config("smoke", ["phase.steps=1000"])
    assert "[phase]\nsteps = 3" in config_toml(cfg)


def test_an_unregistered_section_is_refused():
    with pytest.raises(ConfigError, match="unknown section phase"):
        RunConfig.from_dict({"phase": {}})
    with pytest.raises(ConfigError, match="unknown section phase"):
        RunConfig(extra={"phase": _Phase()})


def test_models_data_and_config_do_not_import_the_engine():
    g = graph()
    lower = [m for m in g if m.startswith(("fedsqueeze.models", "fedsqueeze.data", "fedsqueeze.config"))]
    assert lower
    bad = [(m, t) for m in lower for t in g[m] if t.startswith(("fedsqueeze.fl", "fedsqueeze.flower"))]
    assert not bad, bad
