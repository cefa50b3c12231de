"""CG-FedLLM: layout, autoencoder shapes, codecs (cg_fedllm, cg_fedllm_q), fingerprints, TGAP, controls."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsqueeze
from fedsqueeze import PayloadError, UpdateSpec
from fedsqueeze.cg_fedllm import store
from fedsqueeze.cg_fedllm.autoencoder import AEConfig, CGAutoEncoder
from fedsqueeze.cg_fedllm.controls import score, shuffle_control, train_mean_predictor
from fedsqueeze.cg_fedllm.layout import FactorLayout
from fedsqueeze.cg_fedllm.store import ModelStore
from fedsqueeze.cg_fedllm.tgap import Captures, TGAPConfig, load_captures, tgap_pretrain, tgap_traffic
from fedsqueeze.codecs import codec_class, decode_flat, get
from fedsqueeze.errors import ConfigError

CG, CGQ = codec_class("cg_fedllm"), codec_class("cg_fedllm_q")


def lora_spec(layers: int, hidden: int, r: int, v_out: int | None = None) -> UpdateSpec:
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(layers):
        for m, out in (("q_proj", hidden), ("v_proj", v_out or hidden)):
            shapes[f"model.layers.{i}.self_attn.{m}.lora_A.weight"] = (r, hidden)
            shapes[f"model.layers.{i}.self_attn.{m}.lora_B.weight"] = (out, r)
    return UpdateSpec.from_shapes(shapes)


MINILM = lora_spec(6, 384, 16)
SMOLLM2 = lora_spec(30, 576, 16, v_out=192)  # q_proj 576→576, v_proj 576→192 (3 KV heads of 64)


@pytest.mark.parametrize(
    ("spec", "hw"), [(MINILM, (384, 384)), (SMOLLM2, (576, 1920))], ids=["minilm", "smollm2"]
)
def test_layout_and_latent_shapes(spec: UpdateSpec, hw: tuple[int, int]) -> None:
    lay = FactorLayout.from_spec(spec, 64)
    assert (lay.height, lay.width) == hw
    assert int(lay.mask().sum()) == spec.numel
    flat = torch.randn(spec.numel)
    assert torch.equal(lay.from_images(lay.to_images(flat))[0], flat)
    # the paper's architecture: latent [64, H/64, W/64] = 1/64 of the padded image, ~247 k params per half
    model = CGAutoEncoder()
    assert model.latent_shape(*hw) == (64, hw[0] // 64, hw[1] // 64)
    assert sum(p.numel() for p in model.encoder.parameters()) == pytest.approx(246_800, rel=0.01)


def test_layout_is_independent_of_entry_order() -> None:
    spec = lora_spec(2, 64, 4)
    rev = UpdateSpec(tuple(reversed(spec.entries)))
    flat = torch.randn(spec.numel)
    u = spec.unflatten(flat)
    a = FactorLayout.from_spec(spec, 8).to_images(flat)
    b = FactorLayout.from_spec(rev, 8).to_images(rev.flatten({k: u[k] for k in rev.names}))
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def tiny_model() -> CGAutoEncoder:
    torch.manual_seed(0)
    return CGAutoEncoder(AEConfig(depth=3, res_blocks=1)).eval()


def test_cg_fedllm_roundtrip_deterministic_and_sized(tiny_model: CGAutoEncoder) -> None:
    spec = lora_spec(2, 64, 4)  # image 64×32 (8 blocks of r = 4), latent 8×8×4
    flat = torch.randn(spec.numel) * 1e-3
    for dtype, width in (("fp32", 4), ("fp16", 2)):
        codec = CG.from_model(tiny_model, latent_dtype=dtype)
        a = codec.encode_with_spec(flat, spec, seed=3)
        assert a == codec.encode_with_spec(flat, spec, seed=3)
        assert len(a) == 32 + 10 + width * 8 * (64 // 8) * (32 // 8)
        out = decode_flat(a, spec)
        assert out.shape == (spec.numel,) and bool(torch.isfinite(out).all())


def test_fingerprint_mismatch_and_unknown_are_payload_errors(tiny_model: CGAutoEncoder) -> None:
    spec = lora_spec(1, 64, 4)
    blob = bytearray(CG.from_model(tiny_model).encode_with_spec(torch.randn(spec.numel), spec))
    body = bytearray(blob[32:])
    body[1] ^= 0xFF  # another fingerprint
    import zlib

    from fedsqueeze.wire.frame import pack_frame

    forged = pack_frame(30, spec, 0, bytes(body))
    assert zlib.crc32(forged[32:]) == zlib.crc32(bytes(body))
    with pytest.raises(PayloadError, match="unknown here"):
        decode_flat(forged, spec)
    other = CGAutoEncoder(AEConfig(depth=3, res_blocks=1))
    fp = tiny_model.fingerprint().hex()
    with pytest.raises(PayloadError, match="another fingerprint"):
        decode_flat(bytes(blob), spec, models={fp: other})
    # the right model through a resolver works, and truncation is refused
    assert decode_flat(bytes(blob), spec, models=ModelStore({fp: tiny_model})).shape == (spec.numel,)
    with pytest.raises(PayloadError):
        decode_flat(pack_frame(30, spec, 0, bytes(blob[32:-2])), spec)


def test_save_load_roundtrip(tmp_path, tiny_model: CGAutoEncoder) -> None:
    path = tmp_path / "ae.safetensors"
    fp = store.save(tiny_model, path, info={"note": "test"})
    loaded = store.load(path)
    assert loaded.fingerprint().hex() == fp
    spec = lora_spec(1, 64, 4)
    flat = torch.randn(spec.numel)
    by_path = get("cg_fedllm", model_path=str(path)).encode_with_spec(flat, spec)
    assert by_path == CG.from_model(tiny_model).encode_with_spec(flat, spec)
    with pytest.raises(ConfigError, match="fedsqueeze tgap"):
        get("cg_fedllm", model_path=str(tmp_path / "missing.safetensors")).encode_with_spec(flat, spec)
    with pytest.raises(ConfigError, match="needs a trained autoencoder"):
        get("cg_fedllm").encode_with_spec(flat, spec)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([None, 0.3, 1.0, 3.0]))
def test_cg_fedllm_q_fallback_fits_rate_and_roundtrips(seed: int, rate: float | None) -> None:
    spec = lora_spec(2, 64, 8)
    flat = torch.randn(spec.numel, generator=torch.Generator().manual_seed(seed)) * 1e-2
    codec = get("cg_fedllm_q", rate=rate)
    blob = codec.encode_with_spec(flat, spec, seed=seed)
    if rate is not None:
        assert 8 * len(blob) <= rate * spec.numel or len(blob) <= 32 + 10
    out = decode_flat(blob, spec)
    assert bool(torch.isfinite(out).all())
    # orthonormal projection onto block means: never worse than predicting zero
    assert score(flat[None], out[None])["rel_error"] <= 1.0 + 1e-4


def test_cg_fedllm_q_rate_distortion_monotone_and_error_feedback() -> None:
    spec = lora_spec(4, 128, 8)
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.avg_pool1d(torch.randn(1, 1, spec.numel + 15, generator=g), 16, 1)[0, 0]
    errs, bits = [], []
    for rate in (0.1, 0.3, 1.0):
        blob = get("cg_fedllm_q", rate=rate).encode_with_spec(smooth, spec)
        bits.append(8 * len(blob) / spec.numel)
        errs.append(score(smooth[None], decode_flat(blob, spec)[None])["rel_error"])
    assert bits[0] <= bits[1] <= bits[2] and errs[0] >= errs[1] >= errs[2]
    ef = fedsqueeze.ErrorFeedback(get("cg_fedllm_q", rate=0.3))
    ef.encode_flat(smooth, spec)
    assert ef.residual is not None and ef.residual_norm > 0


def test_cg_fedllm_q_with_model_and_hostile_bodies(tiny_model: CGAutoEncoder) -> None:
    model = CGAutoEncoder(dataclasses.replace(tiny_model.config, normalize="tensor_rms", tanh_head=False))
    spec = lora_spec(2, 64, 4)
    flat = torch.randn(spec.numel)
    blob = CGQ.from_model(model.eval(), rate=2.0).encode_with_spec(flat, spec)
    assert decode_flat(blob, spec).shape == (spec.numel,)
    from fedsqueeze.wire.frame import pack_frame

    rng = torch.Generator().manual_seed(0)
    for n in range(40):  # random corruption of the body: PayloadError or a finite vector, never a crash
        body = bytearray(blob[32:])
        pos = int(torch.randint(len(body), (1,), generator=rng))
        body[pos] ^= 1 << (n % 8)
        if n % 5 == 0:
            body = body[: max(1, pos)]
        try:
            out = decode_flat(pack_frame(31, spec, 0, bytes(body)), spec)
        except PayloadError:
            continue
        assert bool(torch.isfinite(out).all())


def _structured(n_rounds: int, n_clients: int, spec: UpdateSpec, seed: int) -> Captures:
    """Low-rank "updates": a few smooth spatial patterns of the factor stack with random coefficients."""
    g = torch.Generator().manual_seed(seed)
    lay = FactorLayout.from_spec(spec, 8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, lay.height), torch.linspace(0, 1, lay.width), indexing="ij")
    pats = torch.stack([torch.sin(3 * yy + 2 * xx), torch.cos(5 * yy), yy - 0.5])
    basis = lay.from_images(pats[:, None])  # (3, d)
    rs, cs, fl = [], [], []
    for r in range(1, n_rounds + 1):
        for c in range(n_clients):
            coef = torch.randn(3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
            fl.append(coef @ basis + 0.05 * torch.randn(spec.numel, generator=g))
            rs.append(r)
            cs.append(c)
    return Captures(spec, tuple(rs), tuple(cs), torch.stack(fl))


@pytest.mark.slow  # ~1-4 minutes of autoencoder training on 2 CPU cores; `make test-slow`
def test_tgap_beats_the_train_mean_control_on_structured_updates() -> None:
    spec = lora_spec(2, 32, 4)  # image 32×16
    train = _structured(6, 4, spec, seed=0)
    held = _structured(2, 4, spec, seed=1).flats
    ae = AEConfig(depth=3, channels=8, res_blocks=1, normalize="global_rms", relu_ends=False, tanh_head=False)
    model, log = tgap_pretrain(train, ae=ae, config=TGAPConfig(steps=250, batch_size=8, lr=3e-3, seed=0))
    assert log["loss_last"] < log["loss_first"]
    codec = CG.from_model(model)
    recon = torch.stack([decode_flat(codec.encode_with_spec(u, spec), spec) for u in held])
    ae_err = score(held, recon)["rel_error"]
    mean_err = score(held, train_mean_predictor(train.flats, held))["rel_error"]
    shuffled = score(
        held, shuffle_control(lambda u: decode_flat(codec.encode_with_spec(u, spec), spec), held)
    )
    # Measured relation on this structured source: the AE carries per-update information (beats the
    # input-independent mean and its own shuffled control).
    assert ae_err < mean_err
    assert ae_err < shuffled["rel_error"]


def test_load_captures_and_traffic(tmp_path) -> None:
    from safetensors.torch import save_file

    spec = lora_spec(1, 16, 2)
    caps = _structured(2, 2, spec, seed=0)
    tensors = {}
    for r, c, f in zip(caps.rounds, caps.clients, caps.flats, strict=True):
        for name, t in spec.unflatten(f).items():
            tensors[f"r{r}/c{c}/{name}"] = t.contiguous()
    save_file(tensors, str(tmp_path / "captures.safetensors"))
    back = load_captures(tmp_path / "captures.safetensors")
    assert back.rounds == caps.rounds and back.clients == caps.clients
    assert torch.equal(back.flats, torch.stack([back.spec.flatten(spec.unflatten(f)) for f in caps.flats]))
    t = tgap_traffic(snapshot_frames=[100, 200], encoder_bytes=1000, num_clients=3, downlink_bytes=50)
    assert t == {
        "tgap_uplink_bytes": 300,
        "tgap_downlink_bytes": 3050,
        "encoder_download_bytes": 3000,
        "tgap_total_bytes": 3350,
    }
