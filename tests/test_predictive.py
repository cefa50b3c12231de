"""``fedsqueeze.Predictive``: predictive coding against a reference both ends hold (codec ``predictive``)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsqueeze
from fedsqueeze import ConfigError, ErrorFeedback, PayloadError, Predictive, UpdateError, UpdateSpec
from fedsqueeze.codecs import available, codec_class, get
from fedsqueeze.codecs.predictive import MAX_COEF, prefix_bytes, reference_digest
from fedsqueeze.wire.frame import HEADER, HEADER_SIZE, pack_frame, parse_frame
from support.codec_cases import KINDS, make_values, updates

SPEC = UpdateSpec.from_shapes(
    {"l0.A": (16, 96), "l0.B": (96, 16), "l1.A": (16, 96), "l1.B": (96, 16), "head.bias": (40,)}
)
PID = codec_class("predictive").codec_id
# The rate codecs that can be wrapped (not the trained-model ones).
BUDGET_INNERS = [
    n
    for n in available()
    if codec_class(n).rate_option is not None
    and not (codec_class(n).uses_trained_model or codec_class(n).uses_reference)
]


def _pair(
    spec: UpdateSpec = SPEC, alpha: float = 0.9, noise: float = 0.3, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(update, reference)`` with ``u = alpha · r + noise · N(0, σ_r²)`` per tensor, LoRA-like scales."""
    g = torch.Generator().manual_seed(seed)
    ref, upd = {}, {}
    for i, (name, shape) in enumerate(spec.entries):
        r = torch.randn(*shape, generator=g) * 10.0 ** (-i % 3)
        ref[name] = r
        upd[name] = alpha * r + noise * float(r.std()) * torch.randn(*shape, generator=g)
    return upd, ref


def _flat(t: dict[str, torch.Tensor], spec: UpdateSpec = SPEC) -> torch.Tensor:
    return spec.flatten(t, torch.float64)


def _rel(u: dict[str, torch.Tensor], v: dict[str, torch.Tensor], spec: UpdateSpec = SPEC) -> float:
    a, b = _flat(u, spec), _flat(v, spec)
    return float((a - b).square().sum() / a.square().sum())


def _inner_options(name: str, rate: float) -> dict[str, float]:
    return {codec_class(name).rate_option: rate}


# -- round trips ---------------------------------------------------------------------------------------------


def test_identity_inner_reconstructs_within_float32_rounding() -> None:
    u, r = _pair()
    blob = Predictive(get("identity")).encode(u, reference=r, seed=3)
    assert HEADER.unpack_from(blob)[2] == PID
    out = fedsqueeze.decode(blob, SPEC, reference=r)
    a, b = _flat(u), _flat(out)
    # û = f32(p + f32(u − p)): two float32 roundings of values no larger than |u| + |u − p|
    assert float((a - b).abs().max()) <= 2.0**-22 * float(a.abs().max())
    assert _rel(u, out) < 1e-13


@pytest.mark.parametrize(
    ("inner", "rate"), [("topk", 1.0), ("flm_topk", 1.0), ("wf_ecq", 0.5), ("wf_ecq", 1.0), ("qsgd", 4.0)]
)
def test_prediction_lowers_the_error_at_the_same_rate(inner: str, rate: float) -> None:
    u, r = _pair(alpha=0.9, noise=0.3)
    d = SPEC.numel
    plain = get(inner, **_inner_options(inner, rate)).encode(u, seed=1)
    blob = Predictive(get(inner, **_inner_options(inner, rate))).encode(u, reference=r, seed=1)
    assert HEADER.unpack_from(blob)[2] == PID
    assert 8 * len(blob) <= math.floor(rate * d) and 8 * len(plain) <= math.floor(rate * d)
    e_plain = _rel(u, fedsqueeze.decode(plain, SPEC))
    e_pred = _rel(u, fedsqueeze.decode(blob, SPEC, reference=r))
    assert e_pred < 0.5 * e_plain, (inner, e_plain, e_pred)


