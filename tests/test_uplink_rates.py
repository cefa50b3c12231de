"""``fl.uplink_rates``: a rate schedule for the uplink codec (round ``i`` codes at the ``i``-th rate, later
rounds at the last), in the local engine and the Flower job alike, resumable bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from fedsqueeze import UpdateSpec
from fedsqueeze.codecs import ErrorFeedback, get, with_rate
from fedsqueeze.config import CodecConfig, FLConfig, RunConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.fl import run
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.fl.toy import ToyWorkload
from support.loop import CrashError, CrashingToy, N, make_config, rows_of, strip_times

SCHEDULE = (16.0, 8.0, 8.0, 6.0)  # the toy LoRA (d = 112) needs about 6 bits/param for a wf_ecq frame


def test_the_round_rate_follows_the_list_then_holds_its_last():
    cfg = make_config("wf_ecq", {"rate": 2.0}, rounds=6, uplink_rates=SCHEDULE)
    assert [cfg.uplink_rate(r) for r in range(1, 7)] == [16.0, 8.0, 8.0, 6.0, 6.0, 6.0]
    assert cfg.uplink_codec(1).options["rate"] == 16.0 and cfg.uplink_codec(6).options["rate"] == 6.0
    plain = make_config("wf_ecq", {"rate": 2.0})
    assert plain.uplink_rate(3) is None and plain.uplink_codec(3) is plain.codec


def test_with_rate_sets_the_codec_rate_where_the_codec_takes_it():
    assert with_rate("wf_ecq", {}, 0.5) == {"rate": 0.5}
    assert with_rate("predictive", {"inner": "topk"}, 1) == {"inner": "topk", "inner_options": {"rate": 1.0}}
    with pytest.raises(ConfigError, match="fixed rate"):
        with_rate("signsgd", {}, 1.0)


@pytest.mark.parametrize(
    ("codec", "rates", "match"),
    [
        ("wf_ecq", (2.0, 0.0), r"fl.uplink_rates holds rates > 0"),
        ("wf_ecq", (float("inf"),), r"fl.uplink_rates holds rates > 0"),
        ("identity", (1.0,), r"fl.uplink_rates: codec 'identity' has a fixed rate"),
        ("signsgd", (1.0,), r"fl.uplink_rates: codec 'signsgd' has a fixed rate"),
    ],
)
def test_a_bad_schedule_is_a_one_line_config_error(codec, rates, match):
    with pytest.raises(ConfigError, match=match) as err:
        RunConfig(fl=FLConfig(uplink_rates=rates), codec=CodecConfig(codec, {}))
    assert "\n" not in str(err.value)


def test_a_rate_too_low_for_this_model_fails_before_training_and_names_the_schedule(tmp_path):
    cfg = make_config("wf_ecq", {"rate": 8.0}, uplink_rates=(8.0, 2.0))  # d = 112: 2 bits cannot hold a frame
    with pytest.raises(ConfigError, match=r"fl.uplink_rates: at 2 bits/param, codec \(the uplink\)"):
        run(cfg, tmp_path / "run", workload=ToyWorkload(N))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_each_round_codes_at_its_rate_and_equals_a_run_at_that_rate(tmp_path):
    """Round 1 of the schedule (16, 8, 8, 6) sends the very bytes of a run at 16 bits/param; the rows record
    the rate, and the round's frames shrink with it."""
    sched = make_config("wf_ecq", {"rate": 2.0}, rounds=4, uplink_rates=SCHEDULE)
    run(sched, tmp_path / "sched", workload=ToyWorkload(N))
    at16 = make_config("wf_ecq", {"rate": 16.0}, rounds=1)
    run(at16, tmp_path / "at16", workload=ToyWorkload(N))
    rows, first = rows_of(tmp_path / "sched"), rows_of(tmp_path / "at16")[0]
    assert [r["uplink_rate"] for r in rows] == list(SCHEDULE)
    assert rows[0]["lora_sha256"] == first["lora_sha256"]
    per_client = [r["uplink_lora_bytes"] / len(r["replied"]) for r in rows]
    assert per_client[0] > per_client[1] > per_client[3]
    d = ToyWorkload(N).lora_spec.numel
    for rate, b in zip(SCHEDULE, per_client, strict=True):
        assert 8 * b <= rate * d  # within the round's budget (the frame header included)
    assert all(r["uplink_rate"] is None for r in rows_of(tmp_path / "at16"))


