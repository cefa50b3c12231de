"""The TGAP phase in ``fedsqueeze run``: the 30/70 split, the ``[tgap]`` section, the traffic, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fedsqueeze.fl.loop as loop
from fedsqueeze.cg_fedllm import store
from fedsqueeze.cg_fedllm.split import client_split, restrict_workload, split_workload
from fedsqueeze.cg_fedllm.tgap import tgap_pretrain
from fedsqueeze.config import (
    CodecConfig,
    DataConfig,
    FLConfig,
    LocalTrainConfig,
    ModelConfig,
    RunConfig,
    TGAPConfig,
    load_config,
)
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.federation import check_same_config
from fedsqueeze.fl.toy import ToyWorkload
from fedsqueeze.wire.frame import HEADER

N = 6
IDENTITY, CG, CGQ = 1, 30, 31


def make_config(codec: str = "cg_fedllm", rounds: int = 2, **tgap) -> RunConfig:
    tgap = {"enabled": True, "rounds": 2, "steps": 8, "depth": 3, "batch_size": 4, **tgap}
    return RunConfig(
        model=ModelConfig(name="toy", lora_r=4),
        data=DataConfig(num_clients=N),
        train=LocalTrainConfig(lr=0.05, max_steps=3, batch_size=8),
        fl=FLConfig(rounds=rounds, clients_per_round=3, seed=1, error_feedback=False),
        codec=CodecConfig(codec, {"rate": 8.0} if codec == "cg_fedllm_q" else {}),
        tgap=TGAPConfig(**tgap),
    )


def codec_of(frame: bytes) -> int:
    return HEADER.unpack_from(frame)[2]


def body_fingerprint(frame: bytes) -> str:
    return frame[HEADER.size + 1 : HEADER.size + 9].hex()  # body: version (1 byte), fingerprint (8 bytes)


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the split ------------------------------------------------------------------------------------------
def test_split_is_disjoint_30_70_per_client_and_deterministic() -> None:
    sizes = [2, 3, 10, 57, 100]
    pre, rest = client_split(sizes, 0.3, seed=7)
    for n, a, b in zip(sizes, pre, rest, strict=True):
        assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(n))  # disjoint and covering
        assert len(a) == min(max(round(0.3 * n), 1), n - 1)
        assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)
    again = client_split(sizes, 0.3, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(pre + rest, again[0] + again[1], strict=True))
    other = client_split(sizes, 0.3, seed=8)[0]
    assert any(not np.array_equal(x, y) for x, y in zip(pre, other, strict=True))
    with pytest.raises(ConfigError, match="at least 2"):
        client_split([5, 1], 0.3, seed=0)


def test_restrict_workload_keeps_the_chosen_examples_of_each_client() -> None:
    wl = ToyWorkload(N, seed=3)
    pre, rest, info = split_workload(wl, 0.3, seed=3)
    assert info["pre_examples"] == [pre.client_num_examples(c) for c in range(N)]
    assert info["faf_examples"] == [rest.client_num_examples(c) for c in range(N)]
    pre_idx, rest_idx = client_split([wl.client_num_examples(c) for c in range(N)], 0.3, seed=3)
    for c in range(N):
        x, y = wl.clients[c]
        assert torch.equal(pre.clients[c][0], x[torch.as_tensor(pre_idx[c])])
        assert torch.equal(rest.clients[c][1], y[torch.as_tensor(rest_idx[c])])
        assert pre.client_num_examples(c) + rest.client_num_examples(c) == wl.client_num_examples(c)
    assert len(wl.clients[0][1]) == wl.client_num_examples(0)  # the original is untouched
    assert pre.test is wl.test and pre.lora_spec == wl.lora_spec

    class Parts:  # PeftWorkload's layout: one sorted index array per client
        def __init__(self) -> None:
            self.parts = [np.array([3, 5, 9, 11]), np.array([0, 1, 2])]

        def num_clients(self) -> int:
            return len(self.parts)

        def client_num_examples(self, c: int) -> int:
            return len(self.parts[c])

    p = Parts()
    sub = restrict_workload(p, [np.array([1, 3]), np.array([0])])
    assert [s.tolist() for s in sub.parts] == [[5, 11], [0]] and len(p.parts[0]) == 4

    class Opaque(Parts):
        def __init__(self) -> None:
            self.shards = [np.arange(4), np.arange(3)]
            self.parts = None  # type: ignore[assignment]

        def num_clients(self) -> int:
            return 2

    with pytest.raises(ConfigError, match="cannot split"):
        restrict_workload(Opaque(), [np.array([0]), np.array([0])])


# -- the [tgap] section ---------------------------------------------------------------------------------
def test_tgap_section_defaults_and_overrides() -> None:
    cfg = RunConfig()
    assert cfg.tgap == TGAPConfig() and cfg.tgap.enabled is False
    tg = cfg.tgap
    assert (tg.fraction, tg.collection, tg.lr, tg.device) == (0.3, "federated", 2e-4, "cpu")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    got = load_config(
        "smoke", ["codec.name=cg_fedllm", "codec.options={}", "tgap.enabled=true", "tgap.collection=local"]
    )
    assert got.tgap.enabled and got.tgap.collection == "local" and got.tgap_variant == "paper"
    assert make_config("cg_fedllm_q").tgap_variant == "sound"
    assert make_config(variant="sound").tgap_variant == "sound"


@pytest.mark.parametrize(
    ("tgap", "codec", "match"),
    [
        ({"colour": 1}, None, "unknown key tgap.colour"),
        ({"fraction": 1.0}, None, "tgap.fraction"),
        ({"fraction": "a lot"}, None, "tgap.fraction must be a number"),
        ({"collection": "gossip"}, None, "tgap.collection"),
        ({"rounds": 0}, None, "tgap.rounds"),
        ({"steps": -1}, None, "tgap.steps"),
        ({"lr": 0}, None, "tgap.lr"),
        ({"variant": "bigger"}, None, "tgap.variant"),
        ({"depth": 9}, None, "tgap.depth"),
        ({"device": "tpu"}, None, "tgap.device"),
        ({"enabled": "yes"}, None, "tgap.enabled must be true or false"),
        ({"enabled": True}, {"name": "topk"}, "set codec.name"),
        ({"enabled": True}, {"name": "cg_fedllm", "options": {"model_path": "x.safetensors"}}, "model_path"),
    ],
)
def test_bad_tgap_keys_and_values_raise_config_error(tgap, codec, match) -> None:
    data = {"codec": codec or {"name": "cg_fedllm"}, "tgap": tgap}
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(data)


def test_old_checkpoints_without_a_tgap_section_still_resume() -> None:
    now = RunConfig().to_dict()
    saved = {k: v for k, v in now.items() if k != "tgap"}
    check_same_config(saved, now)  # no error
    with pytest.raises(ConfigError, match="tgap.enabled"):
        check_same_config(saved, {**now, "tgap": {**now["tgap"], "enabled": True}})


# -- the phase in the engine ------------------------------------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """Every client reply of the run, in order (TGAP rounds use identity frames, FAF cg_fedllm ones)."""
    replies = []
    real = loop.client_step

    def wrapped(*args, **kwargs):
        rep = real(*args, **kwargs)
        replies.append(rep)
        return rep

    monkeypatch.setattr(loop, "client_step", wrapped)
    return replies


def test_federated_tgap_trains_saves_and_feeds_faf(tmp_path, spy) -> None:
    cfg = make_config(rounds=2)
    summary = run(cfg, tmp_path, workload=ToyWorkload(N, seed=1))
    folder = tmp_path / "tgap"
    model = store.load(folder / "ae.safetensors")
    side = json.loads((folder / "ae.json").read_text())
    tg = summary["tgap_traffic"]
    assert tg["fingerprint"] == side["fingerprint"] == model.fingerprint().hex()

    tgap_replies = [r for r in spy if codec_of(r.lora_payload) == IDENTITY]
    faf_replies = [r for r in spy if codec_of(r.lora_payload) == CG]
    assert len(tgap_replies) == 2 * 3 and len(faf_replies) == 2 * 3 and len(spy) == 12
    # FAF uses the saved model: its fingerprint is in every frame
    assert {body_fingerprint(r.lora_payload) for r in faf_replies} == {tg["fingerprint"]}

    # traffic: every TGAP payload + the global-model downloads + the encoder to each of the N clients
    snapshot_bytes = sum(len(r.lora_payload) for r in tgap_replies)
    head_bytes = sum(len(r.head_payload) for r in tgap_replies)
    tgap_rows = rows_of(folder / "metrics.jsonl")
    model_down = sum(r["downlink_bytes"] for r in tgap_rows)
    assert tg["snapshots"] == len(tgap_replies) and tg["steps"] == 8
    assert tg["snapshot_bytes"] == snapshot_bytes and tg["uplink_bytes"] == snapshot_bytes + head_bytes
    assert tg["encoder_bytes"] == model.encoder_bytes() == side["encoder_bytes"]
    assert tg["downlink_bytes"] == model_down + model.encoder_bytes() * N
    faf_rows = rows_of(tmp_path / "metrics.jsonl")
    assert summary["faf_uplink_bytes"] == sum(r["uplink_bytes"] for r in faf_rows)
    assert summary["total_uplink_bytes"] == summary["faf_uplink_bytes"] + tg["uplink_bytes"]
    assert summary["total_downlink_bytes"] == summary["faf_downlink_bytes"] + tg["downlink_bytes"]
    assert "total_uplink_bytes" in summary["totals_include_tgap"]
    assert summary["codec_options"]["model_path"] == str(folder / "ae.safetensors")

    # each phase trains on its own share: the replies' example counts are the split's
    for rep in tgap_replies:
        assert rep.num_examples == tg["split"]["pre_examples"][rep.client]
    for rep in faf_replies:
        assert rep.num_examples == tg["split"]["faf_examples"][rep.client]


def test_local_tgap_counts_each_snapshot_once_and_sound_variant_for_q(tmp_path, spy) -> None:
    cfg = make_config("cg_fedllm_q", rounds=1, collection="local")
    wl = ToyWorkload(N, seed=1)
    summary = run(cfg, tmp_path, workload=wl)
    tg = summary["tgap_traffic"]
    assert tg["variant"] == "sound" and tg["collection"] == "local"
    assert tg["snapshots"] == N * cfg.tgap.rounds  # every client, every local round
    frame = 32 + 4 * wl.lora_spec.numel  # one identity frame per snapshot
    assert tg["uplink_bytes"] == tg["snapshot_bytes"] == tg["snapshots"] * frame
    assert tg["downlink_bytes"] == tg["encoder_bytes"] * N
    assert all(codec_of(r.lora_payload) == CGQ for r in spy)  # local collection goes through no round
    assert {body_fingerprint(r.lora_payload) for r in spy} == {tg["fingerprint"]}
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "tgap" / "captures.safetensors"))
    assert len(keys) == tg["snapshots"] * len(wl.lora_spec.names)


def test_resume_reuses_the_tgap_model_and_equals_the_uninterrupted_run(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run(make_config(rounds=1), a, workload=ToyWorkload(N, seed=1))
    model_file = a / "tgap" / "ae.safetensors"
    stamp = model_file.stat().st_mtime_ns
    resumed = run(make_config(rounds=2), a, resume=True, workload=ToyWorkload(N, seed=1))
    assert model_file.stat().st_mtime_ns == stamp  # reused, not retrained
    straight = run(make_config(rounds=2), b, workload=ToyWorkload(N, seed=1))
    assert resumed["tgap_traffic"]["fingerprint"] == straight["tgap_traffic"]["fingerprint"]
    drop = ("wall_s", "train_s", "client_s", "sim_round_s", "sim_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_of(a / "metrics.jsonl")] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_of(b / "metrics.jsonl")
    ]
    assert resumed["total_uplink_bytes"] == straight["total_uplink_bytes"]


def test_disabled_tgap_leaves_the_summary_as_before(tmp_path) -> None:
    cfg = RunConfig(
        model=ModelConfig(name="toy", lora_r=4),
        data=DataConfig(num_clients=N),
        train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8),
        fl=FLConfig(rounds=1, clients_per_round=2),
        codec=CodecConfig("identity"),
    )
    summary = run(cfg, tmp_path, workload=ToyWorkload(N))
    assert summary["tgap_traffic"] is None and summary["totals_include_tgap"] == []
    assert "faf_uplink_bytes" not in summary and not (tmp_path / "tgap").exists()


# -- device -----------------------------------------------------------------------------------------------
def test_pretrain_device_argument() -> None:
    from fedsqueeze.cg_fedllm.autoencoder import AEConfig
    from fedsqueeze.cg_fedllm.tgap import TGAPConfig as Pretrain

    wl = ToyWorkload(2, rank=4)
    snaps = torch.randn(4, wl.lora_spec.numel) * 1e-2
    kw = {"ae": AEConfig(depth=2), "config": Pretrain(steps=3, batch_size=2)}
    a, _ = tgap_pretrain(snaps, wl.lora_spec, **kw)
    b, log = tgap_pretrain(snaps, wl.lora_spec, device="cpu", **kw)
    assert a.fingerprint() == b.fingerprint() and log["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            tgap_pretrain(snaps, wl.lora_spec, device="cuda", **kw)
    else:  # pragma: no cover - GPU machines only
        c, log = tgap_pretrain(snaps, wl.lora_spec, device="cuda", **kw)
        assert next(c.parameters()).device.type == "cpu" and log["device"].startswith("cuda")


def test_cli_parsers_accept_device() -> None:
    import argparse

    from fedsqueeze.cli import bench_cg
    from fedsqueeze.cli import tgap as cli_tgap

    for mod in (cli_tgap, bench_cg):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        extra = ["--out", "x.safetensors"] if mod is cli_tgap else []
        assert p.parse_args(["caps.safetensors", *extra]).device == "cpu"
        assert p.parse_args(["caps.safetensors", *extra, "--device", "cuda:0"]).device == "cuda:0"