@pytest.mark.parametrize("inner", BUDGET_INNERS)
@pytest.mark.parametrize("rate", [0.25, 0.5, 1.0, 2.0])
def test_measured_rate_of_the_whole_frame_is_within_the_target(inner: str, rate: float) -> None:
    u, r = _pair(seed=2)
    codec = Predictive(get(inner, **_inner_options(inner, rate)))
    try:
        blob = codec.encode(u, reference=r, seed=0)
    except ConfigError as exc:  # infeasible budgets are refused, never answered with an empty frame
        assert "rate" in str(exc)
        return
    assert 8 * len(blob) <= math.floor(rate * SPEC.numel), (inner, rate, 8 * len(blob) / SPEC.numel)
    out = fedsqueeze.decode(blob, SPEC, reference=r)
    assert _rel(u, out) < 1.0


def test_side_information_that_does_not_fit_is_refused() -> None:
    u, r = _pair()
    side = prefix_bytes(SPEC, (2, 3, 2, 3, 1))
    tiny = (8 * side + 8 * HEADER_SIZE) / SPEC.numel  # the side info alone fills the budget
    with pytest.raises(ConfigError, match="side information"):
        Predictive(get("topk", rate=tiny), predictor="rank").encode(u, reference=r)


def test_no_reference_or_nothing_to_predict_sends_the_plain_inner_frame() -> None:
    u, _ = _pair()
    inner = get("wf_ecq", rate=1.0)
    plain = inner.encode(u, seed=4)
    codec = Predictive(inner)
    assert codec.encode(u, reference=None, seed=4) == plain
    zeros = SPEC.zeros()
    assert codec.encode(u, reference=zeros, seed=4) == plain  # c = 0 everywhere: nothing predicted
    assert fedsqueeze.decode(plain, SPEC, reference=zeros).keys() == u.keys()


def test_plain_frames_ignore_the_reference() -> None:
    u, r = _pair()
    for name in ("identity", "topk", "wf_ecq", "qsgd"):
        blob = get(name).encode(u, seed=5)
        a = fedsqueeze.decode(blob, SPEC)
        b = fedsqueeze.decode(blob, SPEC, reference=r)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_flat_and_mapping_references_are_the_same() -> None:
    u, r = _pair()
    codec = Predictive(get("topk", rate=1.0))
    blob = codec.encode(u, reference=r, seed=0)
    assert codec.encode(u, reference=SPEC.flatten(r), seed=0) == blob
    a = fedsqueeze.decode(blob, SPEC, reference=r)
    b = fedsqueeze.decode(blob, SPEC, reference=SPEC.flatten(r))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert blob[HEADER_SIZE + 2 : HEADER_SIZE + 10] == reference_digest(r, SPEC)


@pytest.mark.parametrize("predictor", ["scalar", "rank", "rows", "columns", "auto"])
def test_every_predictor_round_trips_and_uses_its_modes(predictor: str) -> None:
    u, r = _pair(alpha=1.2, noise=0.2)
    blob = Predictive(get("identity"), predictor=predictor).encode(u, reference=r)
    _, body = parse_frame(blob, SPEC)
    modes = np.unpackbits(np.frombuffer(body[10:12], dtype=np.uint8))[:10].reshape(5, 2) @ [2, 1]
    expect = {
        "scalar": [1, 1, 1, 1, 1],
        "rank": [2, 3, 2, 3, 1],
        "rows": [2, 2, 2, 2, 1],
        "columns": [3, 3, 3, 3, 1],
    }
    if predictor in expect:
        assert modes.tolist() == expect[predictor]
    else:
        assert set(modes.tolist()) <= {0, 1, 2, 3} and modes[4] in (0, 1)
    assert len(body) == prefix_bytes(SPEC, tuple(modes.tolist())) + 4 * SPEC.numel
    out = fedsqueeze.decode(blob, SPEC, reference=r)
    assert _rel(u, out) < 1e-12


def test_per_rank_coefficients_fit_a_per_rank_scaling_exactly() -> None:
    # u = diag(s) · r for A (rows) and r · diag(s) for B (columns): the rank predictor leaves no residual
    _, r = _pair()
    s = torch.linspace(0.2, 2.0, 16)
    u = {
        k: (v * s[:, None] if k.endswith("A") else v * s[None, :] if k.endswith("B") else v)
        for k, v in r.items()
    }
    blob = Predictive(get("topk", density=0.01), predictor="rank").encode(u, reference=r)
    assert _rel(u, fedsqueeze.decode(blob, SPEC, reference=r)) < 1e-10
    blob = Predictive(get("topk", density=0.01), predictor="scalar").encode(u, reference=r)
    assert _rel(u, fedsqueeze.decode(blob, SPEC, reference=r)) > 1e-3


