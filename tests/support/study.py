"""The toy study file of the study tests: two codecs on the toy task, two seeds, three rounds."""

from __future__ import annotations

from pathlib import Path

TOY_STUDY = """
[study]
name = "toy"
seeds = [0, 1]
baseline = "identity"

[[tasks]]
name = "toy"
config.model = {{ name = "toy", lora_r = 4 }}
config.data = {{ num_clients = 6 }}
config.train = {{ lr = 0.05, batch_size = 16 }}
config.fl = {{ rounds = 3, clients_per_round = 3 }}

[[partitions]]
label = "dir0.5"
alpha = 0.5

[[codecs]]
label = "identity"
name = "identity"

[[codecs]]
label = "{label}"
name = "{name}"
options = {options}
"""


def write_toy_study(
    tmp_path: Path, label: str = "topk", name: str = "topk", options: str = "{ density = 0.1 }"
) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_STUDY.format(label=label, name=name, options=options), encoding="utf-8")
    return path
