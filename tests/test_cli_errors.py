"""One-line CLI errors for what a new user gets wrong, raised before anything heavy runs.

Every case goes through ``fedsqueeze.cli.main`` in-process and asserts the exit code (2, the CLI's code for a
``FedsqueezeError``), the exact message and that stderr is one line without a traceback. Where "before
anything heavy" matters, the heavy step is replaced by one that fails the test if it is reached.
"""

from __future__ import annotations

import pytest

import fedsqueeze.fl.loop as loop
from fedsqueeze.cli import main as cli_main

TOY = """
[model]
name = "toy"
lora_r = 2
[data]
num_clients = 4
[train]
lr = 0.05
max_steps = 1
batch_size = 4
[fl]
rounds = 2
clients_per_round = 2
[codec]
name = "topk"
options = { density = 0.25 }
"""


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and one ``fedsqueeze: error:`` line on stderr; return that line."""
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsqueeze: error: "), err
    return lines[0][len("fedsqueeze: error: ") :]


@pytest.fixture
def toy_cfg(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the workload (the model) would be built."""

    def refuse(config):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(loop, "build_workload", refuse)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder\n")
    return path


# -- 1. --out that is a file -------------------------------------------------------------------------------
def test_run_out_is_a_file_before_the_model_loads(capsys, toy_cfg, a_file, no_model) -> None:
    msg = one_line_error(capsys, ["run", str(toy_cfg), "--out", str(a_file), "--no-progress"])
    assert msg == f"--out {a_file} is a file, not a folder; choose a folder path (it is created if missing)"


def test_run_out_under_a_file(capsys, toy_cfg, a_file, no_model) -> None:
    msg = one_line_error(capsys, ["run", str(toy_cfg), "--out", str(a_file / "run"), "--no-progress"])
    assert (
        msg == f"--out {a_file / 'run'}: {a_file} is a file, so it cannot hold a folder; choose another --out"
    )


def test_library_run_out_is_a_file(toy_cfg, a_file, no_model) -> None:
    from fedsqueeze import ConfigError
    from fedsqueeze.config import load_config

    with pytest.raises(ConfigError, match=f"^out_dir {a_file} is a file, not a folder"):
        loop.run(load_config(toy_cfg), a_file)


def test_bench_rd_out_is_a_file_before_the_sweep(capsys, a_file, monkeypatch) -> None:
    import fedsqueeze.bench.rd as rd

    monkeypatch.setattr(rd, "sweep", lambda *a, **k: pytest.fail("the sweep ran before the error"))
    argv = ["bench", "rd", "--source", "gaussian", "--d", "64", "--codec", "topk", "--out", str(a_file)]
    assert one_line_error(capsys, argv).startswith(f"--out {a_file} is a file, not a folder")
    argv = [*argv[:-2], "--json", str(a_file.parent), "--no-plot"]
    assert one_line_error(
        capsys, argv
    ) == f"--json {a_file.parent} is a folder; give a file path, e.g. " + str(a_file.parent / "out.json")


def test_bench_intervals_out_is_a_file_before_the_sweep(capsys, a_file, monkeypatch) -> None:
    import fedsqueeze.bench.intervals as intervals

    monkeypatch.setattr(intervals, "sweep", lambda *a, **k: pytest.fail("the sweep ran before the error"))
    msg = one_line_error(capsys, ["bench", "intervals", "--out", str(a_file)])
    assert msg.startswith(f"--out {a_file} is a file, not a folder")


def test_tgap_out_problems_before_training(capsys, tmp_path, a_file) -> None:
    """``--out`` is a folder (the model goes to OUT/ae.safetensors): a file there is refused up front."""
    caps = tmp_path / "missing.safetensors"  # never read: the --out checks come first
    msg = one_line_error(capsys, ["tgap", str(caps), "--out", str(a_file)])
    assert msg == (
        f"--out {a_file / 'ae.safetensors'}: {a_file} is a file, so it cannot hold a file; "
        "choose another --out"
    )
    (tmp_path / "out" / "ae.safetensors").mkdir(parents=True)
    msg = one_line_error(capsys, ["tgap", str(caps), "--out", str(tmp_path / "out")])
    assert msg.startswith(f"--out {tmp_path / 'out' / 'ae.safetensors'} is a folder")


