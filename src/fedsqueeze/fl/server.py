"""The server side: decode the received bytes, weighted FedAvg, server learning rate, and the downlink.

Engine-agnostic like :mod:`fedsqueeze.fl.client`: a Flower ``ServerApp`` calls the same functions on the
payloads it received.

Downlink protocols (:class:`Downlink`)
---------------------------------------
``identity`` (default)
    Every sampled client downloads the full global LoRA and head as fp32 identity frames; each client's cost
    is the two frames' lengths.
any other codec: the FLASC protocol (sparse download of the global delta)
    The server keeps the *broadcast state* ``θ̃`` that clients hold. Each round it encodes
    ``δ = θ_global − θ̃`` with the downlink codec and advances ``θ̃ ← θ̃ + decode(frame)``; clients train from
    ``θ̃``, and what the frame dropped stays in ``θ_global − θ̃`` for the next round (server-side error
    feedback for free). A client holds the broadcast state of the last round it took part in (every client
    starts from the shared initial model, which costs nothing to obtain), so a client sampled again after
    missing rounds downloads all the delta frames it missed, or the dense fp32 ``θ̃`` when that is smaller:
    both give it exactly ``θ̃``, and it is charged the smaller.

    With ``catch_up="reencode"`` (``fl.downlink_catch_up``) a client that missed rounds gets *one* frame
    instead: the server codes ``θ̃ − (the copy the client holds)`` with the downlink codec, once per stale
    client. The client then holds an approximation of ``θ̃`` of its own, which the server mirrors; its
    coding error is carried into the client's next catch-up frame (error feedback per client), so it never
    accumulates. A client that holds exactly the previous round's ``θ̃`` gets the round's shared frame, as
    with ``"frames"``. With ``rate_by_staleness`` (``fl.downlink_catch_up_rate = "by_staleness"``) such
    a frame is coded at the codec's rate plus ``log2(‖θ̃ − copy‖ / ‖δ‖)`` bits per parameter (quarter
    bits, +0 to +3): the larger the gap, the more bits, so its coding error stays near the shared frame's.

The head (the trainable tensors outside LoRA) is downloaded densely, and only by a client whose copy is
stale: every client holds the seeded initial head, so a fixed head (``model.head = "frozen"``) is never
downloaded and one trained in round 1 only is downloaded once per client.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..aggregation import weighted_mean  # re-exported: FedAvg lives with the other aggregation rules
from ..codecs import Codec, decode_flat, get
from ..config.fl import CATCH_UP  # fl.downlink_catch_up: how a client that missed rounds catches up
from ..errors import ConfigError
from ..seeding import derive_seed
from ..spec import UpdateSpec
from ..wire.frame import HEADER_SIZE
from .client import encode_dense

__all__ = [
    "CATCH_UP",
    "Delivery",
    "Downlink",
    "apply_update",
    "catch_up_mode",
    "check_uplink",
    "downlink_codec",
    "state_sha256",
    "weighted_mean",
]


class _ById(dict[int, int]):
    """Per-client ints for clients known only by id (e.g. Flower node ids): one never seen holds nothing
    (``-1``: its first delivery is dense). Reading a missing id does not add it."""

    def __missing__(self, key: int) -> int:
        return -1


def _table(values: Any) -> list[int] | _ById:
    """A copy of a per-client table: a list (clients ``0..n-1``) or a :class:`_ById` (clients by id)."""
    if isinstance(values, Mapping):
        return _ById({int(k): int(v) for k, v in values.items()})
    return [int(v) for v in values]


def state_sha256(flat: torch.Tensor) -> str:
    """SHA-256 of a flat state as little-endian fp32 (both ends of the downlink compute it)."""
    return hashlib.sha256(flat.to(torch.float32).numpy().astype("<f4").tobytes()).hexdigest()


def apply_update(
    params: Mapping[str, torch.Tensor], mean_update: torch.Tensor, spec: UpdateSpec, server_lr: float
) -> dict[str, torch.Tensor]:
    """``θ ← θ − server_lr · ū`` (computed in float64, stored in float32); returns new tensors."""
    flat = spec.flatten(params, torch.float64) - float(server_lr) * mean_update.to(torch.float64)
    return {k: v.clone() for k, v in spec.unflatten(flat.to(torch.float32)).items()}


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What one sampled client downloads in one round (a driver that sends bytes sends exactly these).

    Attributes
    ----------
    since
        The round whose broadcast state the client must hold for ``frames`` (0: the initial state).
    frames
        The delta frames to add to that state, in round order; ``None`` when the state comes dense.
    dense
        The identity frame of the whole broadcast LoRA state, or ``None`` when ``frames`` are sent.
    head
        The head's identity frame, or ``None`` when the client's head is current.
    sha256
        :func:`state_sha256` of the state the client rebuilds when it is not the broadcast state ``θ̃``
        (a re-encoded catch-up frame), else ``None``.
    """

    since: int
    frames: list[bytes] | None
    dense: bytes | None
    head: bytes | None
    sha256: str | None = None

    @property
    def nbytes(self) -> int:
        if self.frames is not None:
            lora = sum(map(len, self.frames))
        else:
            assert self.dense is not None, "a delivery without frames sends the dense state"
            lora = len(self.dense)
        return lora + (len(self.head) if self.head is not None else 0)


