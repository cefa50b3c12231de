"""TGAP (CG-FedLLM's pre-training phase) runs on Flower too: the one driver (`fl/driver.py`) runs the phase's
hook before the rounds, and the Flower clients rebuild the FAF share and the trained codec from what the
hook sends (`RunHook.for_client`). The job equals `fedsqueeze run` with the same config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from safetensors.torch import load_file

from fedsqueeze.config import (
    CodecConfig,
    DataConfig,
    FLConfig,
    LocalTrainConfig,
    ModelConfig,
    RunConfig,
    TGAPConfig,
)
from fedsqueeze.fl import run
from fedsqueeze.flower import FlowerSettings
from support.flower import FakeGrid

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N = 4
# the aggregate's error (and the health warning drawn from it) needs raw updates, which stay on Flower clients
DIFFERS = {"rel_error", "mean_update_norm", "warnings"}
DIFFERS |= {"wall_s", "train_s", "client_s", "sim_round_s", "sim_time_s"}  # wall-clock seconds


def config() -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="toy", lora_r=4),
        data=DataConfig(num_clients=N),
        train=LocalTrainConfig(lr=0.05, max_steps=3, batch_size=8),
        fl=FLConfig(rounds=2, clients_per_round=2, seed=1, error_feedback=False),
        codec=CodecConfig("cg_fedllm_q", {"rate": 8.0}),
        tgap=TGAPConfig(enabled=True, rounds=2, steps=8, depth=3, batch_size=4),
    )


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("task_identity")
def test_a_tgap_run_on_flower_equals_fedsqueeze_run(tmp_path):
    from fedsqueeze.flower.server_app import run_rounds

    cfg = config()
    local = run(cfg, tmp_path / "local")
    settings = FlowerSettings(cfg, round_timeout=5)  # tgap.enabled is no longer refused
    flower = run_rounds(FakeGrid(settings, N), settings, tmp_path / "flower")

    a, b = rows(tmp_path / "local"), rows(tmp_path / "flower")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        assert rb["kept"] == rb["clients"]  # every node rebuilt the FAF codec and its frames decoded
        for key in ra.keys() - DIFFERS:
            assert json.dumps(ra[key]) == json.dumps(rb[key]), key
    fa = load_file(str(tmp_path / "local" / "final_params.safetensors"))
    fb = load_file(str(tmp_path / "flower" / "final_params.safetensors"))
    assert fa.keys() == fb.keys() and all(fa[k].equal(fb[k]) for k in fa)
    ta, tb = local["tgap_traffic"], flower["tgap_traffic"]
    assert ta["fingerprint"] == tb["fingerprint"] and ta["uplink_bytes"] == tb["uplink_bytes"]
    assert (
        flower["total_uplink_bytes"] == local["total_uplink_bytes"]
    )  # the phase's bytes count on Flower too
    assert (tmp_path / "flower" / "tgap" / "ae.safetensors").is_file()