def test_flower_simulate_out_is_a_file(capsys, toy_cfg, a_file) -> None:
    msg = one_line_error(capsys, ["flower", "simulate", str(toy_cfg), "--out", str(a_file)])
    assert msg.startswith(f"--out {a_file} is a file, not a folder")


# -- 2. --resume with a damaged checkpoint, or with nothing to resume ----------------------------------------
@pytest.fixture
def finished_run(tmp_path, toy_cfg):
    """A 2-round toy run in ``tmp_path/run``, made through the library (the CLI's model load is refused)."""
    from fedsqueeze.config import load_config
    from fedsqueeze.fl.toy import ToyWorkload

    out = tmp_path / "run"
    loop.run(load_config(toy_cfg), out, workload=ToyWorkload(4, rank=2))
    return out


def _resume_error(capsys, toy_cfg, out) -> str:
    return one_line_error(capsys, ["run", str(toy_cfg), "--out", str(out), "--resume", "--no-progress"])


def _how_to_go_on(out) -> str:
    return (
        f"start fresh with another --out, or delete {out / 'checkpoint'} to run into {out} again "
        "without --resume"
    )


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda data: b"", "empty file"),
        (lambda data: data[: len(data) // 2], "truncated or not a checkpoint: torch.load raised "),
        (
            lambda data: b"garbage, not a checkpoint\n" * 10,
            "truncated or not a checkpoint: torch.load raised ",
        ),
        (
            lambda data: data[:-60],
            "truncated or not a checkpoint: torch.load raised ",
        ),  # the checksum and the zip's end record cut off
    ],
    ids=["empty", "truncated", "garbage", "end-cut"],
)
def test_resume_from_a_damaged_checkpoint(capsys, toy_cfg, finished_run, no_model, damage, why) -> None:
    path = finished_run / "checkpoint" / "state.pt"
    path.write_bytes(damage(path.read_bytes()))
    msg = _resume_error(capsys, toy_cfg, finished_run)
    assert msg.startswith(f"checkpoint {path} is damaged ({why}") and msg.endswith(
        _how_to_go_on(finished_run)
    )


def test_a_bit_flip_in_the_tensor_data_is_caught_by_the_checksum(capsys, toy_cfg, finished_run, no_model):
    from fedsqueeze.fl.checkpoint import CHECKSUM_MAGIC, load_checkpoint

    path = finished_run / "checkpoint" / "state.pt"
    data = bytearray(path.read_bytes())
    assert data[-48:-32] == CHECKSUM_MAGIC
    name, tensor = sorted(load_checkpoint(finished_run)["lora"].items())[0]
    at = bytes(data).find(tensor.contiguous().numpy().tobytes())
    assert at > 0  # the tensor's raw bytes, inside the zip
    data[at + 2] ^= 0x10
    path.write_bytes(bytes(data))
    msg = _resume_error(capsys, toy_cfg, finished_run)
    assert msg == (
        f"checkpoint {path} is damaged (its SHA-256 does not match: the file was changed or corrupted after "
        f"writing); {_how_to_go_on(finished_run)}"
    )
    # Without the checksum the same file would load, with another adapter: that is what the check is for.
    path.write_bytes(bytes(data[:-48]))
    flipped = load_checkpoint(finished_run)["lora"][name]
    assert not (flipped == tensor).all()