class Downlink:
    """Server-to-client transfer of the global state, with exact byte counts (see the module docstring).

    Parameters
    ----------
    codec
        ``None`` (or the identity codec) for the dense protocol, else the codec of the FLASC delta.
    lora_spec, head_spec
        The specs of the two parts.
    lora
        The initial global LoRA, which every client holds before round 1.
    num_clients
        Clients in the federation (one int of sync state each), numbered ``0..num_clients-1``, which all hold
        the initial state. ``None``: clients are arbitrary ids (e.g. Flower node ids) known as they are
        served, and a client never served holds nothing, so its first delivery is dense.
    head
        The initial head (``None``: zeros), which every client holds before round 1.
    window
        Rounds of delta frames kept for catch-up; a client whose copy is older is resynced densely.
    catch_up
        ``"frames"``: a client that missed rounds downloads every frame it missed. ``"reencode"``: one frame
        coding the difference between ``θ̃`` and its copy (see the module docstring).
    rate_by_staleness
        With ``catch_up="reencode"``: code a re-encoded frame at the codec's ``rate`` plus the ``log2`` of
        its gap's norm over the round's ``‖δ‖`` (see the module docstring). Needs a codec with a ``rate``.

    Memory: the broadcast state ``θ̃`` (``d`` floats), the last ``window`` frames, the head and two ints
    per client (per client served, with ``num_clients=None``). With ``catch_up="reencode"`` also the copy
    of each client whose copy is not a broadcast state (after a re-encoded frame): up to ``d`` floats per
    client, while the clients whose copy is ``θ̃`` of some round share that round's tensor.
    """

    def __init__(
        self,
        codec: Codec | None,
        lora_spec: UpdateSpec,
        head_spec: UpdateSpec,
        lora: Mapping[str, torch.Tensor],
        num_clients: int | None,
        head: Mapping[str, torch.Tensor] | None = None,
        *,
        window: int = 32,
        catch_up: str = "frames",
        rate_by_staleness: bool = False,
    ) -> None:
        if window < 1:
            raise ConfigError(f"the downlink window must be >= 1 round, got {window}")
        if catch_up not in CATCH_UP:
            raise ConfigError(f"the downlink catch-up is one of {', '.join(CATCH_UP)}, got {catch_up!r}")
        head = head if head is not None else {n: torch.zeros(s) for n, s in head_spec.entries}
        self.codec = None if codec is None or codec.name == "identity" else codec
        self.lora_spec, self.head_spec, self.window = lora_spec, head_spec, int(window)
        self.held = lora_spec.flatten(lora).clone()  # θ̃ (FLASC only)
        # round whose θ̃ the client holds; -1: lost (or, by id, never served): resync densely
        self.last_sync: list[int] | _ById = _ById() if num_clients is None else [0] * num_clients
        self.frames: dict[int, bytes] = {}  # round -> its delta frame, the last `window` rounds only
        self.frame_bytes: list[int] = []  # length of round r's delta frame at index r - 1
        self.dense_lora_bytes = 0 if lora_spec.numel == 0 else HEADER_SIZE + 4 * lora_spec.numel
        # Head versions: 0 is the initial head every client holds; a new version when the head changes.
        self.head_version, self.head_last = 0, head_spec.flatten(head).clone()
        self.head_held: list[int] | _ById = _ById() if num_clients is None else [0] * num_clients
        # What the last broadcast sends each sampled client: (synced round, frames or None for dense, head?)
        self.deliveries: dict[int, Delivery] = {}
        self.last_step: torch.Tensor | None = None  # the last broadcast delta frame, decoded
        # ‖δ‖ and ‖δ − decode(frame)‖ of the last broadcast: how far the clients' θ̃ is from θ_global
        self.last_norms: tuple[float, float] | None = None
        # catch_up="reencode": the copy each client holds (None: none, resync densely). A client whose copy
        # is θ̃ of some round refers to that round's tensor (θ̃ is replaced, never changed in place).
        self.reencode = catch_up == "reencode"
        self.copies: list[torch.Tensor | None] | dict[int, torch.Tensor | None] = (
            {} if num_clients is None else [self.held] * num_clients
        )
        self.starts: dict[int, torch.Tensor] = {}  # last broadcast: a client's own start (not θ̃)
        self.steps: dict[int, torch.Tensor] = {}  # last broadcast: its re-encoded frame, decoded
        self.rates: dict[int, float] = {}  # last broadcast: a re-encoded frame's rate, by staleness
        self.base_rate = _base_rate(self.codec) if rate_by_staleness and self.reencode else None

    @property
    def protocol(self) -> str:
        if self.codec is None:
            return "dense"
        stale = "+by_staleness" if self.base_rate is not None else ""
        return f"flasc:{self.codec.name}" + ("+reencode" if self.reencode else "") + stale

    def state_sha256(self) -> str:
        """:func:`state_sha256` of the broadcast LoRA state ``θ̃``: what a client checks after applying
        its frames (the server sends it beside them)."""
        return state_sha256(self.held)

    def lost(self, client: int) -> None:
        """``client`` no longer holds a usable copy (restart, new machine, a bad frame): resync it densely."""
        self.last_sync[client] = -1
        self.head_held[client] = -1
        self.copies[client] = None

    def catch_up(self, client: int, server_round: int) -> list[bytes] | None:
        """The frames that bring ``client``'s copy to round ``server_round``'s ``θ̃`` (after
        :meth:`broadcast` of that round), or ``None`` when it needs the dense state instead (lost, older
        than the window, or the frames would cost more than the dense state)."""
        since = self.last_sync[client]
        rounds = range(since + 1, server_round + 1)
        if self.codec is None or since < 0 or any(r not in self.frames for r in rounds):
            return None  # dense protocol, a lost copy, or older than the window (or than a checkpoint)
        frames = [self.frames[r] for r in rounds if self.frames[r]]
        return frames if sum(map(len, frames)) <= self.dense_lora_bytes else None

    def broadcast(
        self,
        server_round: int,
        lora: Mapping[str, torch.Tensor],
        head: Mapping[str, torch.Tensor],
        clients: Sequence[int],
        *,
        seed: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[int, int]]:
        """The ``(lora, head)`` the sampled clients start from, and each client's downlink bytes.

        Every tensor returned was decoded from bytes that were counted.
        """
        head_flat = self.head_spec.flatten(head)
        head_frame = encode_dense(head_flat, self.head_spec, seed=seed)
        head_out = self._decode(head_frame, self.head_spec)
        if not torch.equal(head_flat, self.head_last):
            self.head_version, self.head_last = self.head_version + 1, head_flat.clone()
        head_cost, head_sent = {}, {}
        for c in clients:  # only a stale copy is downloaded
            head_sent[c] = self.head_held[c] != self.head_version
            head_cost[c] = len(head_frame) if head_sent[c] else 0
            self.head_held[c] = self.head_version
        self.deliveries = {}
        if self.codec is None:
            frame = encode_dense(self.lora_spec.flatten(lora), self.lora_spec, seed=seed)
            lora_out = self._decode(frame, self.lora_spec)
            for c in clients:
                self.deliveries[c] = Delivery(-1, None, frame, head_frame if head_sent[c] else None)
            return lora_out, head_out, {c: len(frame) + head_cost[c] for c in clients}

        delta = self.lora_spec.flatten(lora) - self.held
        frame = b""
        self.last_step = None
        previous = self.held
        self.starts, self.steps, self.rates = {}, {}, {}
        if self.lora_spec.numel:
            frame = self.codec.encode_with_spec(delta, self.lora_spec, seed=seed)
            self.last_step = decode_flat(frame, self.lora_spec)
            self.held = self.held + self.last_step
            lag = (delta.to(torch.float64) - self.last_step.to(torch.float64)).norm()
            self.last_norms = (float(delta.to(torch.float64).norm()), float(lag))
        self.frame_bytes.append(len(frame))
        self.frames[server_round] = frame
        self.frames.pop(server_round - self.window, None)  # bounded: the last `window` rounds only
        cost, dense = {}, None
        for c in clients:
            own: torch.Tensor | None = None  # the client's own start (a re-encoded catch-up), else θ̃
            if self.reencode:
                frames, own = self._reencoded(c, server_round, previous, seed)
            else:
                frames = self.catch_up(c, server_round)
            if frames is not None:
                lora_cost = sum(map(len, frames))
            else:
                if dense is None:
                    dense = encode_dense(self.held, self.lora_spec, seed=seed)
                lora_cost = len(dense)
            cost[c] = lora_cost + head_cost[c]
            head_part, dense_part = head_frame if head_sent[c] else None, dense if frames is None else None
            sha = None if own is None else state_sha256(own)
            self.deliveries[c] = Delivery(self.last_sync[c], frames, dense_part, head_part, sha)
            self.last_sync[c] = server_round
            if self.reencode:
                self.copies[c] = self.held if own is None else own
        lora_out = {k: v.clone() for k, v in self.lora_spec.unflatten(self.held.clone()).items()}
        return lora_out, head_out, cost

    def _copy(self, client: int) -> torch.Tensor | None:
        copies = self.copies
        if isinstance(copies, dict):
            return copies.get(client)
        return copies[client]

    def _reencoded(
        self, client: int, server_round: int, previous: torch.Tensor, seed: int
    ) -> tuple[list[bytes] | None, torch.Tensor | None]:
        """``catch_up="reencode"``: the frames for ``client`` and the start it rebuilds (``None``: ``θ̃``).

        A client holding the previous round's ``θ̃`` gets the round's shared frame; any other copy gets one
        frame coding ``θ̃ − copy`` (seeded per client); a lost copy, or a frame larger than the dense state,
        gets ``(None, None)``: the dense ``θ̃``."""
        base = self._copy(client)
        if base is None:
            return None, None
        if base is previous:  # exactly last round's θ̃: the round's frame (shared by all such clients)
            frame = self.frames[server_round]
            return ([frame] if frame else []), None
        assert self.codec is not None, "re-encoded catch-up needs the downlink codec"
        own_seed = derive_seed(seed, server_round, client, "catch-up")
        gap = self.held - base
        codec = self.codec
        if self.base_rate is not None:
            rate = self._stale_rate(gap)
            self.rates[client] = rate
            codec = get(self.codec.name, **{**self.codec.options(), "rate": rate})
        frame = codec.encode_with_spec(gap, self.lora_spec, seed=own_seed)
        if len(frame) > self.dense_lora_bytes:
            return None, None
        step = decode_flat(frame, self.lora_spec)
        own = base + step
        self.starts[client], self.steps[client] = own, step
        return [frame], own

    def _stale_rate(self, gap: torch.Tensor) -> float:
        """The rate of a re-encoded frame coding ``gap``: the codec's, plus ``log2(‖gap‖ / ‖δ‖)`` in quarter
        bits within ``[0, MAX_STALE_BITS]`` (``δ``: the round's broadcast step, which the shared frame codes
        at the codec's rate)."""
        assert self.base_rate is not None
        step = self.last_norms[0] if self.last_norms else 0.0
        size = float(gap.to(torch.float64).norm())
        if step <= 0 or size <= step:
            return self.base_rate
        return self.base_rate + min(MAX_STALE_BITS, round(4 * math.log2(size / step)) / 4)

    def start(self, client: int) -> dict[str, torch.Tensor] | None:
        """The LoRA ``client`` starts from after the last :meth:`broadcast` when it is not ``θ̃`` (a
        re-encoded catch-up frame), else ``None``."""
        own = self.starts.get(client)
        return None if own is None else {k: v.clone() for k, v in self.lora_spec.unflatten(own).items()}

    def row_columns(self) -> dict[str, Any]:
        """The last broadcast's diagnostics for the metrics row (``None`` with the dense protocol).

        ``downlink_delta_norm`` is ``‖δ‖ = ‖θ_global − θ̃‖`` before the frame (this round's step plus what
        earlier frames left out), ``downlink_lag_norm`` the distance ``‖θ_global − θ̃‖`` the sampled clients
        start from after it, ``downlink_rel_error`` their ratio squared, and ``downlink_frames`` the
        number of delta frames in each sampled client's delivery (``-1``: the dense state). With
        ``catch_up="reencode"``, ``downlink_reencoded`` counts the sampled clients that got a re-encoded
        catch-up frame (``None`` in the other modes) and ``downlink_start_lag`` is their mean
        ``‖θ̃ − start‖`` (``None`` when there were none). With ``rate_by_staleness`` the row also has
        ``downlink_catch_up_rate``, the mean rate of those frames in bits per parameter.
        """
        delta, lag = self.last_norms if self.codec is not None and self.last_norms else (None, None)
        held = self.held.to(torch.float64)
        lags = [float((held - own.to(torch.float64)).norm()) for own in self.starts.values()]
        reencoding = self.reencode and self.codec is not None
        rates = list(self.rates.values())
        by_staleness = {"downlink_catch_up_rate": sum(rates) / len(rates) if rates else None}
        return {
            "downlink_reencoded": len(lags) if reencoding else None,
            "downlink_start_lag": sum(lags) / len(lags) if lags else None,
            **(by_staleness if self.base_rate is not None else {}),
            "downlink_delta_norm": delta,
            "downlink_lag_norm": lag,
            "downlink_rel_error": None if delta is None or lag is None or delta == 0 else (lag / delta) ** 2,
            "downlink_frames": {
                str(c): -1 if d.frames is None else len(d.frames) for c, d in self.deliveries.items()
            },
        }

    def reference(self, client: int) -> torch.Tensor | None:
        """The reference a predictive uplink codes ``client``'s update against this round: the last
        broadcast delta frame, decoded, which the client received (it is the last of its catch-up frames);
        ``None`` when its delivery is dense (then it codes without prediction)."""
        d = self.deliveries.get(client)
        if d is None or not d.frames or self.last_step is None:
            return None
        return self.steps.get(client, self.last_step)

    @staticmethod
    def _decode(frame: bytes, spec: UpdateSpec) -> dict[str, torch.Tensor]:
        flat = torch.zeros(0) if spec.numel == 0 else decode_flat(frame, spec)
        return {k: v.clone() for k, v in spec.unflatten(flat).items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "held": self.held.clone(),
            "last_sync": _table(self.last_sync),
            "frame_bytes": list(self.frame_bytes),
            "frames": {str(r): f for r, f in self.frames.items()},
            "codec_state": None if self.codec is None else self.codec.state_dict(),
            "head_version": self.head_version,
            "head_last": self.head_last.clone(),
            "head_held": _table(self.head_held),
            **({"copies": self._copies_state()} if self.reencode else {}),
        }

    def _copies_state(self) -> dict[str, Any]:
        """The clients' copies, each distinct tensor once (``index``: per client, ``-1`` for none)."""
        tensors: list[torch.Tensor] = []
        seen: dict[int, int] = {}
        items = self.copies.items() if isinstance(self.copies, dict) else enumerate(self.copies)
        index: dict[int, int] = {}
        for c, t in items:
            if t is None:
                index[c] = -1
                continue
            if id(t) not in seen:
                seen[id(t)] = len(tensors)
                tensors.append(t.clone())
            index[c] = seen[id(t)]
        table = index if isinstance(self.copies, dict) else [index[c] for c in range(len(self.copies))]
        return {"tensors": tensors, "index": table, "held": seen.get(id(self.held), -1)}

    def _load_copies(self, state: Mapping[str, Any]) -> None:
        tensors = [t.clone() for t in state["tensors"]]
        if 0 <= int(state["held"]) < len(tensors):
            tensors[int(state["held"])] = self.held  # the clients holding θ̃ refer to θ̃ itself again
        index = state["index"]
        if isinstance(index, Mapping):
            self.copies = {int(c): (None if int(k) < 0 else tensors[int(k)]) for c, k in index.items()}
        else:
            self.copies = [None if int(k) < 0 else tensors[int(k)] for k in index]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.held = state["held"].clone()
        self.last_sync = _table(state["last_sync"])
        self.frame_bytes = list(state["frame_bytes"])
        self.frames = {int(r): bytes(f) for r, f in state.get("frames", {}).items()}
        if "head_version" in state:  # older checkpoints charged the head every round
            self.head_version, self.head_held = int(state["head_version"]), _table(state["head_held"])
            self.head_last = state["head_last"].clone()
        if self.codec is not None and state.get("codec_state") is not None:
            self.codec.load_state_dict(state["codec_state"])
        if self.reencode:
            if "copies" not in state:
                raise ConfigError(
                    "the checkpoint was written with fl.downlink_catch_up = 'frames'; resume it with that "
                    "setting"
                )
            self._load_copies(state["copies"])


