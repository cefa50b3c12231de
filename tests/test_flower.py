"""Flower adapter: the job of `fedsqueeze run`, in-process (fake Grid) and on a real loopback deployment."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from safetensors.torch import load_file

from fedsqueeze.config import RunConfig
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.flower import OFFLINE_ENV, FlowerSettings
from fedsqueeze.flower.deploy import child_env, write_app, write_connection
from support.deployment import Stack, sent_log
from support.flower import FakeGrid, make_config, state_from

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def local_params(cfg: RunConfig, out: Path):
    run(cfg, out)
    ck = load_checkpoint(out)
    return ck["lora"], ck["head"]


def assert_same_params(final_file: Path, lora, head) -> None:
    got = load_file(str(final_file))
    for k, v in lora.items():
        assert torch.equal(got[f"lora/{k}"], v), k
    for k, v in head.items():
        assert torch.equal(got[f"head/{k}"], v), k


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# -- in-process: the real ClientApp / ServerApp objects over a fake Grid (no servers) ---------------------
def test_fake_grid_equals_in_process_engine(tmp_path, task_identity):
    from fedsqueeze.flower.server_app import run_rounds

    cfg = make_config()
    settings = FlowerSettings(cfg, round_timeout=5)
    summary = run_rounds(FakeGrid(settings, 4), settings, tmp_path / "flower")
    lora, head = local_params(cfg, tmp_path / "local")
    assert_same_params(tmp_path / "flower" / "final_params.safetensors", lora, head)
    local = rows(tmp_path / "local")
    for a, b in zip(rows(tmp_path / "flower"), local, strict=True):
        for key in ("clients", "uplink_bytes", "downlink_bytes", "eval_metric", "train_loss"):
            assert a[key] == b[key], key
        assert a["lora_sha256"] == b["lora_sha256"]
    assert summary["engine"] == "flower" and summary["total_uplink_bytes"] > 0


def test_flower_rows_and_summary_carry_the_same_warnings(tmp_path, task_identity, monkeypatch):
    from fedsqueeze.codecs.baselines.topk import TopK
    from fedsqueeze.flower.server_app import run_rounds

    cfg = make_config()
    settings = FlowerSettings(cfg, round_timeout=5)
    summary = run_rounds(FakeGrid(settings, 4), settings, tmp_path / "ok")
    assert [r["warnings"] for r in rows(tmp_path / "ok")] == [[]] * 3 and summary["warnings"] == []

    # topk frames decode to zeros on the clients (error feedback) and the server: an empty reconstruction.
    def zeros(cls, body, spec, *, seed):
        return torch.zeros(spec.numel, dtype=torch.float32)

    monkeypatch.setattr(TopK, "decode_flat", classmethod(zeros))
    summary = run_rounds(FakeGrid(settings, 4), settings, tmp_path / "zero")
    run(cfg, tmp_path / "local")
    msg = "mean client reconstruction error 1 >= 1: the decoded updates are no better than sending nothing"
    got = rows(tmp_path / "zero")
    assert [r["rel_error"] for r in got] == [None] * 3  # the aggregate's error is unknown under Flower
    assert [r["warnings"] for r in got] == [[{"code": "client_rel_error_high", "message": msg}]] * 3
    assert [r["warnings"] for r in got] == [r["warnings"] for r in rows(tmp_path / "local")]
    expect = [{"code": "client_rel_error_high", "message": msg, "rounds": [1, 2, 3]}]
    assert summary["warnings"] == expect
    assert json.loads((tmp_path / "zero" / "summary.json").read_text())["warnings"] == expect
    assert json.loads((tmp_path / "local" / "summary.json").read_text())["warnings"] == expect


def test_min_replies_and_dropouts(tmp_path, task_identity):
    from fedsqueeze.flower.server_app import run_rounds

    # Two of two clients must reply; one is down: every round leaves the model unchanged.
    cfg = make_config(n=2, k=2, rounds=2, min_replies=2)
    settings = FlowerSettings(cfg, round_timeout=5)
    grid = FakeGrid(settings, 2)
    grid.down = {1}
    run_rounds(grid, settings, tmp_path / "a")
    from fedsqueeze.flower.settings import make_workload

    lora0, head0 = make_workload(settings).initial_params()
    assert_same_params(tmp_path / "a" / "final_params.safetensors", lora0, head0)
    got = rows(tmp_path / "a")
    assert [r["aggregated"] for r in got] == [False, False]
    assert all(r["dropped"][0]["client"] == 1 and "no reply" in r["dropped"][0]["reason"] for r in got)
    assert all(r["uplink_bytes"] > 0 for r in got)  # client 0's bytes were received and are counted

    # min_replies = 1: the rounds go on with client 0 alone.
    settings1 = FlowerSettings(make_config(n=2, k=2, rounds=2, min_replies=1), round_timeout=5)
    grid = FakeGrid(settings1, 2)
    grid.down = {1}
    run_rounds(grid, settings1, tmp_path / "b")
    got = rows(tmp_path / "b")
    assert [r["kept"] for r in got] == [[0], [0]] and all(r["aggregated"] for r in got)
    fin = load_file(str(tmp_path / "b" / "final_params.safetensors"))
    assert not torch.equal(fin["lora/layer.lora_A"], lora0["layer.lora_A"])


def test_error_feedback_state_survives_rounds_and_restart(tmp_path, task_identity):
    from fedsqueeze.flower.server_app import run_rounds

    cfg = make_config(n=2, k=2, rounds=3)
    for state_dir, expect in ((None, "context"), (tmp_path / "state", "file")):
        settings = FlowerSettings(cfg, round_timeout=5)
        grid = FakeGrid(settings, 2, state_dir)
        real = grid.send_and_receive
        froms: list[str] = []

        def spy(msgs, *, timeout=None, real=real, grid=grid, froms=froms, state_dir=state_dir):
            out = list(real(msgs, timeout=timeout))
            froms.extend(state_from(m) for m in out if state_from(m) is not None)
            if state_dir is not None and len(froms) == 2:  # "restart" both SuperNodes: fresh Contexts
                grid.ctx = {100 + p: grid.context(p) for p in range(2)}
            return out

        grid.send_and_receive = spy
        out = tmp_path / f"run-{expect}"
        run_rounds(grid, settings, out)
        # Residuals carried across rounds (also across the restart with a state dir): same model as local.
        assert froms[:2] == ["fresh", "fresh"]
        assert froms[2:] == [expect] * 4
        lora, head = local_params(cfg, tmp_path / f"local-{expect}")
        assert_same_params(out / "final_params.safetensors", lora, head)


def test_offline_env_and_app_files(tmp_path):
    env = child_env()
    for key, value in OFFLINE_ENV.items():
        assert env[key] == value or key in os.environ
    settings = FlowerSettings(make_config(), workload="", round_timeout=7.5, out_dir='/x y/"q"')
    app = write_app(tmp_path / "app", settings)
    import tomllib

    data = tomllib.loads((app / "pyproject.toml").read_text())
    assert FlowerSettings.from_run_config(data["tool"]["flwr"]["app"]["config"]) == settings
    write_connection(tmp_path / "home", "c", "127.0.0.1:1", insecure=True)
    assert "insecure = true" in (tmp_path / "home" / "config.toml").read_text()


# -- a real deployment on 127.0.0.1: one SuperLink, two SuperNodes, `flwr run` ----------------------------
def test_deployment_two_supernodes_matches_in_process_engine(tmp_path):
    cfg = make_config(n=2, k=2, rounds=2)
    settings = FlowerSettings(cfg, round_timeout=60, out_dir=str(tmp_path / "out"))
    stack = Stack(tmp_path, 2)
    try:
        res = stack.flwr_run(settings, timeout=150)
        assert (tmp_path / "out" / "summary.json").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        stack.close()
    got = rows(tmp_path / "out")
    assert [r["kept"] for r in got] == [[0, 1], [0, 1]]
    # The bytes the server decoded are the bytes each client sent (SHA-256 logged on both sides).
    for p in (0, 1):
        sent = {(s["server-round"]): s for s in sent_log(tmp_path, p)}
        assert sorted(sent) == [1, 2]
        for r in got:
            i = r["replied"].index(p)  # the hashes are in ``replied`` order
            assert r["lora_sha256"][i] == sent[r["round"]]["lora-sha256"]
            assert r["head_sha256"][i] == sent[r["round"]]["head-sha256"]
        assert [sent[1]["state-from"], sent[2]["state-from"]] == ["fresh", "file"]
    # Same seed, same clients: the final adapter equals the in-process engine's bit for bit.
    lora, head = local_params(cfg, tmp_path / "local")
    assert_same_params(tmp_path / "out" / "final_params.safetensors", lora, head)
    local = rows(tmp_path / "local")
    assert [r["uplink_bytes"] for r in got] == [r["uplink_bytes"] for r in local]


@pytest.mark.slow
def test_deployment_supernode_killed_mid_round(tmp_path):
    marker = tmp_path / "hanging"
    cfg = make_config(n=2, k=2, rounds=1, min_replies=1)
    settings = FlowerSettings(
        cfg, workload="test_flower_support:hanging_toy", round_timeout=30, out_dir=str(tmp_path / "out")
    )
    stack = Stack(tmp_path, 2, hang={1: marker})
    try:
        import threading

        result: dict = {}
        th = threading.Thread(target=lambda: result.setdefault("res", stack.flwr_run(settings, timeout=170)))
        th.start()
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "client 1 never started training"
        t_kill = time.monotonic()
        stack.kill("node1")  # the SuperNode dies during the round
        th.join(timeout=170)
        elapsed = time.monotonic() - t_kill
    finally:
        stack.close()
    res = result["res"]
    assert (tmp_path / "out" / "summary.json").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    (row,) = rows(tmp_path / "out")
    assert row["kept"] == [0] and row["aggregated"]
    assert row["dropped"] == [{"client": 1, "reason": "no reply within 30 s"}]
    assert elapsed < 60
    assert row["replied"] == [0] and row["lora_sha256"] == [sent_log(tmp_path, 0)[0]["lora-sha256"]]
