"""The Flower job resumes: a ServerApp killed after round k continues from its checkpoint, and with node
state dirs the result equals the uninterrupted job bit for bit (rows without timings, final adapter)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("flwr")

from safetensors.torch import load_file

from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.flower import FlowerSettings
from support.flower import FakeGrid, make_config, state_from
from support.loop import strip_times

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("task_identity"),
]


class ServerKilledError(RuntimeError):
    pass


class Grid(FakeGrid):
    """A FakeGrid of one ``flwr run`` (``run_id``) that records each reply's ``state-from`` and delivery,
    and can kill the server right after the nodes trained in round ``kill_round`` (before it checkpoints).
    Node state dirs survive across grids, like those of real SuperNodes."""

    def __init__(self, *args, run_id=7, kill_round=None, **kwargs) -> None:
        self.run_id = run_id
        super().__init__(*args, **kwargs)
        self.kill_round, self.log = kill_round, []

    def context(self, p):
        ctx = super().context(p)
        ctx.run_id = self.run_id
        return ctx

    def send_and_receive(self, msgs, *, timeout=None):
        msgs = list(msgs)
        # the delivery as sent (downlink_mod replaces it by the rebuilt arrays in place)
        frames = {
            id(m): int(m.content.config_records["fedsqueeze.downlink"]["frames"])
            for m in msgs
            if m.metadata.message_type == "train"
        }
        out = list(super().send_and_receive(msgs, timeout=timeout))
        train = [m for m in msgs if m.metadata.message_type == "train"]
        replies = {x.metadata.src_node_id: x for x in out if x.metadata.message_type == "train"}
        for m in train:
            req, rep = m.content.config_records["config"], replies[m.metadata.dst_node_id]
            self.log.append(
                {
                    "round": int(req["server-round"]), "client": int(req["client"]),
                    "frames": frames[id(m)], "from": state_from(rep),
                }
            )  # fmt: skip
        if train and int(train[0].content.config_records["config"]["server-round"]) == self.kill_round:
            raise ServerKilledError  # the nodes trained (and kept their state); the server never saw it
        return out


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def final(out):
    return load_file(str(out / "final_params.safetensors"))


def run_rounds(grid, settings, out):
    from fedsqueeze.flower.server_app import run_rounds as _run

    return _run(grid, settings, out)


CASES = {
    "topk": {},
    "powersgd+topk-downlink": {
        "codec": ("powersgd", {"rank": 1}), "downlink": ("topk", {"density": 0.2}), "downlink_window": 3,
    },
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_resume_after_the_server_died_mid_round_equals_the_uninterrupted_job(tmp_path, case):
    cfg = make_config(n=4, k=2, rounds=5, **CASES[case])
    settings = FlowerSettings(cfg, round_timeout=5)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    s_whole = run_rounds(Grid(settings, 4, tmp_path / "nodes-whole"), settings, whole)

    first = Grid(settings, 4, tmp_path / "nodes-cut", kill_round=3)
    with pytest.raises(ServerKilledError):
        run_rounds(first, settings, cut)
    assert load_checkpoint(cut)["round"] == 2 and len(rows(cut)) == 2
    trained3 = {d["client"] for d in first.log if d["round"] == 3}
    for c in trained3:  # the nodes kept the state of the round the server never finished
        assert any(p.name.endswith("-r3.pt") for p in (tmp_path / "nodes-cut" / f"n{c}").glob("ef-*.pt"))
    with pytest.raises(ConfigError, match="pass --resume to continue it"):
        run_rounds(Grid(settings, 4, tmp_path / "nodes-cut"), settings, cut)

    again = Grid(settings, 4, tmp_path / "nodes-cut", run_id=8)  # a new `flwr run`: new run id, same nodes
    s_cut = run_rounds(again, FlowerSettings(cfg, round_timeout=5, resume=True), cut)

    # Round 3 replays from the state its nodes held before it (not the one they saved while the server died).
    replay = [d for d in again.log if d["round"] == 3]
    assert {d["client"] for d in replay} == trained3
    had_state = {d["client"] for d in first.log if d["round"] < 3}
    assert all(d["from"] == ("file" if d["client"] in had_state else "fresh") for d in replay)
    assert strip_times(rows(whole)) == strip_times(rows(cut))
    a, b = final(whole), final(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("wall_s", "load_s", "elapsed_s", "out_dir", "sim_time_s", "sim_time_to_target_s", "final_lora")
    assert {k: v for k, v in s_whole.items() if k not in drop} == {
        k: v for k, v in s_cut.items() if k not in drop
    }
    # at most KEEP_VERSIONS state versions per node
    for d in (tmp_path / "nodes-cut").iterdir():
        assert len(list(d.glob("ef-*.pt"))) <= 2


def test_resume_may_grow_the_rounds_and_equals_the_longer_job(tmp_path):
    short, long = make_config(n=4, k=2, rounds=3), make_config(n=4, k=2, rounds=4)
    run_rounds(Grid(FlowerSettings(long, round_timeout=5), 4, tmp_path / "nodes-a"),
               FlowerSettings(long, round_timeout=5), tmp_path / "a")  # fmt: skip
    first = Grid(FlowerSettings(short, round_timeout=5), 4, tmp_path / "nodes-b")
    run_rounds(first, FlowerSettings(short, round_timeout=5), tmp_path / "b")
    settings = FlowerSettings(long, round_timeout=5, resume=True)
    grid = Grid(settings, 4, tmp_path / "nodes-b", run_id=8)
    run_rounds(grid, settings, tmp_path / "b")
    assert [d["round"] for d in grid.log] == [4, 4]
    had = {d["client"] for d in first.log}  # the node state is found although the config digest changed
    assert [d["from"] for d in grid.log] == ["file" if d["client"] in had else "fresh" for d in grid.log]
    assert "file" in [d["from"] for d in grid.log]
    assert strip_times(rows(tmp_path / "a"))[3] == strip_times(rows(tmp_path / "b"))[3]
    a, b = final(tmp_path / "a"), final(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_node_state_restarts_nodes_fresh_with_a_dense_resync(tmp_path):
    cfg = make_config(n=4, k=2, rounds=5, downlink=("topk", {"density": 0.2}), downlink_window=3)
    settings = FlowerSettings(cfg, round_timeout=5)
    with pytest.raises(ServerKilledError):
        run_rounds(Grid(settings, 4, None, kill_round=3), settings, tmp_path)  # context.state only
    grid = Grid(settings, 4, None, run_id=8)
    run_rounds(grid, FlowerSettings(cfg, round_timeout=5, resume=True), tmp_path)
    got = rows(tmp_path)
    assert [r["round"] for r in got] == [1, 2, 3, 4, 5]
    assert all(r["num_dropped"] == 0 and r["aggregated"] for r in got)  # no node refused a delta
    seen: set[int] = set()
    for d in grid.log:  # each node's first delivery after the restart is the dense state, from zero residual
        if d["client"] not in seen:
            assert d["frames"] == -1 and d["from"] == "fresh", d
            seen.add(d["client"])


def test_resume_refusals_are_one_line_errors(tmp_path):
    cfg = make_config(n=4, k=2, rounds=2)
    resume = FlowerSettings(cfg, round_timeout=5, resume=True)
    with pytest.raises(ConfigError, match="does not exist, so there is no run to continue; drop --resume"):
        run_rounds(Grid(resume, 4), resume, tmp_path / "missing")
    run(cfg, tmp_path / "local")  # a checkpoint of `fedsqueeze run`
    with pytest.raises(ConfigError, match="written by `fedsqueeze run`"):
        run_rounds(Grid(resume, 4), resume, tmp_path / "local")
    run_rounds(Grid(resume, 4), FlowerSettings(cfg, round_timeout=5), tmp_path / "flower")
    with pytest.raises(ConfigError, match="holds a Flower job's checkpoint"):
        run(cfg, tmp_path / "flower", resume=True)
    other = FlowerSettings(make_config(n=4, k=2, rounds=2, server_lr=0.5), round_timeout=5, resume=True)
    with pytest.raises(ConfigError, match="fl.server_lr"):
        run_rounds(Grid(other, 4), other, tmp_path / "flower")
    fewer = FlowerSettings(make_config(n=4, k=2, rounds=1), round_timeout=5, resume=True)
    with pytest.raises(ConfigError, match="past fl.rounds = 1"):
        run_rounds(Grid(fewer, 4), fewer, tmp_path / "flower")
    assert FlowerSettings.from_run_config(resume.to_run_config()).resume is True


@pytest.mark.slow
def test_deployment_serverapp_killed_mid_round_resumes_bit_identically(tmp_path):
    import subprocess
    import time

    from support.deployment import Stack, sent_log

    cfg = make_config(n=2, k=2, rounds=3)
    settings = FlowerSettings(
        cfg, workload="test_flower_support:dying_toy", round_timeout=60, out_dir=str(tmp_path / "out")
    )
    marker = tmp_path / "died"  # the ServerApp SIGKILLs itself in round 2, after the nodes trained
    stack = Stack(tmp_path, 2, link_env={"FSQ_TEST_DIE_MARKER": str(marker), "FSQ_TEST_DIE_AT_EVAL": "2"})
    try:
        first = subprocess.Popen(
            stack.flwr_command(settings), env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 200
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), "the ServerApp never reached round 2"
        try:
            first.wait(timeout=5)
        except subprocess.TimeoutExpired:  # the CLI may wait on a run whose ServerApp is gone
            first.kill()
            first.wait()
        assert load_checkpoint(tmp_path / "out")["round"] == 1
        assert not (tmp_path / "out" / "summary.json").exists()
        res = stack.flwr_run(dataclasses.replace(settings, resume=True), timeout=300)
        assert (tmp_path / "out" / "summary.json").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        stack.close()
    for p in (0, 1):  # round 2 ran twice on each node, from the same saved state, with the same bytes
        sent = sent_log(tmp_path, p)
        assert [s["server-round"] for s in sent] == [1, 2, 2, 3]
        assert len({s["job-id"] for s in sent}) == 1 and sent[1]["run_id"] != sent[2]["run_id"]
        assert sent[1]["lora-sha256"] == sent[2]["lora-sha256"] and sent[2]["state-from"] == "file"
    # equal to the uninterrupted job (in-process, with node state dirs)
    whole = tmp_path / "whole"
    plain = FlowerSettings(cfg, workload="test_flower_support:dying_toy", round_timeout=60)
    run_rounds(Grid(plain, 2, tmp_path / "nodes-whole"), plain, whole)
    assert strip_times(rows(whole)) == strip_times(rows(tmp_path / "out"))
    a, b = final(whole), final(tmp_path / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nodes_without_a_state_dir_use_the_run_configs_node_state_dir(tmp_path):
    cfg = make_config(n=4, k=2, rounds=3)
    settings = FlowerSettings(cfg, round_timeout=5, node_state_dir=str(tmp_path / "nodes"))
    run_rounds(Grid(settings, 4), settings, tmp_path / "whole")  # no state-dir in any node config
    assert sorted(d.name for d in (tmp_path / "nodes").iterdir()) == ["p0", "p1", "p2", "p3"]
    cut = FlowerSettings(cfg, round_timeout=5, node_state_dir=str(tmp_path / "nodes-cut"))
    with pytest.raises(ServerKilledError):
        run_rounds(Grid(cut, 4, kill_round=2), cut, tmp_path / "cut")
    grid = Grid(cut, 4, run_id=8)
    run_rounds(grid, dataclasses.replace(cut, resume=True), tmp_path / "cut")
    assert "file" in [d["from"] for d in grid.log]
    assert strip_times(rows(tmp_path / "whole")) == strip_times(rows(tmp_path / "cut"))


def test_simulate_gives_the_nodes_a_state_dir_under_out_and_checks_out_first(tmp_path, monkeypatch):
    import flwr.simulation

    from fedsqueeze.flower.settings import RUN_CONFIG_ENV
    from fedsqueeze.flower.simulate import simulate

    seen = {}

    def fake_run_simulation(**kwargs):
        import os

        seen.update(json.loads(os.environ[RUN_CONFIG_ENV]))
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "summary.json").write_text("{}")

    monkeypatch.setattr(flwr.simulation, "run_simulation", fake_run_simulation)
    monkeypatch.delenv(RUN_CONFIG_ENV, raising=False)
    settings = FlowerSettings(make_config(), out_dir=str(tmp_path / "out"))
    assert simulate(settings) == {}
    assert seen["node-state-dir"] == str((tmp_path / "out" / "nodes").resolve()) and seen["resume"] is False
    (tmp_path / "out" / "checkpoint").mkdir()
    with pytest.raises(ConfigError, match="pass --resume"):
        simulate(settings)
    with pytest.raises(ConfigError, match="no run to continue"):
        simulate(dataclasses.replace(settings, resume=True, out_dir=str(tmp_path / "missing")))