def check_uplink(codec: Codec, spec: UpdateSpec) -> None:
    """Refuse, before any training, an uplink codec that cannot code a LoRA of ``spec`` (a budget codec whose
    frame cannot hold its own header at this ``d``), with a message that names the uplink.

    Codecs with a trained model (CG-FedLLM) are not probed: they check their model when they first encode.
    """
    if spec.numel == 0 or type(codec).uses_trained_model:
        return
    # A nonzero probe: a codec may code an all-zero update without reaching the checks on its budget.
    probe = torch.linspace(-1.0, 1.0, spec.numel)
    try:  # a fresh instance: the probe must not touch the state of the codec the run uses
        type(codec)(**codec.options()).encode_with_spec(probe, spec, seed=0)
    except ConfigError as exc:
        raise ConfigError(f"codec (the uplink): {exc}") from None


def downlink_codec(config: Any, spec: UpdateSpec, logger: Any) -> Codec | None:
    """The codec of ``config.downlink`` for a LoRA of ``spec``; ``None`` for the dense protocol.

    A budget codec whose frame cannot hold its own header at this ``d`` (a miniature model at a low rate)
    cannot carry the broadcast. The default downlink then falls back to the dense fp32 broadcast, and says
    so in the log (the summary's ``downlink_protocol`` records it); a downlink the config names explicitly
    is a :class:`~fedsqueeze.ConfigError` instead.
    """
    from ..config import default_codec

    codec = config.downlink.build()
    if codec.name == "identity" or spec.numel == 0:
        return codec
    try:  # a fresh instance: encoding must not touch the state of the codec the run uses
        config.downlink.build().encode_with_spec(torch.zeros(spec.numel), spec, seed=0)
    except ConfigError as exc:
        if config.downlink != default_codec("downlink"):
            raise ConfigError(f"downlink (the broadcast): {exc}") from None
        logger.warning(
            "the default downlink (%s, %s) cannot code this LoRA (d = %d): the broadcast is dense fp32",
            codec.name, config.downlink.options, spec.numel,
        )  # fmt: skip
        return None
    return codec