@pytest.mark.parametrize(("codec", "options"), [("flm_topk", {"reoptimize_every": 2}), ("wf_ecq", {})])
def test_resume_under_a_schedule_equals_uninterrupted(tmp_path, codec, options):
    """A stateful codec (flm_topk) keeps its state while the rate holds and starts it afresh when it
    changes; a run cut in round 3 and resumed ends bit for bit where the uninterrupted one does."""
    cfg = make_config(codec, options, rounds=5, uplink_rates=SCHEDULE)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(cfg, whole, workload=ToyWorkload(N))
    with pytest.raises(CrashError):
        run(cfg, cut, workload=CrashingToy(crash_after_calls=2 * 2 + 1))  # dies in round 3
    run(cfg, cut, workload=ToyWorkload(N), resume=True)
    a, b = load_checkpoint(whole), load_checkpoint(cut)
    assert all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
    assert strip_times(rows_of(whole)) == strip_times(rows_of(cut))


SPEC = UpdateSpec.from_shapes({"w": (400,)})


def _update(seed: int) -> torch.Tensor:
    return torch.randn(400, generator=torch.Generator().manual_seed(seed))


def test_set_codec_keeps_the_residual_and_the_state_of_the_same_options_only():
    ef = ErrorFeedback(get("flm_topk", rate=4.0))
    ef.encode_flat(_update(0), SPEC, seed=1)
    residual, state = ef.residual.clone(), dict(ef.codec.state)
    assert state  # flm_topk keeps its interval choice
    ef.set_codec(get("flm_topk", rate=4.0))  # the same options: nothing changes
    assert ef.codec.state == state
    ef.set_codec(get("flm_topk", rate=2.0))
    assert ef.codec.rate == 2.0 and not ef.codec.state  # another rate: the codec's state starts afresh
    assert torch.equal(ef.residual, residual)  # the residual carries over


def test_a_state_saved_at_another_rate_restores_that_codec():
    ef = ErrorFeedback(get("flm_topk", rate=4.0))
    ef.encode_flat(_update(0), SPEC, seed=1)
    saved = ef.state_dict()
    assert json.loads(saved["codec_options"])["rate"] == 4.0
    back = ErrorFeedback(get("flm_topk", rate=2.0))  # what a resumed run builds before its next round
    back.load_state_dict(saved)
    assert back.codec.rate == 4.0 and back.codec.state.keys() == ef.codec.state.keys()
    back.set_codec(get("flm_topk", rate=4.0))  # the next round at the same rate keeps the restored state
    again, want = back.encode_flat(_update(1), SPEC, seed=2), ef.encode_flat(_update(1), SPEC, seed=2)
    assert again == want


def test_flower_job_under_a_schedule_equals_the_local_engine(tmp_path, task_identity):
    pytest.importorskip("flwr")
    from fedsqueeze.flower import FlowerSettings
    from fedsqueeze.flower.server_app import run_rounds
    from support.flower import FakeGrid
    from support.flower import make_config as flower_config

    codec = ("flm_topk", {"reoptimize_every": 2})
    cfg = flower_config(n=2, k=2, rounds=4, codec=codec, uplink_rates=SCHEDULE)
    settings = FlowerSettings(cfg, round_timeout=5)
    run_rounds(FakeGrid(settings, 2, tmp_path / "state"), settings, tmp_path / "flower")
    run(cfg, tmp_path / "local")
    flower, local = rows_of(tmp_path / "flower"), rows_of(tmp_path / "local")
    assert [r["uplink_rate"] for r in flower] == list(SCHEDULE)
    for a, b in zip(flower, local, strict=True):
        assert a["lora_sha256"] == b["lora_sha256"] and a["uplink_bytes"] == b["uplink_bytes"]