def test_a_checkpoint_without_checksum_still_loads(finished_run, caplog) -> None:
    import logging

    from fedsqueeze.fl.checkpoint import load_checkpoint

    path = finished_run / "checkpoint" / "state.pt"
    whole = load_checkpoint(finished_run)
    path.write_bytes(path.read_bytes()[:-48])  # what older fedsqueeze versions wrote
    with caplog.at_level(logging.INFO, logger="fedsqueeze.fl.checkpoint"):
        old = load_checkpoint(finished_run)
    assert old["round"] == whole["round"] == 2 and old["rows"] == whole["rows"]
    assert "has no checksum (written by an older fedsqueeze); loading it unchecked" in caplog.text


def test_resume_into_a_missing_folder(capsys, toy_cfg, tmp_path, no_model) -> None:
    out = tmp_path / "never-ran"
    msg = _resume_error(capsys, toy_cfg, out)
    assert (
        msg == f"--resume: {out} does not exist, so there is no run to continue; drop --resume to start one"
    )
    assert not out.exists()


def test_resume_into_an_empty_folder_stops_instead_of_starting_a_new_run(capsys, toy_cfg, tmp_path, no_model):
    out = tmp_path / "made-but-empty"
    out.mkdir()
    msg = _resume_error(capsys, toy_cfg, out)
    assert msg == f"--resume: {out} is empty, so there is no run to continue; drop --resume to start one"
    assert not any(out.iterdir())  # nothing written


# -- 3. files that are not safetensors; Ctrl-C during a run --------------------------------------------------
@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "header too small"), (b"not safetensors at all\n" * 4, "header too large")],
    ids=["empty", "text"],
)
def test_bench_rd_file_source_that_is_not_safetensors(capsys, tmp_path, content, why) -> None:
    bad = tmp_path / "caps.safetensors"
    bad.write_bytes(content)
    argv = ["bench", "rd", "--source", f"file:{bad}", "--codec", "topk", "--out", str(tmp_path / "o")]
    assert one_line_error(capsys, argv) == (
        f"{bad} is not a safetensors file (Error while deserializing header: {why}); give one written by "
        "`fedsqueeze run ... --capture-updates` or safetensors.torch.save_file"
    )


def test_tgap_captures_that_are_not_safetensors(capsys, tmp_path) -> None:
    bad = tmp_path / "caps.safetensors"
    bad.write_bytes(b"\x00" * 3)
    msg = one_line_error(capsys, ["tgap", str(bad), "--out", str(tmp_path / "tgap")])
    assert msg == (
        f"{bad} is not a safetensors file (Error while deserializing header: header too small); give the "
        "captures.safetensors of `fedsqueeze run ... --capture-updates all`"
    )


