"""How a run config is put together: presets, TOML files on a base, --set overrides, codec-name changes."""

from __future__ import annotations

import pytest

from fedsqueeze.errors import ConfigError
from fedsqueeze.fl.config import apply_overrides, load_config


def test_changing_codec_name_resets_the_presets_options():
    smoke = load_config("smoke")
    assert smoke.codec.name == "topk" and smoke.codec.options == {"density": 0.05}
    # The first example of `fedsqueeze tgap --help`: identity has no density option.
    assert load_config("smoke", ["codec.name=identity"]).codec.options == {}
    # Options given alongside the new name apply, whatever their order.
    for sets in (
        ["codec.name=randk", "codec.options.density=0.2"],
        ["codec.options.density=0.2", "codec.name=randk"],
    ):
        cfg = load_config("smoke", sets)
        assert (cfg.codec.name, cfg.codec.options) == ("randk", {"density": 0.2})
    # The same name keeps the options.
    assert load_config("smoke", ["codec.name=topk"]).codec.options == {"density": 0.05}
    # downlink follows the same rule.
    data = {"downlink": {"name": "topk", "options": {"density": 0.3}}}
    apply_overrides(data, ["downlink.name=fp16"])
    assert data == {"downlink": {"name": "fp16"}}


def test_unknown_option_of_the_new_codec_still_fails():
    with pytest.raises(ConfigError, match="identity"):
        load_config("smoke", ["codec.name=identity", "codec.options.density=0.1"])