#: Most bits per parameter that rate by staleness adds to the downlink codec's rate (a gap 8x the step).
MAX_STALE_BITS = 3.0


def _base_rate(codec: Codec | None) -> float:
    """The ``rate`` option of the downlink ``codec`` that rate by staleness raises."""
    rate = None if codec is None else codec.options().get("rate")
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        name = "the dense broadcast" if codec is None else f"downlink codec {codec.name!r}"
        raise ConfigError(
            f"fl.downlink_catch_up_rate = 'by_staleness' needs a downlink codec with a rate in bits/param "
            f"(wf_ecq, topk, ...); {name} has none: set downlink.options.rate, or use 'fixed'"
        )
    return float(rate)


#: Most memory (bytes) the server may spend on the clients' copies under re-encoded catch-up.
REENCODE_MEMORY_BYTES = 2 * 2**30


def catch_up_mode(config: Any, spec: UpdateSpec, num_clients: int, logger: Any, *, compressed: bool) -> str:
    """``config.fl.downlink_catch_up`` for a ``compressed`` downlink (a dense one has no catch-up:
    ``"frames"``), unless re-encoding could hold more than :data:`REENCODE_MEMORY_BYTES` of client copies
    (``num_clients · d`` floats): then ``"frames"``, with a warning (the summary's ``downlink_protocol``
    records which ran)."""
    mode = str(config.fl.downlink_catch_up) if compressed else "frames"
    need = 4 * num_clients * spec.numel
    if mode == "reencode" and need > REENCODE_MEMORY_BYTES:
        logger.warning(
            "re-encoded catch-up could keep %.1f GiB of client copies (%d clients × d = %d), over %.0f GiB: "
            "clients catch up frame by frame instead (fl.downlink_catch_up = 'frames')",
            need / 2**30, num_clients, spec.numel, REENCODE_MEMORY_BYTES / 2**30,
        )  # fmt: skip
        return "frames"
    return mode


class ServerMomentum:
    """FedAvgM server momentum: ``m ← β·m + ū`` per part (LoRA, head); the server applies ``m``.

    With ``β = 0`` it returns ``ū`` unchanged, so plain FedAvg stays bit-identical.
    """

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)
        self.buffers: dict[str, torch.Tensor] = {}

    def step(self, part: str, mean_update: torch.Tensor) -> torch.Tensor:
        if self.beta == 0.0:
            return mean_update
        m = mean_update.to(torch.float64)
        if part in self.buffers:
            m = self.beta * self.buffers[part] + m
        self.buffers[part] = m.clone()
        return m

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "buffers": {k: v.clone() for k, v in self.buffers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffers = {
            k: torch.as_tensor(v, dtype=torch.float64).clone() for k, v in state["buffers"].items()
        }
