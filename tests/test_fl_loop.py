"""The round loop on the toy workload: FedAvg, error feedback, ledger, outputs, resume, captures."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from safetensors.torch import load_file

import fedsqueeze.fl.loop as loop
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import derive_seed, run, sample_clients
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.fl.toy import ToyWorkload
from support.loop import CrashError, CrashingToy, N, make_config, rows_of, strip_times


def test_identity_codec_equals_plain_fedavg(tmp_path):
    cfg = make_config("identity", rounds=3, server_lr=0.7)
    run(cfg, tmp_path, workload=ToyWorkload(N))
    got = load_checkpoint(tmp_path)

    # Reference: plain FedAvg on the raw updates, no bytes, no codec.
    wl = ToyWorkload(N)
    lora, head = wl.initial_params()
    for r in range(1, 4):
        ups, hups, ws = [], [], []
        for c in sample_clients(1, r, N, 2):
            nl, nh, _ = wl.train_client(
                c, lora, head, cfg.train, seed=derive_seed(1, r, c, "train") & (2**63 - 1)
            )
            ups.append(wl.lora_spec.flatten(lora) - wl.lora_spec.flatten(nl))
            hups.append(wl.head_spec.flatten(head) - wl.head_spec.flatten(nh))
            ws.append(wl.client_num_examples(c))
        for spec, name in ((wl.lora_spec, "lora"), (wl.head_spec, "head")):
            vecs = ups if name == "lora" else hups
            mean = sum((w / sum(ws)) * v.double() for w, v in zip(ws, vecs, strict=True))
            cur = lora if name == "lora" else head
            new = spec.unflatten((spec.flatten(cur).double() - 0.7 * mean).float())
            if name == "lora":
                lora = new
            else:
                head = new
    for k in lora:
        assert torch.equal(got["lora"][k], lora[k]), k
    for k in head:
        assert torch.equal(got["head"][k], head[k]), k
    assert all(r["rel_error"] == 0.0 for r in rows_of(tmp_path))


def test_ledger_counts_every_payload(tmp_path, monkeypatch):
    sent: dict[int, list[int]] = {}
    real_step = loop.client_step

    def spy(*args, **kwargs):
        rep = real_step(*args, **kwargs)
        sent.setdefault(len(sent_round), []).append(len(rep.lora_payload) + len(rep.head_payload))
        return rep

    sent_round: list[int] = []
    real_round = loop._Federation.run_round

    def round_spy(self, r, capture):
        sent_round.append(r)
        return real_round(self, r, capture)

    monkeypatch.setattr(loop, "client_step", spy)
    monkeypatch.setattr(loop._Federation, "run_round", round_spy)
    wl = ToyWorkload(N)
    run(make_config(rounds=3), tmp_path, workload=wl)
    rows = rows_of(tmp_path)
    cum = 0
    lora_down, head_down = 32 + 4 * wl.lora_spec.numel, 32 + 4 * wl.head_spec.numel
    dense_down = lora_down + head_down
    for row in rows:
        assert row["uplink_bytes"] == sum(sent[row["round"]])
        assert row["uplink_bytes"] == row["uplink_lora_bytes"] + row["uplink_head_bytes"]
        assert row["uplink_head_bytes"] == 2 * (32 + 4 * wl.head_spec.numel)
        # round 1: every client already holds the initial head; later the trained head is new to all
        assert row["downlink_bytes"] == 2 * (lora_down if row["round"] == 1 else dense_down)
        cum += row["uplink_bytes"]
        assert row["cum_uplink_bytes"] == cum
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total_uplink_bytes"] == cum
    assert summary["total_downlink_bytes"] == 3 * 2 * dense_down - 2 * head_down


def test_error_feedback_persists_while_a_client_sits_out():
    cfg = make_config(rounds=4)
    fed = loop._Federation(cfg, ToyWorkload(N))
    fed.run_round(1, False)
    first = set(sample_clients(1, 1, N, 2))
    res1 = {c: fed.efs[c].residual for c in range(N)}
    assert all((res1[c] is not None) == (c in first) for c in range(N))
    assert all(float(res1[c].norm()) > 0 for c in first)
    for r in (2, 3):
        fed.run_round(r, False)
        for c in set(range(N)) - set(sample_clients(1, r, N, 2)):
            before = res1[c]
            after = fed.efs[c].residual
            assert (before is None and after is None) or torch.equal(before, after)
        res1 = {c: None if fed.efs[c].residual is None else fed.efs[c].residual.clone() for c in range(N)}

    off = loop._Federation(make_config(rounds=4, error_feedback=False), ToyWorkload(N))
    off.run_round(1, False)
    assert all(ef.residual is None for ef in off.efs)


def test_outputs_fields_eval_schedule_and_target(tmp_path):
    summary = run(make_config(rounds=5, eval_every=2, target_metric=0.5), tmp_path, workload=ToyWorkload(N))
    rows = rows_of(tmp_path)
    need = {
        "round", "uplink_bytes", "cum_uplink_bytes", "downlink_bytes", "cum_downlink_bytes", "train_loss",
        "eval_metric", "eval_metric_name", "wall_s", "clients", "rel_error", "client_rel_error",
        "residual_norms",
    }  # fmt: skip
    assert all(need <= set(r) for r in rows)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["eval_metric"] is not None for r in rows] == [False, True, False, True, True]  # last always
    assert rows[0]["eval_metric_name"] == "accuracy"
    assert all(r["rel_error"] >= 0 for r in rows) and all(len(r["residual_norms"]) == 2 for r in rows)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "final_metric", "best_metric", "rounds_to_target", "uplink_bytes_to_target", "total_uplink_bytes",
        "total_downlink_bytes", "wall_s", "config", "seed", "versions",
    ):  # fmt: skip
        assert key in on_disk
    assert on_disk["config"] == make_config(rounds=5, eval_every=2, target_metric=0.5).to_dict()
    assert on_disk["versions"]["torch"] == metadata.version("torch")
    assert on_disk["versions"]["device"] == "cpu"  # where local training ran
    evals = [r for r in rows if r["eval_metric"] is not None]
    assert summary["final_metric"] == evals[-1]["eval_metric"]
    assert summary["best_metric"] == max(r["eval_metric"] for r in evals)
    hit = next(r for r in evals if r["eval_metric"] >= 0.5)
    assert (summary["rounds_to_target"], summary["uplink_bytes_to_target"]) == (
        hit["round"],
        hit["cum_uplink_bytes"],
    )
    assert (tmp_path / "accuracy_vs_uplink.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("codec", "options", "downlink"),
    # stateful codecs (flm_topk keeps NumPy values in its state); the FLASC downlink; a predictive uplink
    # (its reference, the last delta frame, is rebuilt from the checkpointed downlink state)
    [
        ("flm_topk", {"reoptimize_every": 2}, "identity"),
        ("powersgd", {"rank": 1}, "topk"),
        ("predictive", {"inner": "topk", "inner_options": {"rate": 8.0}, "predictor": "scalar"}, "topk"),
    ],
)
def test_resume_equals_uninterrupted(tmp_path, codec, options, downlink):
    cfg = make_config(codec, options, downlink=downlink, rounds=4)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    s_whole = run(cfg, whole, workload=ToyWorkload(N), capture_rounds="all")
    with pytest.raises(CrashError):
        run(
            cfg, cut, workload=CrashingToy(crash_after_calls=2 * 2 + 1), capture_rounds="all"
        )  # dies in round 3
    assert len(rows_of(cut)) == 2
    with pytest.raises(ConfigError, match="resume"):
        run(cfg, cut, workload=ToyWorkload(N))  # refuses to overwrite a run
    s_cut = run(cfg, cut, workload=ToyWorkload(N), resume=True, capture_rounds="all")

    a, b = load_checkpoint(whole), load_checkpoint(cut)
    for part in ("lora", "head"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    for ca, cb in zip(a["clients"], b["clients"], strict=True):
        assert (ca["residual"] is None) == (cb["residual"] is None)
        if ca["residual"] is not None:
            assert torch.equal(ca["residual"], cb["residual"])
        assert ca["codec_state"].keys() == cb["codec_state"].keys()
        for k, va in ca["codec_state"].items():
            assert (
                torch.equal(va, cb["codec_state"][k]) if torch.is_tensor(va) else va == cb["codec_state"][k]
            )
    assert strip_times(rows_of(whole)) == strip_times(rows_of(cut))
    # timings (and the simulated times made from them) and the folder differ
    drop = ("wall_s", "load_s", "elapsed_s", "out_dir", "sim_time_s", "sim_time_to_target_s")
    assert {k: v for k, v in s_whole.items() if k not in drop} == {
        k: v for k, v in s_cut.items() if k not in drop
    }
    ta, tb = load_file(str(whole / "captures.safetensors")), load_file(str(cut / "captures.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

    # fl.rounds may grow on resume; anything else may not.
    more = make_config(codec, options, downlink=downlink, rounds=5)
    assert run(more, cut, workload=ToyWorkload(N), resume=True)["rounds"] == 5
    with pytest.raises(ConfigError, match="fl.server_lr"):
        run(
            make_config(codec, options, downlink=downlink, rounds=6, server_lr=0.5),
            cut,
            workload=ToyWorkload(N),
            resume=True,
        )


def test_capture_updates_are_raw_pre_compression_updates(tmp_path):
    cfg = make_config(rounds=3)
    run(cfg, tmp_path, workload=ToyWorkload(N), capture_rounds="1,3")
    caps = load_file(str(tmp_path / "captures.safetensors"))
    wl = ToyWorkload(N)
    expect = {
        f"r{r}/c{c}/{name}" for r in (1, 3) for c in sample_clients(1, r, N, 2) for name in wl.lora_spec.names
    }
    assert set(caps) == expect
    assert all(t.dtype == torch.float32 for t in caps.values())
    lora, head = wl.initial_params()
    c = sample_clients(1, 1, N, 2)[0]
    new, _, _ = wl.train_client(c, lora, head, cfg.train, seed=derive_seed(1, 1, c, "train") & (2**63 - 1))
    for name in wl.lora_spec.names:
        assert torch.equal(caps[f"r1/c{c}/{name}"], lora[name] - new[name])


def test_capture_rounds_parsing():
    assert loop.parse_capture_rounds("1, 2,5") == {1, 2, 5}
    assert loop.parse_capture_rounds("all") == "all"
    assert loop.parse_capture_rounds(None) == frozenset()
    for bad in ("x", "0"):
        with pytest.raises(ConfigError, match="capture"):
            loop.parse_capture_rounds(bad)


@pytest.mark.slow
def test_default_preset_meets_its_promise(tmp_path):
    """The embedded default: <= 10 minutes on the 2-core CPU and held-out accuracy >= 0.72."""
    from fedsqueeze.config import load_config

    summary = run(load_config(), tmp_path)
    assert summary["final_metric"] >= 0.72
    assert summary["wall_s"] <= 600


def test_checkpoint_keeps_numpy_values_exactly(tmp_path):
    import numpy as np

    from fedsqueeze.fl.checkpoint import save_checkpoint

    state = {
        "a": np.float32(0.1),
        "b": [np.arange(5, dtype=np.int16), (np.uint64(2**63 + 1), "x")],
        "t": torch.ones(2),
        "raw": b"\x00\x01",
    }
    save_checkpoint(tmp_path, state)
    back = load_checkpoint(tmp_path)
    assert type(back["a"]) is np.float32 and back["a"] == np.float32(0.1)
    assert back["b"][0].dtype == np.int16 and back["b"][0].tolist() == list(range(5))
    assert back["b"][1] == (np.uint64(2**63 + 1), "x") and type(back["b"][1][0]) is np.uint64
    assert torch.equal(back["t"], torch.ones(2)) and back["raw"] == b"\x00\x01"


def test_device_name_says_cpu_or_names_the_gpu(monkeypatch):
    from fedsqueeze.fl.report import device_name

    assert device_name("cpu") == device_name(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    assert device_name("cuda") == "cuda:1 (GPU1)"  # the current device when none is named
    assert device_name("cuda:0") == "cuda:0 (GPU0)"
