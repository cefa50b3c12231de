"""The run config as text: the resolved TOML (``fedsqueeze run --print-config``) and the key reference.

``docs/config.md`` is :func:`config_reference`'s output, generated from the config dataclasses (their
fields, type hints, defaults and the NumPy docstrings' ``Parameters`` sections); regenerate it with::

    python -m fedsqueeze.fl.config_doc > docs/config.md

and the test suite checks that it is up to date.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from .._docstring import parameters, plain
from ..keyvalue import NULL
from .config import BASE_KEY, NO_BASE, SECTIONS, CodecConfig, FLConfig, RunConfig, TGAPConfig
from .workload import (
    DATASETS,
    DEVICES,
    MODELS,
    PARTITIONS,
    POOLINGS,
    DataConfig,
    LocalTrainConfig,
    ModelConfig,
)

__all__ = ["ALLOWED", "config_reference", "config_toml", "main"]

KINDS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": LocalTrainConfig,
    "fl": FLConfig,
    "codec": CodecConfig,
    "downlink": CodecConfig,
    "tgap": TGAPConfig,
}

#: Allowed values of the keys that have a fixed set or a range (checked by the tests against the validation).
ALLOWED: dict[str, str] = {
    "model.name": ", ".join(MODELS),
    "model.pooling": ", ".join(POOLINGS),
    "model.device": ", ".join(DEVICES),
    "model.lora_r": "> 0",
    "model.lora_alpha": "> 0",
    "model.lora_dropout": "[0, 1)",
    "model.max_length": "> 0",
    "model.num_layers": "> 0",
    "data.dataset": ", ".join(DATASETS),
    "data.partition": ", ".join(PARTITIONS),
    "data.num_clients": "> 0",
    "data.alpha": "> 0",
    "data.max_train_examples": "> 0",
    "data.test_examples": "> 0",
    "data.gen_max_new_tokens": "> 0",
    "train.epochs": "> 0",
    "train.batch_size": "> 0",
    "train.lr": "> 0",
    "train.weight_decay": ">= 0",
    "train.max_steps": "> 0",
    "train.head_lr": "> 0",
    "train.logit_adjust": ">= 0",
    "fl.rounds": ">= 1",
    "fl.clients_per_round": "1..data.num_clients",
    "fl.server_lr": "> 0",
    "fl.server_momentum": "[0, 1)",
    "fl.seed": "[0, 2**63)",
    "fl.eval_every": ">= 1",
    "fl.min_replies": "1..fl.clients_per_round",
    "fl.norm_bound_factor": "0 (off) or >= 1",
    "fl.aggregation": "mean, median, trimmed_mean",
    "fl.trim_fraction": "[0, 0.5)",
    "tgap.fraction": "(0, 1)",
    "tgap.collection": "federated, local",
    "tgap.rounds": ">= 1",
    "tgap.steps": ">= 0",
    "tgap.batch_size": ">= 1",
    "tgap.lr": "> 0",
    "tgap.variant": "auto, paper, sound",
    "tgap.depth": "1..8",
    "tgap.device": "cpu, cuda, cuda:N",
}


# -- TOML --------------------------------------------------------------------------------------------------
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def config_toml(config: RunConfig) -> str:
    """``config`` as a complete TOML file (``base = "none"``) that :func:`~.config.load_config` reads back
    to the same config. Unset keys (``None``) are written as ``"null"`` (TOML has no null)."""
    lines = [
        "# The resolved run config: every key, on top of the code defaults.",
        f'{BASE_KEY} = "{NO_BASE}"',
    ]
    for section, table in config.to_dict().items():
        lines += ["", f"[{section}]"]
        for key, value in table.items():
            lines.append(f'{key} = "{NULL}"  # unset' if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# -- the key reference -------------------------------------------------------------------------------------
def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = " or ".join(_type_text(a) for a in args if a is not type(None))
        return inner + (" or unset" if type(None) in args else "")
    if origin is tuple:
        return f"list of {_type_text(typing.get_args(tp)[0])}"
    if origin is not None and issubclass(origin, Mapping):
        return "table"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, str(tp))


def _default_text(section: str, field: dataclasses.Field) -> str:
    value = RunConfig().to_dict()[section][field.name]
    return "unset" if value is None else f"`{_toml_value(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """The Markdown key reference of every config section (``docs/config.md``)."""
    from ..codecs import available

    allowed = {**ALLOWED, "codec.name": ", ".join(available()), "downlink.name": ", ".join(available())}
    out = [
        "# Run config reference",
        "",
        "<!-- Generated by `python -m fedsqueeze.fl.config_doc > docs/config.md`; do not edit by hand "
        "(tests/test_config_doc.py checks it). -->",
        "",
        "A run config is a TOML file with the sections below (or a packaged preset: `default`, `smoke`, "
        "`paper`), plus `--set section.key=value` overrides on the command line. "
        "`fedsqueeze run CONFIG --print-config` prints the resolved config and exits.",
        "",
        "## How a config is put together",
        "",
        "1. **Base.** A file's top-level `base` key names what it is applied on top of: a preset name "
        f'(`base = "smoke"`), another TOML file (a path relative to this file), or `base = "{NO_BASE}"` '
        "for the code defaults listed below. A file without `base` is applied on top of the `default` "
        "preset, so a file that sets only `[fl] rounds = 3` is the default run with 3 rounds. The packaged "
        f'presets say `base = "{NO_BASE}"`: every key they leave out takes the default of this page.',
        "2. **Merge.** Sections merge key by key: a key the file sets replaces the base's; a "
        "`codec.options` table replaces the base's options as a whole.",
        "3. **`--set`** overrides apply last, in order; `--set codec.options.rate=0.5` sets one option.",
        "4. **A new codec starts from its own defaults.** Setting `codec.name` (or `downlink.name`) to "
        "another codec than the base's — in a file or with `--set` — drops the base's options; options "
        "given with it (`[codec] options = {...}` or `--set codec.options.KEY=...`) apply on top.",
        "",
        f'Unset (`unset` below): TOML has no null, so a file writes `key = "{NULL}"` '
        f"(and `--set key={NULL}`). A wrong key or value is an error naming the key and what is allowed. "
        "`fedsqueeze codecs NAME` lists a codec's options.",
    ]
    for section in SECTIONS:
        kind = KINDS[section]
        doc = (kind.__doc__ or "").strip().splitlines()
        helps = parameters(kind.__doc__)
        hints = typing.get_type_hints(kind)
        out += ["", f"## [{section}]", "", plain(doc[0]) if doc else ""]
        if section == "downlink":
            note = 'The downlink codec (server → clients); `downlink = "fp16"` is short for its `name`.'
            out += ["", note]
        out += ["", "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for field in dataclasses.fields(kind):
            if not field.init:
                continue
            key = f"{section}.{field.name}"
            row = [
                f"`{field.name}`",
                _type_text(hints[field.name]),
                _default_text(section, field),
                allowed.get(key, ""),
                plain(helps.get(field.name, "")),
            ]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    """Print :func:`config_reference` (``python -m fedsqueeze.fl.config_doc > docs/config.md``)."""
    print(config_reference(), end="")


if __name__ == "__main__":
    main()
