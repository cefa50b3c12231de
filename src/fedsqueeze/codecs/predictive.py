"""``predictive`` (id 60): predictive coding against a reference both ends hold.

Client updates of one round are strongly correlated with the previous round's global step. Both the client
and the server hold that step (the *reference* ``r``, a vector of the update's spec), so the client sends only
what the server cannot predict from it: per tensor it fits a linear predictor ``p = c · r`` by least squares,
codes the residual ``u − p`` with any other codec (the *inner* codec) and writes the coefficients into the
frame; the server decodes the residual and adds ``p`` back.

Predictor modes, one per tensor (a tensor of ``ndim ≥ 2`` is viewed as ``n × m``, ``n = shape[0]``):

=====  ===========  =============  ==========================================================
mode   name         coefficients   prediction
=====  ===========  =============  ==========================================================
0      none         0              ``p = 0`` (the tensor is coded as it is)
1      scalar       1              ``p = c · r``, ``c = <u, r> / <r, r>``
2      rows         n              ``p[i, :] = c_i · r[i, :]`` (ndim ≥ 2 only)
3      columns      m              ``p[:, j] = c_j · r[:, j]`` (ndim ≥ 2 only)
=====  ===========  =============  ==========================================================

Every coefficient is a least-squares fit (0 where the reference is all zero), rounded to float32 and clipped
to ``±MAX_COEF``; the encoder predicts with exactly the rounded coefficients the decoder reads. A mode is only
used where its residual energy is below the tensor's own energy; when no tensor is predicted at all, the
wrapper sends the inner codec's plain frame at the whole budget (it decodes without a reference).

The default predictor ``auto`` chooses each tensor's mode by a Lagrangian cost at the frame's budget (residual
distortion under reverse water-filling plus 32 bits per coefficient at the slope ``λ = 2 ln 2 · θ``, see
:meth:`Predictive.plan`); on captured LoRA updates it sends one scalar for most tensors and none for the
rest (``docs/predictive.md`` has the measurements).

Budget: when the inner codec has a rate (its ``rate_option`` is set), the *whole* predictive frame fits
``floor(rate · d)`` bits: the inner codec is given that budget minus the predictive side information (the
body prefix below). A budget that cannot hold the side information raises :class:`~fedsqueeze.ConfigError`.
With the inner codec's rate unset, its own budget applies to its frame and the side information comes on top.

Body layout (bytes, then MSB-first bit fields)::

    version    u8      1
    inner id   u8      codec id of the inner codec (not predictive, not a trained-model codec)
    ref hash   8 B     first 8 bytes of SHA-256 of the reference as little-endian float32, spec order
    modes      2 bits per tensor, spec order (0 none, 1 scalar, 2 rows, 3 columns), zero bits to a byte
    coefs      f32 (u32 bit patterns) x K, K = sum of the modes' counts above, spec order
    inner      the rest: the inner codec's body (its frame without the 32-byte header; same seed)

The decoder refuses (``PayloadError``) a missing reference (unless the body names the zero vector's hash: a
body coded against zero decodes without one), a reference of another spec or whose hash is not the one in
the body, an unknown version or inner id, row/column modes on tensors with ``ndim < 2``, a
coefficient that is NaN, ±Inf or above ``MAX_COEF`` in magnitude, and an inner body over the inner codec's
``max_body_bytes``. Reconstruction: ``û = p + decode_inner(body)`` in float64, saturated to the float32 range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, PayloadError, UpdateError
from ..spec import UpdateSpec
from ..wire.bitpack import BitReader, pack_uints
from ..wire.frame import HEADER_SIZE, pack_frame
from .base import FP32_MAX, Codec, ModelSource, Reference, all_finite
from .budget import HEADER_BITS
from .registry import by_id, codec_class, get, register

__all__ = [
    "MAX_COEF",
    "MODES",
    "PREDICTORS",
    "Predictive",
    "PredictorPlan",
    "lagrangian",
    "mode_counts",
    "prefix_bytes",
    "reference_digest",
    "water_level",
    "water_level_of",
]

VERSION = 1
MAX_COEF = 1e6  # |c| above this is refused by the decoder (an encoder clips to it)
MODES = ("none", "scalar", "rows", "columns")
PREDICTORS = ("scalar", "rank", "rows", "columns", "auto")
_FIXED = 1 + 1 + 8  # version, inner id, reference hash
_COEF_BITS = 32


def _matrix(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(n, m)`` of a tensor with ``ndim >= 2`` viewed as ``shape[0] x rest``, else ``None``."""
    if len(shape) < 2:
        return None
    n = shape[0]
    return n, (math.prod(shape) // n if n else 0)


def mode_counts(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients of each mode for a tensor of ``shape`` (``-1``: the mode is not allowed)."""
    nm = _matrix(shape)
    return (0, 1, -1, -1) if nm is None else (0, 1, nm[0], nm[1])


def prefix_bytes(spec: UpdateSpec, modes: np.ndarray | tuple[int, ...]) -> int:
    """Bytes of the body before the inner body for these modes."""
    k = sum(mode_counts(s)[int(m)] for s, m in zip(spec.shapes, modes, strict=True))
    return _FIXED + (2 * len(spec) + 7) // 8 + 4 * k


def _flat_reference(reference: Reference, spec: UpdateSpec) -> torch.Tensor:
    """The reference as a contiguous float32 CPU vector of ``spec``.

    Raises
    ------
    ConfigError
        Not a mapping with ``spec``'s names and shapes nor a flat tensor of its length (the decoder turns
        this into a :class:`~fedsqueeze.PayloadError`).
    """
    if torch.is_tensor(reference):
        t = reference.detach()
        if t.ndim != 1 or t.numel() != spec.numel:
            raise ConfigError(
                f"predictive: a flat reference must have shape ({spec.numel},), got {tuple(t.shape)}"
            )
        return t.to("cpu", torch.float32).contiguous()
    if not isinstance(reference, Mapping):
        raise ConfigError(
            f"predictive: the reference is a mapping of the update's tensors (or a flat tensor), got "
            f"{type(reference).__name__}"
        )
    try:
        return spec.flatten(reference, torch.float32).contiguous()
    except (ConfigError, UpdateError) as exc:
        raise ConfigError(f"predictive: the reference does not match the update's spec: {exc}") from None


def reference_digest(reference: Reference, spec: UpdateSpec) -> bytes:
    """The 8-byte reference hash of the wire format: SHA-256 of the little-endian float32 values, spec order.

    Raises
    ------
    ConfigError
        ``reference`` does not have ``spec``'s names and shapes.
    """
    flat = _flat_reference(reference, spec)
    return _digest(flat)


def _digest(flat32: torch.Tensor) -> bytes:
    arr = flat32.numpy().astype("<f4", copy=False)
    return hashlib.sha256(np.ascontiguousarray(arr).data.cast("B")).digest()[:8]


def _allowed_inner(cls: type[Codec]) -> str | None:
    """Why ``cls`` cannot be an inner codec, or ``None``."""
    if cls.uses_reference:
        return "it needs a reference itself (nest nothing inside predictive)"
    if cls.uses_trained_model:
        return "codecs with a trained model cannot be wrapped (their decoder needs models=)"
    return None


# -- fitting -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PredictorPlan:
    """One predictor: a mode per tensor, the float32 coefficients and the prediction they give.

    Attributes
    ----------
    modes
        ``int8`` mode per tensor (see :data:`MODES`).
    coefs
        The float32 coefficients in wire order.
    prediction
        ``p`` as a float64 vector of the spec (what the decoder computes from ``coefs`` and the reference).
    energy
        ``‖u − p‖²`` (float64).
    """

    modes: np.ndarray
    coefs: np.ndarray
    prediction: torch.Tensor
    energy: float

    @property
    def predicted(self) -> bool:
        """True when at least one tensor is predicted."""
        return bool((self.modes != 0).any())


def _coefs(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients ``num / den`` (0 where ``den = 0``), rounded to float32, clipped."""
    safe = torch.where(den > 0, den, torch.ones_like(den))
    c = torch.where(den > 0, num / safe, torch.zeros_like(num))
    c = torch.nan_to_num(c, nan=0.0, posinf=MAX_COEF, neginf=-MAX_COEF).clamp(-MAX_COEF, MAX_COEF)
    return c.to(torch.float32).to(torch.float64)


def _predict(mode: int, r: torch.Tensor, c: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The prediction of one tensor (float64, flat) from its reference slice and float64 coefficients."""
    if mode == 0:
        return torch.zeros_like(r)
    if mode == 1:
        return c[0] * r
    nm = _matrix(shape)
    assert nm is not None, "row and column modes exist only for tensors with ndim >= 2"
    rm = r.view(nm)
    return (c[:, None] * rm if mode == 2 else c[None, :] * rm).reshape(-1)


def fit_modes(
    u: torch.Tensor, r: torch.Tensor, shape: tuple[int, ...]
) -> list[tuple[torch.Tensor, float] | None]:
    """Per mode (index = mode): the float64 coefficients and the residual energy; ``None`` if not allowed.

    ``u`` and ``r`` are float64 slices of one tensor. A mode whose residual does not fit float32 gets an
    infinite energy, so it is never chosen.
    """
    out: list[tuple[torch.Tensor, float] | None] = [
        (torch.zeros(0, dtype=torch.float64), float(u.square().sum()))
    ]
    fits: list[tuple[int, torch.Tensor]] = [
        (1, _coefs((u * r).sum().reshape(1), r.square().sum().reshape(1)))
    ]
    nm = _matrix(shape)
    if nm is not None and u.numel():
        um, rm = u.view(nm), r.view(nm)
        fits.append((2, _coefs((um * rm).sum(1), rm.square().sum(1))))
        fits.append((3, _coefs((um * rm).sum(0), rm.square().sum(0))))
    for mode, c in fits:
        res = u - _predict(mode, r, c, shape)
        big = res.numel() and float(res.abs().max()) > FP32_MAX
        out.append((c, math.inf if big else float(res.square().sum())))
    while len(out) < 4:
        out.append(None)
    return out


def water_level(variances: np.ndarray, sizes: np.ndarray, bits: float) -> float:
    """Reverse water-filling level ``θ`` at which ``Σ n_t / 2 · log2⁺(σ_t² / θ) = bits`` (bisection).

    ``0`` when every variance is 0; ``max σ²`` when ``bits <= 0``.
    """
    v = np.asarray(variances, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    keep = (v > 0) & (n > 0)
    v, n = v[keep], n[keep]
    if v.size == 0:
        return 0.0
    if bits <= 0:
        return float(v.max())
    lo = math.log(float(v.min())) - 2.0 * math.log(2.0) * bits / float(n.min()) - 1.0
    hi = math.log(float(v.max()))
    lv = np.log(v)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        rate = float((0.5 * n * np.maximum(lv - mid, 0.0)).sum()) / math.log(2.0)
        lo, hi = (mid, hi) if rate > bits else (lo, mid)
    return math.exp(hi)


def water_level_of(fits: list[list], spec: UpdateSpec, budget: int) -> float:
    """The water level ``θ`` at ``budget`` bits (whole frame) for the scalar predictor's residuals.

    Reverse water-filling over the per-tensor residual variances of the scalar fits with the bits left after
    the frame header and the scalar side information; ``inf`` when nothing is left.
    """
    left = budget - HEADER_BITS - 8 * prefix_bytes(spec, tuple(1 for _ in spec.shapes))
    if left <= 0:
        return math.inf
    energy = np.array([f[1][1] if math.isfinite(f[1][1]) else f[0][1] for f in fits])
    sizes = np.array(spec.sizes, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(sizes > 0, energy / np.maximum(sizes, 1), 0.0)
    return water_level(var, sizes, float(left))


def lagrangian(energy: float, size: int, theta: float) -> float:
    """``D + λ R`` of a tensor of residual energy ``energy`` under reverse water-filling at level ``θ``
    (``λ = 2 ln 2 · θ``, the distortion one bit buys there).

    Below the water (variance ≤ θ) the tensor gets no bits and its energy is its distortion; above it, it
    ends at ``size · θ`` and costs ``size / 2 · log2(variance / θ)`` bits.
    """
    if size == 0 or energy <= size * theta or theta <= 0:
        return energy if theta > 0 or size == 0 else 0.0
    lam = 2.0 * math.log(2.0) * theta
    return size * theta + lam * 0.5 * size * math.log2(energy / (size * theta))


# -- the codec -----------------------------------------------------------------------------------------------


@register
@dataclasses.dataclass(frozen=True)
class Predictive(Codec):
    """Predictive coding: send ``inner(u − c·r)`` and the coefficients ``c`` against a shared reference ``r``.

    Wrap any codec (``Predictive(get("wf_ecq", rate=0.5))``, or by name:
    ``get("predictive", inner="wf_ecq", inner_options={"rate": 0.5})``); encode with
    ``encode(update, reference=r, seed=...)`` and decode with ``fedsqueeze.decode(blob, spec, reference=r)``.
    The module docstring has the wire format and the budget rule.

    Parameters
    ----------
    inner
        The codec that codes the residual: a codec instance or a registered codec name (then built with
        ``inner_options``). Not ``predictive`` itself and not a codec with a trained model.
    inner_options
        Options of the inner codec when ``inner`` is a name (empty when it is an instance).
    predictor
        Which coefficients are fitted per tensor: ``"scalar"`` (one per tensor), ``"rows"`` / ``"columns"``
        (one per row / column of each matrix, a scalar for 1-D tensors), ``"rank"`` (one per entry of the
        smaller dimension of each matrix: per LoRA rank component, ``r`` coefficients for ``A (r × in)`` and
        ``B (out × r)``), or ``"auto"`` (per tensor, none, scalar or rank, whichever has the smallest residual
        energy once the side information is paid; see :meth:`plan`). Every mode falls back to no prediction
        for a tensor whose residual energy is not below its own energy.
    """

    name: ClassVar[str] = "predictive"
    codec_id: ClassVar[int] = 60
    summary: ClassVar[str] = "predictive coding: codes u - c*r against a shared reference r (wraps a codec)"
    uses_reference: ClassVar[bool] = True

    inner: Any = "topk"
    inner_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    predictor: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.inner, str):
            if not isinstance(self.inner_options, Mapping):
                raise ConfigError(f"predictive: inner_options must be a table, got {self.inner_options!r}")
            codec = get(self.inner, **dict(self.inner_options))
        elif isinstance(self.inner, Codec):
            if self.inner_options:
                raise ConfigError("predictive: give inner_options only with an inner codec name")
            codec = self.inner.fresh()
        else:
            raise ConfigError(f"predictive: inner must be a codec or a codec name, got {self.inner!r}")
        why = _allowed_inner(type(codec))
        if why:
            raise ConfigError(f"predictive: cannot wrap {codec.name}: {why}")
        if self.predictor not in PREDICTORS:
            raise ConfigError(f"predictive: predictor must be one of {PREDICTORS}, got {self.predictor!r}")
        object.__setattr__(self, "inner", codec)
        object.__setattr__(self, "inner_options", {})

    @classmethod
    def rate_path(cls, options: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The inner codec's rate: ``("inner_options", <its rate option>)`` when ``inner`` names a codec with
        a rate, else ``None`` (an unknown inner name is left to construction to report)."""
        inner = options.get("inner", cls.inner)
        if not isinstance(inner, str):
            return None
        try:
            option = codec_class(inner).rate_option
        except ConfigError:
            return None
        return ("inner_options", option) if option else None

    # -- options and state ---------------------------------------------------------------------------------
    @property
    def codec(self) -> Codec:
        """The inner codec instance (this wrapper's own copy)."""
        return self.inner

    def options(self) -> dict[str, Any]:
        """``inner`` by name with its options, so ``get("predictive", **options())`` rebuilds the codec."""
        return {"inner": self.inner.name, "inner_options": self.inner.options(), "predictor": self.predictor}

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))

    # -- budget --------------------------------------------------------------------------------------------
    def _inner_for(self, spec: UpdateSpec, side_bytes: int) -> Codec:
        """The inner codec with its rate lowered by ``side_bytes`` of side information (whole frame fits)."""
        opt = type(self.inner).rate_option
        rate = getattr(self.inner, opt) if opt else None
        if rate is None:
            return self.inner
        d = spec.numel
        budget = math.floor(rate * d)
        left = budget - 8 * side_bytes
        if left <= HEADER_BITS:
            raise ConfigError(
                f"predictive: rate {rate:g} bits/param ({budget} bits for d={d}) cannot hold the "
                f"{8 * side_bytes}-bit predictor side information and a frame; raise the rate or use "
                "predictor='scalar'"
            )
        inner = dataclasses.replace(self.inner, **{opt: left / d})
        inner.load_state_dict(self.inner.state_dict())
        return inner

    def _target_bits(self, spec: UpdateSpec) -> int | None:
        opt = type(self.inner).rate_option
        rate = getattr(self.inner, opt) if opt else None
        return None if rate is None else math.floor(rate * spec.numel)

    # -- predictor -----------------------------------------------------------------------------------------
    def plan(
        self, flat: torch.Tensor, reference: torch.Tensor, spec: UpdateSpec, *, budget: int | None = None
    ) -> PredictorPlan:
        """Choose the modes and coefficients for ``flat`` against ``reference`` (float vectors of ``spec``).

        The fixed predictors (``scalar``, ``rank``, ``rows``, ``columns``) use their mode on every tensor
        whose residual energy it lowers, else none. ``auto`` picks per tensor the mode (none, scalar, rows,
        columns) minimising ``E_mode + λ · 32 · coefficients_mode``, with ``λ`` the distortion one bit of
        the frame buys: ``2 ln 2 · θ``, the slope of the reverse water-filling distortion at water level
        ``θ``, for the per-tensor residual variances of the scalar predictor and the ``budget`` (bits of the
        whole frame) less the header and the scalar side information. ``budget=None`` with ``auto``: ``λ =
        0`` (the lowest residual energy wins).
        """
        u64 = flat.to(torch.float64)
        r64 = reference.to(torch.float64)
        bounds = list(zip(spec.shapes, spec.offsets[:-1], spec.offsets[1:], strict=True))
        fits = [fit_modes(u64[a:b], r64[a:b], shape) for shape, a, b in bounds]
        theta = 0.0
        if self.predictor == "auto" and budget is not None:
            theta = water_level_of(fits, spec, budget)
        modes = np.zeros(len(spec), dtype=np.int8)
        coefs: list[torch.Tensor] = []
        pred = torch.zeros_like(u64)
        energy = 0.0
        for t, ((shape, a, b), fit) in enumerate(zip(bounds, fits, strict=True)):
            mode = self._choose(fit, shape, theta)
            plain, chosen = fit[0], fit[mode]
            assert plain is not None  # mode none is always allowed
            if chosen is None or not chosen[1] < plain[1]:
                mode, chosen = 0, plain  # not allowed here (an empty tensor) or no lower energy
            modes[t] = mode
            energy += chosen[1]
            if mode:
                coefs.append(chosen[0])
                pred[a:b] = _predict(mode, r64[a:b], chosen[0], shape)
        cat = torch.cat(coefs) if coefs else torch.zeros(0, dtype=torch.float64)
        return PredictorPlan(modes, cat.to(torch.float32).numpy(), pred, energy)

    def _choose(self, fit: list, shape: tuple[int, ...], theta: float) -> int:
        """The mode of one tensor (before the fallback to none where it does not lower the energy).

        ``auto``: the mode of least :func:`lagrangian` cost of its residual plus ``λ`` per side bit, at the
        water level ``theta`` (0: the least residual energy; ``inf``: no bits left, none).
        """
        nm = _matrix(shape)
        if self.predictor != "auto":
            if nm is None or self.predictor == "scalar":
                return 1
            if self.predictor == "rank":
                return 2 if nm[0] <= nm[1] else 3
            return 2 if self.predictor == "rows" else 3
        if not theta < math.inf:
            return 0
        counts = mode_counts(shape)
        size = math.prod(shape)
        lam = 2.0 * math.log(2.0) * theta
        allowed = [m for m in range(4) if fit[m] is not None and counts[m] >= 0 and math.isfinite(fit[m][1])]

        def cost(m: int) -> tuple[float, int]:
            return lagrangian(fit[m][1], size, theta) + lam * _COEF_BITS * counts[m], counts[m]

        return min(allowed, key=cost)

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(
        self, update: Mapping[str, torch.Tensor], *, seed: int = 0, reference: Reference | None = None
    ) -> bytes:
        """Encode ``update`` predicted from ``reference``.

        Parameters
        ----------
        update
            Named tensors of one client's update.
        seed
            Seed of every random choice of the inner codec; stored in the frame header.
        reference
            What both ends hold (e.g. the previous round's global step): a mapping with the update's names
            and shapes, or a flat tensor of its length. ``None`` (default) codes against zero: the inner
            codec's plain frame, which decodes without a reference (no reference yet, e.g. the first round).

        Returns
        -------
        bytes
            A predictive frame, or the inner codec's plain frame when nothing is predicted.

        Raises
        ------
        UpdateError
            ``update`` or ``reference`` holds NaN or Inf, or ``update`` is not a mapping of tensors.
        ConfigError
            ``reference`` has another spec, or the budget cannot hold the side information.
        """
        return super().encode(update, seed=seed, reference=reference)

    def encode_with_spec(
        self,
        flat: torch.Tensor,
        spec: UpdateSpec,
        *,
        seed: int = 0,
        reference: Reference | None = None,
    ) -> bytes:
        """Like :meth:`encode` for a flat float32 vector of ``spec``."""
        if reference is None:
            return self.inner.encode_with_spec(flat, spec, seed=seed)
        flat = self._checked_flat(flat, spec)
        ref = _flat_reference(reference, spec)
        if not all_finite(ref):
            raise UpdateError("predictive: the reference contains NaN or Inf")
        plain, probe = None, None
        budget = self._target_bits(spec)
        if budget is None and self.predictor == "auto":  # the inner codec's own size is the budget
            probe = self._probe()
            plain = probe.encode_with_spec(flat, spec, seed=seed)
            budget = 8 * len(plain)
        plan = self.plan(flat, ref, spec, budget=budget)
        if not plan.predicted:
            if plain is None or probe is None:
                return self.inner.encode_with_spec(flat, spec, seed=seed)
            self.inner.load_state_dict(probe.state_dict())  # as if the inner codec had sent it
            return plain
        return pack_frame(self.codec_id, spec, seed, self._body(flat, ref, spec, plan, seed))

    def _probe(self) -> Codec:
        """A copy of the inner codec with its state (a trial encode must not advance a stateful codec)."""
        probe = self.inner.fresh()
        probe.load_state_dict(self.inner.state_dict())
        return probe

    def encode_flat(
        self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int, reference: Reference | None = None
    ) -> bytes:
        """A predictive body for ``flat`` (always predictive, even when no tensor is predicted).

        ``reference=None`` codes against zero (a body that :meth:`decode_flat` decodes without one).
        """
        ref = torch.zeros(spec.numel) if reference is None else _flat_reference(reference, spec)
        budget = self._target_bits(spec)
        return self._body(flat, ref, spec, self.plan(flat, ref, spec, budget=budget), seed)

    def _body(
        self, flat: torch.Tensor, ref: torch.Tensor, spec: UpdateSpec, plan: PredictorPlan, seed: int
    ) -> bytes:
        side = prefix_bytes(spec, plan.modes)
        inner = self._inner_for(spec, side)
        residual = (flat.to(torch.float64) - plan.prediction).to(torch.float32)
        frame = inner.encode_with_spec(residual, spec, seed=seed)
        self.inner.load_state_dict(inner.state_dict())  # a stateful inner codec keeps what it learned
        target = self._target_bits(spec)
        if target is not None and 8 * (len(frame) + side) > target:
            raise ConfigError(
                f"predictive: the frame needs {8 * (len(frame) + side)} bits, over the budget of {target} "
                f"({8 * side} bits of predictor side information); raise the rate"
            )
        head = bytes([VERSION, inner.codec_id]) + _digest(ref) + _pack_modes(plan.modes)
        coefs = plan.coefs.astype(">f4").tobytes()
        return head + coefs + frame[HEADER_SIZE:]

    # -- decoding ------------------------------------------------------------------------------------------
    @classmethod
    def decode_body(
        cls,
        body: bytes,
        spec: UpdateSpec,
        *,
        seed: int,
        reference: Reference | None = None,
        models: ModelSource = None,
    ) -> torch.Tensor:
        """Decode against ``reference`` (see :meth:`decode_flat`); no trained model."""
        return cls.decode_flat(body, spec, seed=seed, reference=reference)

    @classmethod
    def decode_flat(
        cls, body: bytes, spec: UpdateSpec, *, seed: int, reference: Reference | None = None
    ) -> torch.Tensor:
        """Decode a predictive body against ``reference``.

        ``reference=None`` decodes a body coded against zero (its hash is the zero vector's) and refuses
        any other with :class:`~fedsqueeze.PayloadError`.
        """
        t = len(spec)
        mode_bytes = (2 * t + 7) // 8
        if len(body) < _FIXED + mode_bytes:
            raise PayloadError(f"predictive: body of {len(body)} bytes is shorter than its fixed fields")
        if body[0] != VERSION:
            raise PayloadError(f"predictive: unknown version {body[0]}")
        inner_cls = by_id(body[1])
        if inner_cls is None:
            raise PayloadError(f"predictive: unknown inner codec id {body[1]}")
        why = _allowed_inner(inner_cls)
        if why:
            raise PayloadError(f"predictive: inner codec {inner_cls.name} is not allowed: {why}")
        if reference is None:
            ref = torch.zeros(spec.numel)
            if _digest(ref) != bytes(body[2:10]):
                raise PayloadError(
                    "predictive frame: decoding needs the reference it was predicted from "
                    "(fedsqueeze.decode(blob, spec, reference=...))"
                )
        else:
            try:
                ref = _flat_reference(reference, spec)
            except ConfigError as exc:
                raise PayloadError(str(exc)) from None
        if _digest(ref) != bytes(body[2:10]):
            raise PayloadError(
                f"predictive: the frame was predicted from reference {bytes(body[2:10]).hex()}, the one "
                f"given hashes to {_digest(ref).hex()}"
            )
        modes = _unpack_modes(body[_FIXED : _FIXED + mode_bytes], t)
        counts = np.array([mode_counts(s)[m] for s, m in zip(spec.shapes, modes.tolist(), strict=True)])
        if (counts < 0).any():
            bad = int(np.flatnonzero(counts < 0)[0])
            raise PayloadError(f"predictive: mode {MODES[modes[bad]]} on the 1-D tensor {spec.names[bad]!r}")
        start = _FIXED + mode_bytes
        k = int(counts.sum())
        if len(body) < start + 4 * k:
            raise PayloadError(f"predictive: {k} coefficients need {4 * k} bytes, {len(body) - start} left")
        with np.errstate(invalid="ignore"):  # a signalling NaN pattern is refused below, not warned about
            c = np.frombuffer(body, dtype=">f4", count=k, offset=start).astype(np.float64)
        if k and not (np.isfinite(c).all() and np.abs(c).max() <= MAX_COEF):
            raise PayloadError(f"predictive: coefficient out of range (NaN, Inf or |c| > {MAX_COEF:g})")
        inner_body = bytes(body[start + 4 * k :])
        if len(inner_body) > inner_cls.max_body_bytes(spec):
            raise PayloadError(
                f"predictive: inner {inner_cls.name} body of {len(inner_body)} bytes exceeds its limit"
            )
        res = inner_cls.decode_flat(inner_body, spec, seed=seed)
        if res.dtype != torch.float32 or res.shape != (spec.numel,):
            raise PayloadError(f"predictive: inner {inner_cls.name} decoded to the wrong shape")
        out = res.to(torch.float64)
        r64 = ref.to(torch.float64)
        ct = torch.from_numpy(c)
        pos = 0
        for shape, m, n, a, b in zip(
            spec.shapes, modes.tolist(), counts.tolist(), spec.offsets[:-1], spec.offsets[1:], strict=True
        ):
            if m:
                out[a:b] += _predict(m, r64[a:b], ct[pos : pos + n], shape)
            pos += n
        return out.clamp(-FP32_MAX, FP32_MAX).to(torch.float32)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        """Fixed fields, modes, the most coefficients any mode choice needs and the largest inner body."""
        k = sum(max(mode_counts(s)) for s in spec.shapes)
        inner = max(c.max_body_bytes(spec) for c in _inner_classes())
        return _FIXED + (2 * len(spec) + 7) // 8 + 4 * k + inner


def _inner_classes() -> list[type[Codec]]:
    from .registry import available, codec_class

    return [c for c in (codec_class(n) for n in available()) if _allowed_inner(c) is None]


def _pack_modes(modes: np.ndarray) -> bytes:
    return pack_uints(modes.astype(np.uint64), 2)


def _unpack_modes(data: bytes, t: int) -> np.ndarray:
    r = BitReader(data)
    modes = r.read_uints(t, 2, "modes").astype(np.int64)
    r.expect_end()
    return modes
