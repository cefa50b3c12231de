"""Phases of a run plug in through `fedsqueeze.fl.hooks`: the codec declares the phase, the run calls it."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.codecs import codec_class
from fedsqueeze.config import (
    CodecConfig,
    DataConfig,
    FLConfig,
    LocalTrainConfig,
    ModelConfig,
    RunConfig,
    TGAPConfig,
    tgap_codecs,
)
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import RunHook, run
from fedsqueeze.fl import hooks as hooks_mod
from fedsqueeze.fl.toy import ToyWorkload

N = 4


def config(codec: str = "cg_fedllm_q", enabled: bool = True) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="toy", lora_r=4),
        data=DataConfig(num_clients=N),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8),
        fl=FLConfig(rounds=2, clients_per_round=2, seed=1, error_feedback=False),
        codec=CodecConfig(codec, {"rate": 8.0}),
        tgap=TGAPConfig(enabled=enabled),
    )


class Recorder(RunHook):
    def __init__(self, cfg: RunConfig) -> None:
        self.calls: list[tuple] = []
        made.append(self)

    def before_rounds(self, ctx) -> None:
        self.calls.append(("before", ctx.workload.num_clients()))
        ctx.pre_traffic = {"uplink_bytes": 10, "downlink_bytes": 20, "wall_s": 0.0}

    def after_round(self, fed, row) -> None:
        self.calls.append(("after", row["round"], fed.done))


made: list[Recorder] = []


def test_the_declared_phase_runs_through_the_hook(tmp_path, monkeypatch):
    monkeypatch.setitem(hooks_mod._PHASES, "tgap", Recorder)  # stands in for the TGAP phase
    made.clear()
    summary = run(config(), tmp_path, workload=ToyWorkload(N))
    (hook,) = made
    assert hook.calls == [("before", N), ("after", 1, 1), ("after", 2, 2)]
    assert summary["tgap_traffic"]["uplink_bytes"] == 10  # the phase's traffic counts in the totals
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["total_uplink_bytes"] == 10 + sum(r["uplink_bytes"] for r in rows)


def test_the_phase_is_the_codecs_declaration():
    assert hooks_mod.hooks_for(config(enabled=False)) == []
    assert set(tgap_codecs()) == {"cg_fedllm", "cg_fedllm_q"}
    assert hooks_mod.trained_model_phase(codec_class("topk")) is None

    class Declared:
        trained_by = "elsewhere"

    assert hooks_mod.trained_model_phase(Declared) == "elsewhere"
    with pytest.raises(ConfigError, match="set codec.name"):
        config("topk")
