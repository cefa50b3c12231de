"""fedsqueeze's Flower job with a stock Flower strategy in place of its own: the job's real ClientApp (with
``downlink_mod`` + ``compress_mod``) over the fake Grid, the server running ``Compressed(FedAdam(...))`` or
``Compressed(<a Flower DP wrapper>(FedAvg(...)))`` through the one driver (``run_rounds(strategy=...)``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("flwr")

from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam, FedAvg
from safetensors.torch import load_file

from fedsqueeze.errors import ConfigError
from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.settings import make_workload
from support.flower import FakeGrid, make_config

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("task_identity"),
]
N = 4


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def flat_final(out) -> torch.Tensor:
    got = load_file(str(out / "final_params.safetensors"))
    return torch.cat([got[k].reshape(-1).double() for k in sorted(got)])


def flat_initial(settings) -> torch.Tensor:
    lora, head = make_workload(settings).initial_params()
    got = {f"lora/{k}": v for k, v in lora.items()} | {f"head/{k}": v for k, v in head.items()}
    return torch.cat([got[k].reshape(-1).double() for k in sorted(got)])


def run(tmp_path, name, strategy, rounds=3, **cfg):
    from fedsqueeze.flower.server_app import run_rounds

    settings = FlowerSettings(make_config(n=N, k=2, rounds=rounds, **cfg), round_timeout=5)
    summary = run_rounds(FakeGrid(settings, N), settings, tmp_path / name, strategy=strategy)
    return settings, summary, rows(tmp_path / name)


def test_the_job_runs_with_flowers_fedadam_in_place_of_its_own_strategy(tmp_path):
    strategy = FedAdam(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=N)
    settings, summary, got = run(tmp_path, "fedadam", strategy)
    assert [r["round"] for r in got] == [1, 2, 3]
    for r in got:
        assert r["strategy"] == "FedAdam" and r["aggregated"] and r["num_dropped"] == 0
        assert len(r["clients"]) == 2 and r["replied"] == r["clients"]
        fs = r["fedsqueeze"]
        assert fs["fedsqueeze_compressed_replies"] == 2 and fs["fedsqueeze_plain_replies"] == 0
        # topk at density 0.1: the frames are a fraction of the dense replies FedAdam receives
        assert 0 < fs["fedsqueeze_frame_bytes"] < fs["fedsqueeze_dense_uplink_bytes"] / 3
        assert r["uplink_bytes"] == fs["fedsqueeze_uplink_bytes"] > 0
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["eval_metric"])
    assert summary["total_uplink_bytes"] == sum(r["uplink_bytes"] for r in got)
    assert summary["engine"] == "flower"
    moved = flat_final(tmp_path / "fedadam") - flat_initial(settings)
    assert float(moved.norm()) > 0  # FedAdam's aggregate became the global model
    with pytest.raises(ConfigError, match="does not resume"):
        from fedsqueeze.flower.server_app import run_rounds

        again = FlowerSettings(settings.config, round_timeout=5, resume=True)
        run_rounds(FakeGrid(again, N), again, tmp_path / "fedadam", strategy=FedAdam())


# Server-side fixed clipping is the DP wrapper that composes with compressed replies whatever the codec:
# Compressed (outermost) decodes each frame into the dense reply the DP wrapper expects, and the wrapper
# clips θ_i − θ_global of those decoded replies and adds its noise to the aggregate. Client-side clipping
# would clip u on the node, but the frame sent is C(u + residual), whose norm error feedback does not bound
# (docs/flower-dropin.md, Caveats).
def dp(noise: float, clip: float) -> DifferentialPrivacyServerSideFixedClipping:
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=N, min_available_nodes=N)
    return DifferentialPrivacyServerSideFixedClipping(
        inner, noise_multiplier=noise, clipping_norm=clip, num_sampled_clients=N
    )


def test_the_job_runs_with_its_aggregation_wrapped_in_flowers_dp_fixed_clipping(tmp_path):
    fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=N, min_available_nodes=N)
    settings, _, plain = run(tmp_path, "fedavg", fedavg, rounds=2)
    start = flat_initial(settings)
    free = float((flat_final(tmp_path / "fedavg") - start).norm())
    clip = free / 20  # well below what each client's update moves the model

    _, _, clipped = run(tmp_path, "clipped", dp(0.0, clip), rounds=2)
    moved = float((flat_final(tmp_path / "clipped") - start).norm())
    assert 0 < moved <= 2 * clip * (1 + 1e-4)  # every round's aggregate of clipped updates is within `clip`
    assert all(
        r["aggregated"] and r["strategy"] == "DifferentialPrivacyServerSideFixedClipping" for r in clipped
    )
    assert [r["uplink_bytes"] for r in clipped] == [r["uplink_bytes"] for r in plain]  # topk: same sizes

    _, _, noisy = run(tmp_path, "noisy", dp(1.0, clip), rounds=2)
    diff = float((flat_final(tmp_path / "noisy") - flat_final(tmp_path / "clipped")).norm())
    assert diff > clip / 10  # the wrapper's Gaussian noise (std = noise · clip / N per coordinate) was added
    assert all(r["fedsqueeze"]["fedsqueeze_compressed_replies"] == N for r in noisy)
