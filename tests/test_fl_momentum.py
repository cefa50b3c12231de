"""FedAvgM server momentum: the update rule, β = 0 is FedAvg, and resume keeps the momentum buffer."""

from __future__ import annotations

import pytest
import torch

from fedsqueeze.config import FLConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.fl.server import ServerMomentum
from fedsqueeze.fl.toy import ToyWorkload
from support.loop import CrashError, CrashingToy, make_config, rows_of, strip_times

N = 6


def test_momentum_rule() -> None:
    m = ServerMomentum(0.5)
    a, b = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([3.0, 0.0], dtype=torch.float64)
    assert torch.equal(m.step("lora", a), a)
    assert torch.equal(m.step("lora", b), 0.5 * a + b)
    assert torch.equal(m.step("head", b), b)  # parts have separate buffers
    zero = ServerMomentum(0.0)
    assert zero.step("lora", a) is a  # plain FedAvg: untouched


def test_beta_zero_is_fedavg_and_beta_changes_the_trajectory(tmp_path) -> None:
    base = run(make_config(rounds=3), tmp_path / "a", workload=ToyWorkload(N))
    same = run(make_config(rounds=3, server_momentum=0.0), tmp_path / "b", workload=ToyWorkload(N))
    mom = run(make_config(rounds=3, server_momentum=0.9), tmp_path / "c", workload=ToyWorkload(N))
    a, b, c = (load_checkpoint(tmp_path / x) for x in "abc")
    assert all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
    assert not all(torch.equal(a["lora"][k], c["lora"][k]) for k in a["lora"])
    assert base["total_uplink_bytes"] == same["total_uplink_bytes"] == mom["total_uplink_bytes"]


def test_resume_keeps_the_momentum_buffer(tmp_path) -> None:
    cfg = make_config(rounds=4, server_momentum=0.9)
    run(cfg, tmp_path / "whole", workload=ToyWorkload(N))
    with pytest.raises(CrashError):
        run(cfg, tmp_path / "cut", workload=CrashingToy(crash_after_calls=2 * 2 + 1))
    run(cfg, tmp_path / "cut", workload=ToyWorkload(N), resume=True)
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
    assert strip_times(rows_of(tmp_path / "whole")) == strip_times(rows_of(tmp_path / "cut"))


def test_invalid_momentum_named() -> None:
    with pytest.raises(ConfigError, match="server_momentum"):
        FLConfig(server_momentum=1.0)
