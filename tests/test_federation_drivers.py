"""Both drivers of the federation core on the toy workload: the local loop (`fedsqueeze run`) and the Flower
ServerApp over a fake Grid give the same metrics rows, the same summary and the same final adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from safetensors.torch import load_file

from fedsqueeze.fl import run
from fedsqueeze.flower import FlowerSettings
from support.flower import FakeGrid, make_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Driver-specific by design: the aggregate's error needs the raw updates, which never leave Flower clients.
RAW_UPDATE_FIELDS = {"rel_error", "mean_update_norm"}
TIMING = {"wall_s", "train_s", "client_s", "sim_round_s", "sim_time_s"}  # wall-clock seconds, and from them
SUMMARY_DIFFERS = {"engine", "flower", "versions", "out_dir", "load_s", "elapsed_s", "wall_s"}
SUMMARY_DIFFERS |= {"sim_time_s", "sim_time_to_target_s"}  # simulated from the measured client seconds


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def same_shape(a, b) -> bool:
    """Same JSON types all the way down (numbers of the same kind, same keys, same lengths)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_shape, a, b))
    return type(a) is type(b)


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize(
    "fl",
    [
        {},
        {"server_momentum": 0.9, "norm_bound_factor": 3.0},
        # a compressed downlink: Flower clients rebuild the state from the frames they missed
        {"downlink": ("topk", {"density": 0.2}), "rounds": 5, "downlink_window": 2},
        # predictive uplink: both ends predict from the last delta frame the node received
        {
            "downlink": ("topk", {"density": 0.2}),
            "codec": ("predictive", {"inner": "topk", "inner_options": {"rate": 8.0}, "predictor": "scalar"}),
            "rounds": 4,
        },
    ],
)
def test_local_and_flower_drivers_write_the_same_rows_and_adapter(tmp_path, fl):
    from fedsqueeze.flower.server_app import run_rounds

    fl = {"rounds": 3, **fl}
    cfg = make_config(**fl)
    local = run(cfg, tmp_path / "local")
    settings = FlowerSettings(cfg, round_timeout=5)
    flower = run_rounds(FakeGrid(settings, 4), settings, tmp_path / "flower")

    a, b = rows(tmp_path / "local"), rows(tmp_path / "flower")
    assert len(a) == len(b) == cfg.fl.rounds
    for ra, rb in zip(a, b, strict=True):
        assert list(ra) == list(rb)  # same fields, in the same order
        for key in ra.keys() - RAW_UPDATE_FIELDS - TIMING:
            assert json.dumps(ra[key]) == json.dumps(rb[key]), key  # same value and same JSON type
        for key in TIMING:
            assert same_shape(ra[key], rb[key]), key
        assert isinstance(ra["rel_error"], float) and isinstance(ra["mean_update_norm"], float)
        assert rb["rel_error"] is None and rb["mean_update_norm"] is None
    assert [r["replied"] for r in b] == [r["clients"] for r in b]  # every client replied: nothing to excuse

    fa = load_file(str(tmp_path / "local" / "final_params.safetensors"))
    fb = load_file(str(tmp_path / "flower" / "final_params.safetensors"))
    assert fa.keys() == fb.keys() and all(fa[k].equal(fb[k]) for k in fa)

    assert set(flower) - set(local) == {"flower"}
    for key in local.keys() - SUMMARY_DIFFERS:
        assert json.dumps(local[key]) == json.dumps(flower[key]), key
    assert (local["engine"], flower["engine"]) == ("local", "flower")
    assert json.loads((tmp_path / "flower" / "summary.json").read_text())["engine"] == "flower"


@pytest.mark.usefixtures("task_identity")
def test_the_flower_server_is_a_flower_strategy_over_the_federation_core(tmp_path):
    from flwr.serverapp.strategy import Strategy

    from fedsqueeze.errors import UsageError
    from fedsqueeze.flower.job_strategy import FederationStrategy

    settings = FlowerSettings(make_config(rounds=1), round_timeout=5)
    strategy = FederationStrategy(settings)
    assert isinstance(strategy, Strategy)
    with pytest.raises(UsageError, match="without configure_train"):
        strategy.aggregate_train(1, [])
    grid = FakeGrid(settings, 4)
    msgs = list(strategy.configure_train(1, None, None, grid))
    arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(msgs))
    row = strategy.last_row
    assert row is not None and row["kept"] == row["clients"] and metrics["round"] == 1
    lora = {k for k in arrays if k.startswith("lora.")}
    assert lora == {f"lora.{k}" for k in strategy.fed.lora}  # the global state, as Flower arrays
    assert list(strategy.configure_evaluate(1, arrays, None, grid)) == []