def test_ctrl_c_during_run_prints_the_resume_command(capsys, monkeypatch, toy_cfg, tmp_path) -> None:
    import shlex

    from fedsqueeze.fl.toy import ToyWorkload

    monkeypatch.setattr(loop, "build_workload", lambda config: ToyWorkload(4, rank=2))
    real = loop._Federation.run_round

    def ctrl_c_in_round_3(self, r, capture):
        if r == 3:
            raise KeyboardInterrupt
        return real(self, r, capture)

    monkeypatch.setattr(loop._Federation, "run_round", ctrl_c_in_round_3)
    out = tmp_path / "run"
    argv = ["run", str(toy_cfg), "--set", "fl.rounds=4", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    cmd = shlex.join(["fedsqueeze", *argv, "--resume"])
    assert err.strip() == f"fedsqueeze run: interrupted after round 2; continue with: {cmd}"
    monkeypatch.setattr(loop._Federation, "run_round", real)
    assert cli_main(shlex.split(cmd)[1:]) == 0  # the printed command works as printed
    assert "4 rounds, final accuracy" in capsys.readouterr().out


def test_ctrl_c_before_the_run_started(capsys, monkeypatch, toy_cfg, tmp_path) -> None:
    def ctrl_c(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "build_workload", ctrl_c)
    out = tmp_path / "run"
    assert cli_main(["run", str(toy_cfg), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        "fedsqueeze run: interrupted before the run started; start it with: "
        f"fedsqueeze run {toy_cfg} --out {out}"
    )


# -- 4. an autoencoder of another spec; a TGAP model worse than zeros -------------------------------------
def _toy_captures(path, rank: int, scale: float = 1.0) -> None:
    import torch

    from fedsqueeze.fl.checkpoint import save_captures
    from fedsqueeze.fl.toy import ToyWorkload

    (_, dim), (hidden, _) = ToyWorkload(4, rank=2).lora_spec.shapes
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for r in (1, 2):
        for c in (0, 1):
            tensors[f"r{r}/c{c}/layer.lora_A"] = scale * torch.randn(rank, dim, generator=g)
            tensors[f"r{r}/c{c}/layer.lora_B"] = scale * torch.randn(hidden, rank, generator=g)
    save_captures(path, tensors)


def test_cg_fedllm_refuses_an_autoencoder_trained_for_another_spec(capsys, monkeypatch, tmp_path) -> None:
    from fedsqueeze.fl.toy import ToyWorkload

    caps, ae = tmp_path / "caps.safetensors", tmp_path / "ae.safetensors"
    _toy_captures(caps, rank=5)  # the run below has rank 2
    assert (
        cli_main(["tgap", str(caps), "--out", str(ae), "--steps", "2", "--depth", "1", "--no-progress"]) == 0
    )
    fp = capsys.readouterr().out.split("fingerprint ")[1].split(";")[0]
    cfg = tmp_path / "cg.toml"
    cfg.write_text(TOY.replace('name = "topk"\noptions = { density = 0.25 }', f'name = "cg_fedllm"\n'
                               f'options = {{ model_path = "{ae}" }}'))  # fmt: skip
    wl = ToyWorkload(4, rank=2)
    monkeypatch.setattr(loop, "build_workload", lambda config: wl)
    (_, dim), (hidden, _) = wl.lora_spec.shapes
    msg = one_line_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    assert msg == (
        f"cg_fedllm: autoencoder {fp} was trained on updates of another spec "
        f"(2 tensors, d={5 * (dim + hidden)}) than this update's (2 tensors, d={2 * (dim + hidden)}): "
        f"tensor 'layer.lora_A' is [2, {dim}] here, [5, {dim}] in training; train one on this model's "
        "updates (`fedsqueeze run ... --capture-updates all`, then `fedsqueeze tgap`)"
    )


def test_cg_codecs_accept_their_own_spec_in_any_order_and_refuse_others(tmp_path) -> None:
    import torch

    from fedsqueeze import ConfigError, UpdateSpec
    from fedsqueeze.cg_fedllm import store
    from fedsqueeze.cg_fedllm.autoencoder import AEConfig
    from fedsqueeze.cg_fedllm.tgap import TGAPConfig, load_captures, tgap_pretrain
    from fedsqueeze.codecs import codec_class

    caps_path = tmp_path / "caps.safetensors"
    _toy_captures(caps_path, rank=3)
    caps = load_captures(caps_path)
    model, log = tgap_pretrain(caps, ae=AEConfig(depth=1), config=TGAPConfig(steps=1))
    assert model.trained_spec == caps.spec
    store.save(model, tmp_path / "ae.safetensors", info=log)
    reordered = UpdateSpec(tuple(reversed(caps.spec.entries)))
    other = UpdateSpec.from_shapes({"layer.lora_A": (2, 8), "layer.lora_B": (8, 2)})
    for name in ("cg_fedllm", "cg_fedllm_q"):
        for codec in (
            codec_class(name).from_model(model),
            codec_class(name)(model_path=str(tmp_path / "ae.safetensors")),
        ):
            codec.encode_with_spec(torch.randn(reordered.numel), reordered)  # same tensors: fine
            with pytest.raises(ConfigError, match=f"^{name}: autoencoder .* trained on updates of another"):
                codec.encode_with_spec(torch.randn(other.numel), other)
    model.trained_spec = None  # unknown (an autoencoder saved without its spec): not checked
    codec_class("cg_fedllm").from_model(model).encode_with_spec(torch.randn(other.numel), other)


def test_tgap_warns_when_the_autoencoder_is_worse_than_zeros(capsys, monkeypatch, tmp_path) -> None:
    import fedsqueeze.cg_fedllm.tgap as tgap

    real = tgap.tgap_pretrain

    def bad_training(*args, **kwargs):
        model, log = real(*args, **kwargs)
        return model, {**log, "train_rel_error": 5047.0}

    monkeypatch.setattr(tgap, "tgap_pretrain", bad_training)
    caps, ae = tmp_path / "caps.safetensors", tmp_path / "tgap"
    _toy_captures(caps, rank=2)
    assert (
        cli_main(["tgap", str(caps), "--out", str(ae), "--steps", "1", "--depth", "1", "--no-progress"]) == 0
    )
    out, err = capsys.readouterr()
    assert "train rel_error 5047;" in out
    assert err.strip() == (
        "fedsqueeze tgap: warning: train rel_error 5047 is not below 1: the autoencoder reconstructs "
        "its own training updates worse than sending zeros would; train longer (--steps), change --lr, or "
        "try --variant sound"
    )
    monkeypatch.setattr(tgap, "tgap_pretrain", real)
    assert (
        cli_main(["tgap", str(caps), "--out", str(ae), "--steps", "1", "--depth", "1", "--no-progress"]) == 0
    )
    out, err = capsys.readouterr()
    rel = float(out.split("train rel_error ")[1].split(";")[0])
    assert ("warning" in err) == (rel >= 1)


def test_tgap_steps_zero(capsys, tmp_path) -> None:
    caps = tmp_path / "caps.safetensors"
    _toy_captures(caps, rank=2)
    msg = one_line_error(capsys, ["tgap", str(caps), "--out", str(tmp_path / "tgap"), "--steps", "0"])
    assert msg == "--steps must be >= 1 (0 Adam steps would save an untrained autoencoder), got 0"
    assert not (tmp_path / "tgap" / "ae.safetensors").exists()


# -- 5. values that were accepted silently ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("topk", {"rate": 1000}, "topk: rate 1000 bits/param is more than a dense fp32 update needs"),
        ("flm_topk", {"rate": float("inf")}, "flm_topk: rate must be positive bits per parameter or None"),
        ("fed_cvlc", {"rate": 65}, "fed_cvlc: rate 65 bits/param is more than a dense fp32 update needs"),
        ("cg_fedllm_q", {"rate": -1}, "cg_fedllm_q: rate must be positive bits per parameter or None"),
        ("wf_ecq", {"rate": 100}, "wf_ecq: rate 100 bits/param is more than a dense fp32 update needs"),
        ("topk", {"density": 0.05, "rate": 2}, "topk: give density or rate, not both (rate 2 would override"),
        ("flm_topk", {"density": 0.1, "rate": 1}, "flm_topk: give density or rate, not both"),
        ("powersgd", {"rank": 4, "rate": 1}, "powersgd: give rank or rate, not both"),
        ("qsgd", {"levels": 3, "rate": 1}, "qsgd: give levels or rate, not both"),
    ],
)
def test_codec_rate_options_are_checked_alike(name, options, says) -> None:
    from fedsqueeze import ConfigError
    from fedsqueeze.codecs import get

    with pytest.raises(ConfigError) as exc:
        get(name, **options)
    assert str(exc.value).startswith(says), str(exc.value)