def test_a_tensor_that_prediction_does_not_help_is_coded_as_it_is() -> None:
    u, r = _pair()
    g = torch.Generator().manual_seed(9)
    r["l1.A"] = torch.randn(16, 96, generator=g)  # uncorrelated: the LS fit barely lowers the energy
    r["l0.B"] = torch.zeros(96, 16)  # nothing to predict from
    codec = Predictive(get("identity"), predictor="scalar")
    plan = codec.plan(SPEC.flatten(u), SPEC.flatten(r), SPEC)
    assert plan.modes.tolist()[1] == 0
    a, b = SPEC.offsets[1], SPEC.offsets[2]
    assert torch.equal(plan.prediction[a:b], torch.zeros(b - a, dtype=torch.float64))
    assert plan.energy < float(_flat(u).square().sum())


# -- hostile frames ------------------------------------------------------------------------------------------


def _frame() -> tuple[bytes, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    u, r = _pair()
    return Predictive(get("topk", rate=1.0), predictor="scalar").encode(u, reference=r, seed=7), u, r


def _repack(blob: bytes, body: bytes) -> bytes:
    return pack_frame(PID, SPEC, HEADER.unpack_from(blob)[5], body)


def _with_coef(blob: bytes, index: int, value: float) -> bytes:
    body = bytearray(blob[HEADER_SIZE:])
    at = 10 + (2 * len(SPEC) + 7) // 8 + 4 * index
    body[at : at + 4] = struct.pack(">f", value)
    return _repack(blob, bytes(body))


def test_missing_or_other_reference_is_refused() -> None:
    blob, _, r = _frame()
    with pytest.raises(PayloadError, match="needs the reference"):
        fedsqueeze.decode(blob, SPEC)
    nudged = {k: v.clone() for k, v in r.items()}
    nudged["l1.B"][3, 4] += 1e-3
    with pytest.raises(PayloadError, match="hashes to"):
        fedsqueeze.decode(blob, SPEC, reference=nudged)
    other = {k: v for k, v in r.items() if k != "head.bias"}
    with pytest.raises(PayloadError, match="spec"):
        fedsqueeze.decode(blob, SPEC, reference=other)
    with pytest.raises(PayloadError, match="shape"):
        fedsqueeze.decode(blob, SPEC, reference={**r, "head.bias": torch.zeros(41)})
    with pytest.raises(PayloadError, match="flat reference"):
        fedsqueeze.decode(blob, SPEC, reference=torch.zeros(SPEC.numel + 1))
    with pytest.raises(PayloadError):
        fedsqueeze.decode(blob, SPEC, reference=[1.0, 2.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2 * MAX_COEF, -1e30])
def test_hostile_coefficients_are_refused(value: float) -> None:
    blob, _, r = _frame()
    assert fedsqueeze.decode(_with_coef(blob, 2, 0.5), SPEC, reference=r)  # a finite edit still decodes
    with pytest.raises(PayloadError, match="coefficient"):
        fedsqueeze.decode(_with_coef(blob, 2, value), SPEC, reference=r)


def test_hostile_headers_are_refused() -> None:
    blob, _, r = _frame()
    body = blob[HEADER_SIZE:]
    cases = {
        "version": bytes([2]) + body[1:],
        "unknown inner": body[:1] + bytes([250]) + body[2:],
        "nested": body[:1] + bytes([PID]) + body[2:],
        "trained-model inner": body[:1] + bytes([codec_class("cg_fedllm").codec_id]) + body[2:],
        "rows on a 1-D tensor": body[:11] + bytes([(body[11] & 0x3F) | 0x80]) + body[12:],
        "truncated": body[:12],
        "short": body[:5],
    }
    for what, b in cases.items():
        with pytest.raises(PayloadError):
            fedsqueeze.decode(_repack(blob, b), SPEC, reference=r)
        with pytest.raises(PayloadError):
            fedsqueeze.decode(_repack(blob, b), SPEC)
        assert what


def test_body_limit_is_checked_and_close_to_the_largest_valid_body() -> None:
    cls = codec_class("predictive")
    limit = cls.max_body_bytes(SPEC)
    inner_max = max(
        codec_class(n).max_body_bytes(SPEC)
        for n in available()
        if not (codec_class(n).uses_reference or codec_class(n).uses_trained_model)
    )
    k_max = sum(max(s[0], math.prod(s) // s[0]) if len(s) > 1 else 1 for s in SPEC.shapes)
    assert limit == 10 + (2 * len(SPEC) + 7) // 8 + 4 * k_max + inner_max
    blob, _, r = _frame()
    big = _repack(blob, blob[HEADER_SIZE:] + b"\0" * limit)
    with pytest.raises(PayloadError, match="limit"):
        fedsqueeze.decode(big, SPEC, reference=r)


# -- options, registry, errors -------------------------------------------------------------------------------


def test_by_name_and_by_instance_are_the_same_codec() -> None:
    u, r = _pair()
    a = get("predictive", inner="wf_ecq", inner_options={"rate": 0.5})
    b = Predictive(get("wf_ecq", rate=0.5))
    assert a.options() == b.options() and a == b
    assert a.encode(u, reference=r, seed=2) == b.encode(u, reference=r, seed=2)
    assert get("predictive", **b.options()) == b
    assert codec_class("predictive").uses_reference and not codec_class("topk").uses_reference


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"inner": "predictive"}, "cannot wrap"),
        ({"inner": "cg_fedllm_q"}, "cannot wrap"),
        ({"inner": "nope"}, "unknown codec"),
        ({"inner": 3}, "inner must be"),
        ({"inner": "topk", "inner_options": {"bogus": 1}}, "bogus"),
        ({"inner": "topk", "predictor": "cubic"}, "predictor"),
    ],
)
def test_bad_options_are_config_errors(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get("predictive", **options)
    with pytest.raises(ConfigError, match="inner_options only"):
        Predictive(get("topk"), inner_options={"rate": 1.0})


def test_bad_updates_and_references_at_encode_time() -> None:
    u, r = _pair()
    codec = Predictive(get("topk"))
    with pytest.raises(UpdateError, match="reference contains NaN"):
        codec.encode(u, reference={**r, "head.bias": torch.full((40,), math.nan)})
    with pytest.raises(ConfigError, match="spec"):
        codec.encode(u, reference={k: v for k, v in r.items() if k != "l0.A"})
    with pytest.raises(UpdateError, match="NaN"):
        codec.encode({**u, "head.bias": torch.full((40,), math.inf)}, reference=r)


def test_a_stateful_inner_codec_keeps_its_state_through_the_wrapper() -> None:
    u, r = _pair()
    codec = Predictive(get("powersgd", rank=2))
    codec.encode(u, reference=r, seed=0)
    state = codec.state_dict()
    assert state["inner"], "powersgd's warm start is kept"
    other = Predictive(get("powersgd", rank=2))
    other.load_state_dict(state)
    assert other.encode(u, reference=r, seed=1) == codec.encode(u, reference=r, seed=1)
    assert codec.fresh().state_dict() == {"inner": {}}


# -- error feedback ------------------------------------------------------------------------------------------


def test_error_feedback_around_predictive_is_exact() -> None:
    ef = ErrorFeedback(Predictive(get("topk", rate=0.5)))
    carried = torch.zeros(SPEC.numel, dtype=torch.float64)
    kinds = []
    for rnd in range(5):
        u, r = _pair(alpha=0.8, noise=0.4, seed=10 + rnd)
        reference = None if rnd == 0 else r
        blob = ef.encode(u, seed=rnd, reference=reference)
        kinds.append(HEADER.unpack_from(blob)[2])
        decoded = fedsqueeze.decode(blob, SPEC, reference=reference)
        assert ef.residual is not None
        # e_new = (u + e_old) − û bit for bit, û decoded from the bytes sent with the same reference
        assert torch.equal(ef.residual, (_flat(u) + carried) - _flat(decoded))
        carried = ef.residual.clone()
        if reference is not None:
            with pytest.raises(PayloadError):
                fedsqueeze.decode(blob, SPEC)
    assert kinds[0] == codec_class("topk").codec_id and set(kinds[1:]) == {PID}


def test_error_feedback_passes_no_reference_to_plain_codecs() -> None:
    u, r = _pair()
    a, b = ErrorFeedback(get("topk", rate=0.5)), ErrorFeedback(get("topk", rate=0.5))
    assert a.encode(u, seed=1, reference=r) == b.encode(u, seed=1)
    assert torch.equal(a.residual, b.residual)


# -- property ------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    case=updates(max_numel=2000),
    ref_kind=st.sampled_from(KINDS),
    mix=st.floats(-3.0, 3.0),
    inner=st.sampled_from(["identity", "topk", "wf_ecq", "qsgd"]),
    predictor=st.sampled_from(["scalar", "rank", "auto"]),
)
def test_property_round_trip_over_random_specs_updates_and_references(
    case: tuple[dict, int], ref_kind: str, mix: float, inner: str, predictor: str
) -> None:
    upd, seed = case
    spec = UpdateSpec.from_tensors(upd)
    rng = np.random.default_rng(seed % 2**32)
    ref = {
        k: torch.from_numpy(make_values(ref_kind, v.numel(), rng)).reshape(v.shape) for k, v in upd.items()
    }
    # half the time the update really follows the reference
    upd = {k: (v + mix * ref[k]).clamp(-1e37, 1e37) if seed % 2 else v for k, v in upd.items()}
    codec = Predictive(get(inner), predictor=predictor)
    blob = codec.encode(upd, reference=ref, seed=seed)
    header, body = parse_frame(blob, spec)
    assert header.seed == seed
    cls = codec_class("predictive") if header.codec_id == PID else codec_class(inner)
    assert header.codec_id in (PID, codec_class(inner).codec_id)
    assert len(body) <= cls.max_body_bytes(spec)
    out = fedsqueeze.decode(blob, spec, reference=ref)
    for k, t in out.items():
        assert t.shape == upd[k].shape and t.dtype == torch.float32 and bool(torch.isfinite(t).all())
    if inner == "identity":
        a, b = _flat(upd, spec), _flat(out, spec)
        assert float((a - b).norm()) <= 2.0**-21 * float(a.norm()) + 1e-30
    if header.codec_id == PID:
        with pytest.raises(PayloadError):
            fedsqueeze.decode(blob, spec)
        other = {k: v * 0.5 + 1.0 for k, v in ref.items()}
        with pytest.raises(PayloadError):
            fedsqueeze.decode(blob, spec, reference=other)


