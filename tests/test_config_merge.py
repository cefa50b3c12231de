"""How a run config is put together: presets, TOML files on a base, --set overrides, codec-name changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsqueeze.config import RunConfig, apply_overrides, load_config
from fedsqueeze.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_partial_file_sits_on_the_default_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[fl]\nrounds = 3\n")
    assert load_config(path) == load_config(None, ["fl.rounds=3"])
    assert load_config(path).fl.server_momentum == 0.7  # the default preset's, not the code default 0


def test_base_names_a_preset_a_file_or_none(tmp_path):
    (tmp_path / "sub").mkdir()
    on_smoke = tmp_path / "sub" / "on_smoke.toml"
    on_smoke.write_text('base = "smoke"\n[fl]\nrounds = 3\n[codec]\nname = "identity"\n')
    assert load_config(on_smoke) == load_config("smoke", ["fl.rounds=3", "codec.name=identity"])
    assert load_config(on_smoke).codec.options == {}  # a new codec in a file starts from its defaults
    chained = tmp_path / "chained.toml"
    chained.write_text('base = "sub/on_smoke.toml"\n[fl]\nseed = 5\n')  # relative to this file
    assert load_config(chained) == load_config("smoke", ["fl.rounds=3", "codec.name=identity", "fl.seed=5"])
    bare = tmp_path / "bare.toml"
    bare.write_text('base = "none"\n[fl]\nrounds = 3\n')
    assert load_config(bare) == RunConfig.from_dict({"fl": {"rounds": 3}})
    same_codec = tmp_path / "same.toml"
    same_codec.write_text('base = "smoke"\n[codec]\noptions = { density = 0.2 }\n')
    assert load_config(same_codec).codec.options == {"density": 0.2}


def test_a_preset_file_loads_as_the_preset_name():
    from importlib import resources

    for name in ("default", "smoke", "paper"):
        path = Path(str(resources.files("fedsqueeze") / "configs" / f"{name}.toml"))
        assert load_config(path) == load_config(name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('base = "nope"\n', "no such file"),
        ("base = 3\n", "base must be a preset name"),
        ('base = "loop.toml"\n', "loops back"),
    ],
)
def test_bad_base_is_one_config_error(tmp_path, text, message):
    path = tmp_path / "loop.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_rate_replaces_the_density_a_preset_gives_and_null_clears_it():
    # smoke sets codec.options.density; the rate that `fedsqueeze codecs --help` shows must still work
    cfg = load_config("smoke", ["codec.options.rate=0.5"])
    assert cfg.codec.options == {"rate": 0.5}
    assert load_config("smoke", ["codec.options.density=null"]).codec.options == {}
    both = ["codec.options.rate=0.5", "codec.options.density=0.1"]  # both given on purpose: still an error
    with pytest.raises(ConfigError, match="density or rate, not both|not both"):
        load_config("smoke", both)
    down = load_config("default", ["downlink.options.rate=1"])  # the downlink too (it already uses a rate)
    assert down.downlink.options.get("rate") == 1 and "density" not in down.downlink.options