def test_every_rate_codec_refuses_the_same_rates_and_rebuilds_from_its_options() -> None:
    from fedsqueeze import ConfigError
    from fedsqueeze.codecs import available, codec_class, get

    rate_codecs = [n for n in available() if codec_class(n).rate_option == "rate"]
    assert {"topk", "flm_topk", "fed_cvlc", "wf_ecq", "qsgd", "powersgd", "cg_fedllm_q"} <= set(rate_codecs)
    for name in rate_codecs:
        for bad in (0, -1, float("inf"), float("nan"), 64.5, 1000, True):
            with pytest.raises(ConfigError, match=f"^{name}: rate"):
                get(name, rate=bad)
        codec = get(name, rate=64)  # the most any rate may be at construction
        assert get(name, **codec.options()).options() == codec.options()  # defaults + rate rebuild


def test_a_rate_above_the_dense_frame_of_this_update_is_refused_at_encode() -> None:
    import torch

    from fedsqueeze import ConfigError
    from fedsqueeze.codecs import get

    update = {"w": torch.randn(1024)}  # dense frame: 32 + 256/1024 = 32.25 bits/param
    for name in ("topk", "flm_topk", "wf_ecq", "qsgd"):
        get(name, rate=32.25).encode(update)
        with pytest.raises(
            ConfigError, match=f"^{name}: rate 33 bits/param is more than the dense fp32 frame"
        ):
            get(name, rate=33).encode(update)


