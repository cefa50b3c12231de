"""Progress while waiting: client lines in slow rounds, TGAP steps, a line per benchmarked codec."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import fedsqueeze.cli.bench_speed as speed
from fedsqueeze.cli import main as cli_main
from fedsqueeze.config import CodecConfig, DataConfig, FLConfig, LocalTrainConfig, ModelConfig, RunConfig
from fedsqueeze.fl import run
from fedsqueeze.fl.report import Progress, StepProgress
from fedsqueeze.fl.toy import ToyWorkload

CFG = RunConfig(
    model=ModelConfig(name="toy"),
    data=DataConfig(num_clients=4),
    train=LocalTrainConfig(lr=0.05, max_steps=2, batch_size=8),
    fl=FLConfig(rounds=2, clients_per_round=3),
    codec=CodecConfig("topk", {"density": 0.1}),
)


def test_slow_rounds_get_a_line_per_client(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Progress, "HEARTBEAT_S", 0.0)  # every round counts as slow
    run(CFG, tmp_path, workload=ToyWorkload(4), progress=True)
    lines = capsys.readouterr().err.splitlines()
    clients = [i for i, line in enumerate(lines) if line.startswith("round 1/2  client ")]
    total = next(i for i, line in enumerate(lines) if line.startswith("round 1/2  accuracy"))
    assert len(clients) == 2 and max(clients) < total  # clients 1 and 2 of 3; the round line follows
    assert " (id " in lines[clients[0]] and " done in " in lines[clients[0]]


def test_fast_rounds_print_only_the_round_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Progress, "HEARTBEAT_S", 1e9)  # no round is slow
    run(CFG, tmp_path, workload=ToyWorkload(4), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["round 1/2", "round 2/2"]
    assert not any("client" in line for line in lines)


def test_step_progress_prints_first_last_and_heartbeat(capsys, monkeypatch):
    bar = StepProgress("TGAP", 5, enabled=True)
    for step in range(1, 6):
        bar.update(step, 0.5 / step)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["TGAP step 1/5  loss 0.5", "TGAP step 5/5  loss 0.1"]
    monkeypatch.setattr(StepProgress, "HEARTBEAT_S", 0.0)
    bar = StepProgress("TGAP", 3, enabled=True)
    for step in range(1, 4):
        bar.update(step, 1.0)
    assert len(capsys.readouterr().err.splitlines()) == 3
    StepProgress("TGAP", 3, enabled=False).update(1, 1.0)
    assert capsys.readouterr().err == ""


def test_tgap_cli_shows_its_steps(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"r{r}/c{c}/layers.0.{m}.lora_{ab}.weight": torch.randn(*shape, generator=g)
        for r in (1, 2) for c in (0, 1) for m in ("q_proj", "v_proj")
        for ab, shape in (("A", (2, 16)), ("B", (16, 2)))
    }  # fmt: skip
    save_file(tensors, str(tmp_path / "caps.safetensors"))
    argv = ["tgap", str(tmp_path / "caps.safetensors"), "--out", str(tmp_path / "ae"), "--depth", "2"]
    assert cli_main([*argv, "--steps", "3", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "TGAP step 1/3  loss " in err and "TGAP step 3/3  loss " in err


def test_bench_speed_prints_a_line_per_codec_as_it_goes(monkeypatch, capsys):
    order = []

    def fake_measure(name, args):
        order.append(capsys.readouterr().out)  # what was printed before this codec started
        return {"codec": name, "d": args.d, "bits_per_param": 16.0, "encode_s": 0.001, "decode_s": 0.002,
                "topk_s": 0.001, "topk_k": 10, "ratio": 3.0}  # fmt: skip

    monkeypatch.setattr(speed, "_measure", fake_measure)
    assert cli_main(["bench", "speed", "--d", "4096", "--codec", "fp16", "--codec", "bf16"]) == 0
    rest = capsys.readouterr().out
    assert order[0] == "" and order[1].startswith("[1/2] fp16: 16.000 bits/param, encode 0.0010 s")
    assert rest.startswith("[2/2] bf16: ") and rest.index("[2/2] bf16") < rest.index("codec speed")


@pytest.mark.parametrize("enabled", [False, True])
def test_client_hook_is_none_when_disabled(enabled):
    assert (Progress(2, 0, enabled=enabled).client_hook(1) is None) is (not enabled)