def test_auto_sends_the_plain_frame_when_the_reference_does_not_pay() -> None:
    # an unrelated reference: the least-squares gain is far below the price of 32 bits per coefficient
    u, _ = _pair(seed=3)
    g = torch.Generator().manual_seed(77)
    unrelated = {k: torch.randn(*v.shape, generator=g) for k, v in u.items()}
    inner = get("wf_ecq", rate=0.5)
    assert Predictive(inner).encode(u, reference=unrelated, seed=2) == inner.encode(u, seed=2)
    # the fixed scalar predictor still predicts (and pays its side information)
    forced = Predictive(inner, predictor="scalar").encode(u, reference=unrelated, seed=2)
    assert HEADER.unpack_from(forced)[2] == PID


def test_auto_prices_side_information_by_the_budget() -> None:
    # per-row scalings: 16 row coefficients of an A (16 x 96) pay for themselves at 4 bits/param, not at 0.25;
    # the 96 of a B (96 x 16) do not pay at either
    _, r = _pair()
    g = torch.Generator().manual_seed(5)
    u = {
        k: v * (1 + 0.5 * torch.rand(v.shape[0], 1, generator=g))
        + 0.05 * v.std() * torch.randn(*v.shape, generator=g)
        if v.ndim == 2
        else v.clone()
        for k, v in r.items()
    }
    flat_u, flat_r = SPEC.flatten(u), SPEC.flatten(r)
    rich = Predictive(get("identity")).plan(flat_u, flat_r, SPEC, budget=4 * SPEC.numel)
    poor = Predictive(get("identity")).plan(flat_u, flat_r, SPEC, budget=SPEC.numel // 4)
    assert rich.modes[[0, 2]].tolist() == [2, 2] and rich.modes[[1, 3]].tolist() == [1, 1]
    assert set(poor.modes[:4].tolist()) <= {0, 1}


# -- bench rd --predictive -------------------------------------------------------------------------------


def _captures(path, rounds=(1, 2, 3), clients=(0, 4)) -> dict:
    from safetensors.torch import save_file

    spec = UpdateSpec.from_shapes({"l0.A": (8, 64), "l0.B": (64, 8), "b": (12,)})
    g = torch.Generator().manual_seed(1)
    base = {k: torch.randn(*s, generator=g) for k, s in spec.entries}
    data, by = {}, {}
    for rnd in rounds:
        for c in clients:
            t = {k: v * (1 + 0.1 * rnd) + 0.2 * torch.randn(*v.shape, generator=g) for k, v in base.items()}
            by[(rnd, c)] = t
            for k, v in t.items():
                data[f"r{rnd}/c{c}/{k}"] = v.contiguous()
    save_file(data, str(path))
    return by


def test_load_captures_reads_every_update_by_round_and_client(tmp_path) -> None:
    from fedsqueeze.bench.sources import load_captures

    by = _captures(tmp_path / "caps.safetensors")
    caps = load_captures(f"file:{tmp_path / 'caps.safetensors'}")
    assert sorted(caps) == [1, 2, 3] and all(sorted(v) == [0, 4] for v in caps.values())
    assert caps[2][4].name.endswith("#r2/c4")
    assert list(caps[2][4].tensors) == sorted(by[(2, 4)])
    assert torch.equal(caps[3][0].tensors["l0.B"], by[(3, 0)]["l0.B"])
    with pytest.raises(ConfigError, match="whole file"):
        load_captures(f"file:{tmp_path / 'caps.safetensors'}#r2/c4")


def test_bench_rd_predictive_rows(tmp_path) -> None:
    import json

    from fedsqueeze.cli import main as cli_main

    path = tmp_path / "caps.safetensors"
    by = _captures(path)
    out = tmp_path / "rd.json"
    argv = ["bench", "rd", "--predictive", "--source", f"file:{path}", "--codec", "topk", "--codec", "wf_ecq"]
    assert cli_main([*argv, "--rates", "1,2", "--out", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    # rounds 2 and 3 (round 1 has no reference), 2 clients, 2 codecs, 2 rates, plain + predictive
    assert len(rows) == 2 * 2 * 2 * 2 * 2
    assert {(r["round"], r["client"]) for r in rows} == {(2, 0), (2, 4), (3, 0), (3, 4)}
    spec = UpdateSpec.from_tensors(by[(2, 0)])
    for r in rows:
        assert r["reference"] == "prev-mean"
        assert r["bits_per_param"] <= r["target_rate"] + 1e-12
        if not r["predictive"]:
            assert r["db_gain_predictive"] is None
            continue
        plain = next(
            p
            for p in rows
            if not p["predictive"]
            and (p["round"], p["client"], p["codec"], p["target_rate"])
            == (r["round"], r["client"], r["codec"], r["target_rate"])
        )
        assert r["db_gain_predictive"] == pytest.approx(10 * math.log10(plain["rel_error"] / r["rel_error"]))
        assert r["db_gain_predictive"] > 3  # the synthetic rounds are strongly correlated
        # the reference is the plain mean of the previous round's captured updates
        prev = [spec.flatten(by[(r["round"] - 1, c)]) for c in (0, 4)]
        ref = ((prev[0].double() + prev[1].double()) / 2).float()
        codec = Predictive(get(r["codec"], rate=r["target_rate"]))
        blob = codec.encode(by[(r["round"], r["client"])], reference=ref, seed=r["seed"])
        assert len(blob) == r["payload_bytes"]
        assert sum(r["modes"].values()) == len(spec)


def test_bench_rd_predictive_refuses_other_sources_and_the_wrapper(tmp_path, capsys) -> None:
    from fedsqueeze.cli import main as cli_main

    base = ["bench", "rd", "--out", str(tmp_path), "--no-plot"]
    assert cli_main([*base, "--predictive", "--source", "gaussian"]) == 2
    assert "file:CAPTURES" in capsys.readouterr().err
    assert cli_main([*base, "--source", "gaussian", "--codec", "predictive"]) == 2
    assert "needs a reference" in capsys.readouterr().err


def test_rate_path_points_a_rate_sweep_at_the_inner_codec() -> None:
    from fedsqueeze.codecs import codec_class

    assert codec_class("topk").rate_path({}) == ("rate",)
    assert codec_class("signsgd").rate_path({}) is None
    assert Predictive.rate_path({"inner": "wf_ecq"}) == ("inner_options", "rate")
    assert Predictive.rate_path({}) == ("inner_options", "rate")  # the default inner codec, topk
    assert Predictive.rate_path({"inner": "signsgd"}) is None  # fixed-rate inner codec
    assert Predictive.rate_path({"inner": "no-such-codec"}) is None  # construction reports the name
    codec = fedsqueeze.codecs.get("predictive", inner="wf_ecq", inner_options={"rate": 0.5})
    assert codec.inner.rate == 0.5  # the path is where construction reads the rate