def test_target_metric_is_a_number_at_least_zero(capsys, toy_cfg, no_model, tmp_path) -> None:
    msg = one_line_error(
        capsys, ["run", str(toy_cfg), "--set", "fl.target_metric=-2", "--out", str(tmp_path / "o")]
    )
    assert msg.endswith(
        "fl.target_metric is a number >= 0 like the metric (e.g. 0.72 for 72% accuracy, or a held-out "
        "loss), got -2"
    )


def test_capture_rounds_past_the_last_round(capsys, toy_cfg, no_model, tmp_path) -> None:
    argv = ["run", str(toy_cfg), "--capture-updates", "1,99", "--out", str(tmp_path / "o"), "--no-progress"]
    assert one_line_error(capsys, argv) == (
        "--capture-updates: round(s) 99 are past the last round (fl.rounds = 2); capture rounds 1..2 or 'all'"
    )


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--s-min", "10", "--s-max", "4"], "--s-max (4) is below --s-min (10); give s-min <= s-max"),
        (["--s-min", "-3"], "--s-min is log2 of the smallest interval length, at least 1; got -3"),
        (["--s-min", "0"], "--s-min is log2 of the smallest interval length, at least 1; got 0"),
        (
            ["--s-min", "40", "--d", "4096"],
            "--s-min 40 is above ceil(log2 d) = 12 for d = 4096; give --s-min <= 12",
        ),
    ],
)
def test_bench_intervals_s_range(capsys, tmp_path, extra, msg) -> None:
    argv = ["bench", "intervals", "--source", "gaussian", "--out", str(tmp_path), *extra]
    assert one_line_error(capsys, argv) == msg
    assert not (tmp_path / "intervals.json").exists()


def test_bench_speed_timeout(capsys) -> None:
    for t in ("0", "-5", "nan"):
        msg = one_line_error(capsys, ["bench", "speed", "--codec", "topk", "--d", "64", "--timeout", t])
        assert msg.startswith("--timeout must be a positive number of seconds per codec, got ")


def test_flower_supernode_partition_id(capsys, monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("flower-supernode was started"))
    argv = ["flower", "supernode", "--superlink", "127.0.0.1:9091", "--insecure", "--partition-id", "-1"]
    assert (
        one_line_error(capsys, argv) == "--partition-id is a client id 0..N-1 (N = data.num_clients), got -1"
    )
    assert (
        one_line_error(capsys, [*argv[:-1], "0", "--port", "70000"])
        == "--port must be in 1..65535, got 70000"
    )


@pytest.mark.parametrize("bad", [-2, -0.1, float("nan"), float("inf"), "high", True])
def test_target_metric_values(bad) -> None:
    from fedsqueeze import ConfigError
    from fedsqueeze.config import FLConfig

    with pytest.raises(ConfigError, match=r"^fl.target_metric is a number >= 0 like the metric"):
        FLConfig(target_metric=bad)
    assert FLConfig(target_metric=1).target_metric == 1 and FLConfig(target_metric=0.0).target_metric == 0
    assert FLConfig(target_metric=2.5).target_metric == 2.5  # a held-out loss
