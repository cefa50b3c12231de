"""The bandwidth model ([network], fl/network.py): config checks, hand-computed round times, and a toy run
whose simulated times follow the rows while the trajectory does not depend on the network."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.config import (
    CodecConfig,
    DataConfig,
    FLConfig,
    LocalTrainConfig,
    ModelConfig,
    NetworkConfig,
    RunConfig,
    load_config,
)
from fedsqueeze.config.doc import config_toml
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.network import client_time, round_time, sim_columns, transfer_s
from fedsqueeze.fl.toy import ToyWorkload
from support.loop import strip_times


# -- config -------------------------------------------------------------------------------------------------
def test_defaults_and_per_client_overrides() -> None:
    net = NetworkConfig()
    assert (net.uplink_mbps, net.downlink_mbps, net.latency_ms, net.overrides) == (20.0, 100.0, 30.0, {})
    net = NetworkConfig(overrides={3: {"uplink_mbps": 1}, "10": {"latency_ms": 0, "downlink_mbps": 5}})
    assert net.overrides == {"3": {"uplink_mbps": 1.0}, "10": {"latency_ms": 0.0, "downlink_mbps": 5.0}}
    assert (
        net.link(3) == (1.0, 100.0, 30.0)
        and net.link(10) == (20.0, 5.0, 0.0)
        and net.link(0) == (20, 100, 30)
    )


def test_network_keys_from_set_and_toml_round_trip(tmp_path) -> None:
    cfg = load_config("smoke", ["network.overrides.3.uplink_mbps=1", "network.latency_ms=10"])
    assert cfg.network.link(3) == (1.0, 100.0, 10.0)
    path = tmp_path / "resolved.toml"
    path.write_text(config_toml(cfg), encoding="utf-8")
    assert load_config(path) == cfg
    assert RunConfig.from_dict({"network": {"overrides": {"2": {"latency_ms": 80}}}}).network.link(2)[2] == 80


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"uplink_mbps": 0}, "network.uplink_mbps must be > 0"),
        ({"downlink_mbps": -5}, "network.downlink_mbps must be > 0"),
        ({"latency_ms": -1}, "network.latency_ms must be >= 0"),
        ({"uplink_mbps": "fast"}, "network.uplink_mbps must be a number"),
        ({"bandwidth": 3}, "unknown key network.bandwidth"),
        ({"overrides": 3}, "network.overrides must be a table"),
        ({"overrides": {"-1": {"uplink_mbps": 1}}}, "client id '-1' must be an integer >= 0"),
        ({"overrides": {"x": {"uplink_mbps": 1}}}, "client id 'x' must be an integer >= 0"),
        ({"overrides": {"3": {"jitter_ms": 1}}}, "unknown key network.overrides.3.jitter_ms"),
        ({"overrides": {"3": {"uplink_mbps": 0}}}, "network.overrides.3.uplink_mbps must be > 0"),
        ({"overrides": {"3": {"latency_ms": True}}}, "network.overrides.3.latency_ms must be a number"),
        ({"overrides": {"3": 1}}, "network.overrides.3 must be a table"),
        ({"overrides": {"3": {}, "03": {}}}, "client 3 is given twice"),
    ],
)
def test_bad_network_values_are_one_line_config_errors(raw, needle) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"network": raw})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_changed_network_is_a_config_difference_and_old_configs_count_as_defaults() -> None:
    cfg = RunConfig.from_dict({"network": {"uplink_mbps": 5}})
    saved = RunConfig().to_dict()
    assert cfg.differences(saved) == ["network.uplink_mbps"]
    old = {k: v for k, v in saved.items() if k != "network"}  # a summary from before [network] existed
    assert RunConfig().differences(old) == []


# -- the model, by hand -------------------------------------------------------------------------------------
def test_transfer_and_client_time_by_hand() -> None:
    assert transfer_s(1_000_000, 8.0, 0.0) == pytest.approx(1.0)  # 8 Mbit over 8 Mbit/s
    assert transfer_s(0, 100.0, 30.0) == pytest.approx(0.03)
    net = NetworkConfig(uplink_mbps=10, downlink_mbps=40, latency_ms=20)
    # 5 MB down at 40 Mbit/s = 1 s, 2.5 s compute, 1.25 MB up at 10 Mbit/s = 1 s, two round trips 0.04 s
    assert client_time(net, 0, 2.5, 5_000_000, 1_250_000) == pytest.approx(1 + 2.5 + 1 + 0.04)
    assert client_time(net, 0, None, 0, 0) == pytest.approx(0.04)  # an untimed client computes in no time


def test_the_round_waits_for_the_slowest_replying_client() -> None:
    net = NetworkConfig(uplink_mbps=8, downlink_mbps=80, latency_ms=0, overrides={"2": {"uplink_mbps": 0.8}})
    down = {0: 1_000_000, 1: 1_000_000, 2: 1_000_000, 3: 1_000_000}
    up = {0: 100_000, 1: 100_000, 2: 100_000}
    compute = {0: 1.0, 1: 2.0, 2: 0.5}  # client 3 got the model but never replied: not waited for
    # client 1: 0.1 + 2.0 + 0.1 = 2.2 s; client 2 (slow uplink): 0.1 + 0.5 + 1.0 = 1.6 s
    assert round_time(net, compute, down, up) == pytest.approx(2.2)
    assert round_time(net, {**compute, 2: 1.5}, down, up) == pytest.approx(2.6)
    assert round_time(net, {}, down, {}) == pytest.approx(0.1)  # no reply: the slowest download
    assert round_time(net, {}, {}, {}) == 0.0
    first = sim_columns(net, None, compute, down, up)
    assert first == {"sim_round_s": pytest.approx(2.2), "sim_time_s": pytest.approx(2.2)}
    second = sim_columns(net, first, compute, down, up)
    assert second["sim_time_s"] == pytest.approx(4.4)
    assert sim_columns(net, {"round": 1}, compute, down, up)["sim_time_s"] is None  # an old row: unknown


# -- a toy run ----------------------------------------------------------------------------------------------
def _cfg(network: NetworkConfig) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="toy", head="train"),  # every download the same size (the head each round)
        data=DataConfig(num_clients=4),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8, optimizer="adam", head_lr=None),
        fl=FLConfig(rounds=3, clients_per_round=2, target_metric=0.5),
        codec=CodecConfig("identity"),
        network=network,
    )


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_simulated_times_follow_the_rows_and_leave_the_training_alone(tmp_path) -> None:
    slow = NetworkConfig(
        uplink_mbps=0.01, downlink_mbps=0.1, latency_ms=250, overrides={"1": {"uplink_mbps": 0.001}}
    )
    fast = run(_cfg(NetworkConfig()), tmp_path / "fast", workload=ToyWorkload(4))
    slowed = run(_cfg(slow), tmp_path / "slow", workload=ToyWorkload(4))
    rows_fast, rows_slow = _rows(tmp_path / "fast"), _rows(tmp_path / "slow")
    assert strip_times(rows_fast) == strip_times(rows_slow)  # the network changes no byte and no value
    assert slowed["final_metric"] == fast["final_metric"]
    total = 0.0
    for row in rows_slow:
        # identity frames: every client sends and receives the same number of bytes
        n = len(row["replied"])
        up, down = row["uplink_bytes"] / n, row["downlink_bytes"] / len(row["clients"])
        want = max(
            8 * down / (slow.link(c)[1] * 1e6)
            + s
            + 8 * up / (slow.link(c)[0] * 1e6)
            + 2 * slow.link(c)[2] / 1e3
            for c, s in ((int(k), v) for k, v in row["client_s"].items())
        )
        total += want
        assert row["sim_round_s"] == pytest.approx(want)
        assert row["sim_time_s"] == pytest.approx(total)
    assert rows_slow[-1]["sim_time_s"] > rows_fast[-1]["sim_time_s"]
    assert slowed["sim_time_s"] == rows_slow[-1]["sim_time_s"]
    hit = next((r for r in rows_slow if r["eval_metric"] >= 0.5), None)
    assert hit is not None, "the toy run should reach 0.5"
    assert slowed["sim_time_to_target_s"] == hit["sim_time_s"]
    assert slowed["total_bytes_to_target"] == hit["cum_uplink_bytes"] + hit["cum_downlink_bytes"]
    assert (
        slowed["total_bytes_to_target"]
        == slowed["uplink_bytes_to_target"] + slowed["downlink_bytes_to_target"]
    )
    assert slowed["config"]["network"]["overrides"] == {"1": {"uplink_mbps": 0.001}}
