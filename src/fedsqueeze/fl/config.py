"""``RunConfig``: one federated run, read from TOML presets with ``key=value`` overrides.

A config file has the sections ``[model]`` (:class:`ModelConfig`), ``[data]`` (:class:`DataConfig`),
``[train]`` (:class:`LocalTrainConfig`), ``[fl]`` (:class:`FLConfig`), ``[codec]`` and ``[downlink]``
(:class:`CodecConfig`: ``name`` plus an ``options`` table checked by :func:`fedsqueeze.codecs.get`) and
``[tgap]`` (:class:`TGAPConfig`: CG-FedLLM pre-training before the main rounds, off by default) and
``[network]`` (:class:`NetworkConfig`: the simulated client links, for the simulated round time). A file
is applied on top of the ``default`` preset unless its top-level ``base`` names another preset, another file
or ``"none"`` (:func:`load_config_data`); keys missing from the whole chain take the dataclass defaults.
Unknown keys and bad values raise :class:`~fedsqueeze.ConfigError` naming the key and what is allowed.
Presets ship inside the package (``fedsqueeze/configs/*.toml``); ``docs/config.md`` lists every key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..keyvalue import NULL, parse_assignment
from .aggregation import AGGREGATIONS  # the names of the one registry of aggregation rules
from .fields import Range, setting, validate
from .workload import POSITIVE, DataConfig, LocalTrainConfig, ModelConfig, check_classifier

__all__ = [
    "CodecConfig",
    "FLConfig",
    "NetworkConfig",
    "RunConfig",
    "TGAPConfig",
    "apply_overrides",
    "load_config",
    "load_config_data",
    "merge_config",
    "preset_names",
    "preset_text",
]

SECTIONS = ("model", "data", "train", "fl", "codec", "downlink", "tgap", "network")
BASE_KEY = "base"  # a config file's top-level key naming what it is applied on top of
NO_BASE = "none"  # ``base = "none"``: on top of the code defaults (the packaged presets)


@dataclasses.dataclass(frozen=True)
class FLConfig:
    """The federated schedule.

    Parameters
    ----------
    rounds
        Number of server rounds.
    clients_per_round
        ``K`` clients sampled uniformly without replacement each round (seeded).
    server_lr
        Server learning rate: ``θ ← θ − server_lr · ū`` with ``ū`` the weighted mean update.
    server_momentum
        FedAvgM (Hsu et al. 2019): ``m ← β m + ū``, ``θ ← θ − server_lr · m``; 0 is plain FedAvg. Damps the
        client drift of label-skewed (Dirichlet) partitions.
    seed
        Run seed: sampling, local training and encoding seeds derive from it.
    error_feedback
        Keep a per-client residual of what the codec dropped and add it next time.
    eval_every
        Evaluate every this many rounds (and always after the last one).
    target_metric
        Optional target of the evaluation metric: a fraction in ``[0, 1]`` for accuracy or exact match
        (reached at or above it), or a held-out loss for a lower-is-better task (reached at or below it);
        the summary reports rounds and bytes to reach it. A number ``>= 0``.
    min_replies
        Minimum valid replies (after screening, see :mod:`fedsqueeze.fl.robust`) for a round to change the
        model; with fewer the round leaves the model unchanged. ``None``: at least one.
    norm_bound_factor
        Drop a reply whose update norm exceeds this many times the round's median norm (``0``/``None``:
        no bound). Undecodable and non-finite replies are always dropped.
    aggregation
        ``"mean"`` (sample-weighted FedAvg), ``"median"`` or ``"trimmed_mean"`` (coordinate-wise, robust).
    trim_fraction
        Fraction of clients trimmed at each end of every coordinate by ``"trimmed_mean"``, in ``[0, 0.5)``.
    aggregation_memory_mb
        Memory budget (MiB) of the robust rules: ``"median"`` and ``"trimmed_mean"`` hold every decoded
        update of the round at once, about 28 bytes per value (``O(K·d)``), and a run whose
        ``clients_per_round × d`` would need more stops with a one-line error instead of swapping.
        ``"mean"`` streams each reply into an ``O(d)`` sum and ignores it.
    decode_workers
        Threads that decode the round's replies in parallel (the result is the same for any count: the
        replies are summed in client order). Each thread holds one decoded reply.
    downlink_window
        With a compressed downlink: how many rounds of broadcast frames the server keeps so that a client
        that missed rounds can catch up frame by frame. A client whose copy is older (or lost) gets one
        dense resync instead. Server memory grows with this window, not with the number of clients.
    """

    rounds: int = setting(11, range=Range(1))
    clients_per_round: int = setting(5, range=Range(1), allowed="1..data.num_clients")
    server_lr: float = setting(0.3, range=POSITIVE)
    server_momentum: float = setting(0.7, range=Range(0, 1))
    seed: int = setting(0, range=Range(0, 2**63, text="[0, 2**63)"))
    error_feedback: bool = True
    eval_every: int = setting(1, range=Range(1))
    target_metric: float | None = 0.72
    min_replies: int | None = setting(None, allowed="1..fl.clients_per_round")
    norm_bound_factor: float | None = setting(10.0, allowed="0 (off) or >= 1")
    aggregation: str = setting("mean", choices=AGGREGATIONS)
    trim_fraction: float = setting(0.1, range=Range(0, 0.5))
    aggregation_memory_mb: float = setting(8192.0, range=POSITIVE)
    decode_workers: int = setting(1, range=Range(1))
    downlink_window: int = setting(32, range=Range(1))

    def __post_init__(self) -> None:
        validate(self, "fl")
        if self.target_metric is not None and not (
            isinstance(self.target_metric, int | float)
            and not isinstance(self.target_metric, bool)
            and 0 <= self.target_metric < float("inf")
        ):
            got = (
                f"{self.target_metric:g}"
                if isinstance(self.target_metric, float)
                else repr(self.target_metric)
            )
            raise ConfigError(
                f"fl.target_metric is a number >= 0 like the metric (e.g. 0.72 for 72% accuracy, or a "
                f"held-out loss), got {got}"
            )
        if self.min_replies is not None and not 1 <= self.min_replies <= self.clients_per_round:
            raise ConfigError(
                f"fl.min_replies must be in 1..fl.clients_per_round ({self.clients_per_round}), "
                f"got {self.min_replies}"
            )
        if self.norm_bound_factor is not None and not (
            self.norm_bound_factor == 0 or self.norm_bound_factor >= 1
        ):
            raise ConfigError(f"fl.norm_bound_factor must be 0 (off) or >= 1, got {self.norm_bound_factor}")


@dataclasses.dataclass(frozen=True)
class TGAPConfig:
    """CG-FedLLM's TGAP phase, run by ``fedsqueeze run`` before the main (FAF) rounds when ``enabled``.

    Each client's data is split once (seeded) into a pre-training share ``fraction`` and the rest. TGAP
    collects update snapshots on the pre-training share, trains the autoencoder
    (:func:`fedsqueeze.learned.tgap.tgap_pretrain`), saves it in ``OUT/tgap/`` and the main rounds run on the
    rest with ``codec.name`` (``cg_fedllm`` or ``cg_fedllm_q``) using that model, frozen. All TGAP traffic
    is counted (``summary.json`` → ``tgap_traffic``).

    Parameters
    ----------
    enabled
        Run the TGAP phase first (needs ``codec.name`` in ``cg_fedllm``, ``cg_fedllm_q`` and no
        ``codec.options.model_path``).
    fraction
        Share of each client's examples used for pre-training (paper: 0.3); FAF uses the rest.
    collection
        ``"federated"``: ``rounds`` FedAvg rounds with the identity uplink and no error feedback on the
        pre-training share, every client update is a snapshot (uplink and model downloads counted).
        ``"local"``: every client trains alone from the initial model for ``rounds`` local rounds and uploads
        each round's update once (counted).
    rounds
        Snapshot-collection rounds (time steps of the temporal ensemble).
    steps, batch_size, lr
        Adam steps, snapshots per mini-batch and learning rate of the pre-training (paper: lr 2e-4).
    variant
        ``"paper"`` (the paper's autoencoder: no normalisation, ReLU ends, Tanh), ``"sound"`` (per-tensor RMS
        normalisation, linear head) or ``"auto"``: paper for ``cg_fedllm``, sound for ``cg_fedllm_q``.
    depth
        Stride-2 stages of the autoencoder (latent = 1/2**depth of the padded factor stack; paper 6).
    device
        Where the pre-training runs: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``. The codecs run on the CPU.
    seed
        Seed of the pre-training (initialisation and mini-batches). A run mixes it with ``fl.seed``;
        :func:`fedsqueeze.learned.tgap.tgap_pretrain` uses it as it is.

    This one class serves both the run's ``[tgap]`` section and :func:`~fedsqueeze.learned.tgap.tgap_pretrain`
    (which reads ``steps``, ``batch_size``, ``lr`` and ``seed``).
    """

    enabled: bool = False
    fraction: float = setting(0.3, range=Range(0, 1, low_closed=False))
    collection: str = setting("federated", choices=("federated", "local"))
    rounds: int = setting(5, range=Range(1))
    steps: int = setting(400, range=Range(1))
    batch_size: int = setting(8, range=Range(1))
    lr: float = setting(2e-4, range=POSITIVE)
    variant: str = setting("auto", choices=("auto", "paper", "sound"))
    depth: int = setting(6, range=Range(1, 8, high_closed=True, text="1..8"))
    device: str = setting("cpu", allowed="cpu, cuda, cuda:N")
    seed: int = setting(0, range=Range(0, 2**63, text="[0, 2**63)"))

    def __post_init__(self) -> None:
        validate(self, "tgap")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"tgap.device must be cpu, cuda or cuda:N, got {self.device!r}")


NETWORK_KEYS = ("uplink_mbps", "downlink_mbps", "latency_ms")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The clients' simulated links, from which :mod:`fedsqueeze.fl.network` makes each round's wall time.

    Nothing of the training depends on it: it only turns a round's measured compute seconds and counted
    bytes into the ``sim_round_s`` / ``sim_time_s`` columns of ``metrics.jsonl`` (and
    ``sim_time_to_target_s`` of ``summary.json``).

    Parameters
    ----------
    uplink_mbps
        Every client's upload bandwidth, in Mbit/s (10**6 bits per second).
    downlink_mbps
        Every client's download bandwidth, in Mbit/s.
    latency_ms
        Every client's round-trip time, in milliseconds; each transfer (the client's download of the round's
        model and its upload of the update) costs one.
    overrides
        Per-client links: a table of client id (an integer >= 0, written as a TOML key) to a table of any of
        ``uplink_mbps``, ``downlink_mbps`` and ``latency_ms``, which replace the defaults above for that
        client, e.g. ``overrides = { "3" = { uplink_mbps = 1 } }``
        (``--set network.overrides.3.uplink_mbps=1``).
    """

    uplink_mbps: float = setting(20.0, range=POSITIVE)
    downlink_mbps: float = setting(100.0, range=POSITIVE)
    latency_ms: float = setting(30.0, range=Range(0))
    overrides: Mapping[str, Mapping[str, float]] = setting(
        default_factory=dict, allowed='{ "ID" = { KEY = number } }, ID >= 0, KEY: ' + ", ".join(NETWORK_KEYS)
    )

    def __post_init__(self) -> None:
        validate(self, "network")
        object.__setattr__(self, "overrides", _network_overrides(self.overrides))

    def link(self, client: int) -> tuple[float, float, float]:
        """``(uplink_mbps, downlink_mbps, latency_ms)`` of ``client``: its overrides, else the defaults."""
        mine = self.overrides.get(str(client), {})
        up, down, latency = (mine.get(k, getattr(self, k)) for k in NETWORK_KEYS)
        return up, down, latency


def _network_overrides(raw: Any) -> dict[str, dict[str, float]]:
    """``network.overrides`` checked and normalised: ``{"ID": {key: float}}`` in ascending client order."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"network.overrides must be a table of client id = {{ {', '.join(NETWORK_KEYS)} }}, got {raw!r}"
        )
    out: dict[int, dict[str, float]] = {}
    for key, table in raw.items():
        text = str(key).strip()
        if isinstance(key, bool) or not (isinstance(key, int) or text.isdigit()):
            raise ConfigError(f"network.overrides: client id {key!r} must be an integer >= 0")
        client = int(text)
        if client in out:
            raise ConfigError(f"network.overrides: client {client} is given twice")
        where = f"network.overrides.{client}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table of {', '.join(NETWORK_KEYS)}, got {table!r}")
        values: dict[str, float] = {}
        for name, value in table.items():
            if name not in NETWORK_KEYS:
                raise ConfigError(f"unknown key {where}.{name}; allowed: {', '.join(NETWORK_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
            rule = Range(0) if name == "latency_ms" else POSITIVE
            if not rule.ok(value):
                raise ConfigError(rule.message(f"{where}.{name}", value))
            values[name] = float(value)
        out[client] = values
    return {str(c): out[c] for c in sorted(out)}


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """A codec by registry name and its options (validated by :func:`fedsqueeze.codecs.get`).

    Parameters
    ----------
    name
        A registered codec (``fedsqueeze codecs`` lists them). Changing it (in a file on a base, or with
        ``--set``) without giving ``options`` starts from the new codec's defaults.
    options
        The codec's options (``fedsqueeze codecs NAME`` lists them with their defaults); the codec's own
        defaults fill in the rest.
    """

    name: str = "flm_topk"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))
        self.build()  # raises ConfigError for an unknown codec, option or value

    def build(self) -> Any:
        """A fresh codec instance."""
        from ..codecs import get

        return get(self.name, **self.options)


# The default broadcast: wf_ecq delta frames at 0.25 bits per parameter, with clients catching up frame by
# frame (docs/downlink.md; docs/default-run.md has the 3-seed comparison with the dense fp32 broadcast).
DOWNLINK_DEFAULT: tuple[str, Mapping[str, Any]] = ("wf_ecq", {"rate": 0.25})


def default_codec(section: str) -> CodecConfig:
    """The codec a config without a ``[codec]`` / ``[downlink]`` section gets."""
    if section == "downlink":
        name, options = DOWNLINK_DEFAULT
        return CodecConfig(name, dict(options))
    return CodecConfig()


def tgap_codecs() -> tuple[str, ...]:
    """The registered codecs whose model the TGAP phase trains (they declare it: ``trained_by``)."""
    from ..codecs import available, codec_class

    return tuple(n for n in available() if codec_class(n).trained_by == "tgap")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; ``to_dict()`` is what ``summary.json`` stores."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: LocalTrainConfig = dataclasses.field(default_factory=LocalTrainConfig)
    fl: FLConfig = dataclasses.field(default_factory=FLConfig)
    codec: CodecConfig = dataclasses.field(default_factory=CodecConfig)
    downlink: CodecConfig = dataclasses.field(default_factory=lambda: default_codec("downlink"))
    tgap: TGAPConfig = dataclasses.field(default_factory=TGAPConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        check_classifier(self.model, self.data)
        if self.fl.clients_per_round > self.data.num_clients:
            raise ConfigError(
                f"fl.clients_per_round ({self.fl.clients_per_round}) exceeds data.num_clients "
                f"({self.data.num_clients})"
            )
        from ..codecs import codec_class

        if codec_class(self.downlink.name).uses_reference:
            raise ConfigError(f"downlink.name = {self.downlink.name!r} needs a reference; use a plain codec")
        if codec_class(self.codec.name).uses_reference and self.downlink.name == "identity":
            raise ConfigError(
                f"codec {self.codec.name!r} predicts each update from the last broadcast delta frame, which "
                "a dense downlink has none of: set downlink.name to a codec (see docs/downlink.md)"
            )
        if self.tgap.enabled:
            if self.codec.name not in tgap_codecs():
                raise ConfigError(
                    f"tgap.enabled trains an autoencoder for {' or '.join(tgap_codecs())}; set codec.name to "
                    f"one of them (got {self.codec.name!r}) or tgap.enabled = false"
                )
            given = [k for k in ("model_path", "model_fingerprint") if self.codec.options.get(k) is not None]
            if given:
                raise ConfigError(
                    f"tgap.enabled trains the model itself; remove codec.options.{given[0]} (or set "
                    "tgap.enabled = false to use that model)"
                )

    @property
    def tgap_variant(self) -> str:
        """``tgap.variant`` with ``auto`` resolved by the codec's ``training_variant`` declaration."""
        if self.tgap.variant != "auto":
            return self.tgap.variant
        from ..codecs import codec_class

        return codec_class(self.codec.name).training_variant

    def differences(self, saved: Mapping[str, Any], *, except_rounds: bool = True) -> list[str]:
        """The ``section.key`` names where ``saved`` (a stored :meth:`to_dict`) differs from this config.

        The one "same config" test of resuming a run, reusing a TGAP model and skipping a finished study
        cell. Keys ``saved`` lacks (files from before a key existed) count as their code default, and the
        comparison is of JSON values (tuples and lists are equal). ``except_rounds``: ``fl.rounds`` may
        differ (it only lengthens the run).
        """
        old = _as_json(_filled(saved))
        now = _as_json(self.to_dict())
        return [
            f"{sec}.{key}"
            for sec in sorted(set(old) | set(now))
            for key in sorted(set(old.get(sec, {})) | set(now.get(sec, {})))
            if not (except_rounds and (sec, key) == ("fl", "rounds"))
            and old.get(sec, {}).get(key) != now.get(sec, {}).get(key)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON friendly; tuples become lists, ``None`` is kept)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            sec = getattr(self, name)
            out[name] = {f.name: _plain(getattr(sec, f.name)) for f in dataclasses.fields(sec) if f.init}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build and validate from a nested mapping (missing keys take defaults)."""
        if not isinstance(data, Mapping):
            raise ConfigError("a run config must be a table of sections")
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]}; allowed: {', '.join(SECTIONS)}")
        kinds = {
            "model": ModelConfig,
            "data": DataConfig,
            "train": LocalTrainConfig,
            "fl": FLConfig,
            "tgap": TGAPConfig,
            "network": NetworkConfig,
        }
        built: dict[str, Any] = {}
        for name, kind in kinds.items():
            built[name] = _build_section(name, kind, data.get(name, {}))
        for name in ("codec", "downlink"):
            built[name] = _build_codec(name, data.get(name))
        return cls(**built)


def _filled(saved: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` with the keys it lacks at their code defaults (section by section)."""
    out: dict[str, Any] = {}
    for sec, table in RunConfig().to_dict().items():
        got = saved.get(sec)
        out[sec] = {**table, **got} if isinstance(got, Mapping) else (table if got is None else got)
    out.update({sec: got for sec, got in saved.items() if sec not in out})
    return out


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _build_codec(section: str, raw: Any) -> CodecConfig:
    if raw is None:
        return default_codec(section)
    if isinstance(raw, str):  # `downlink = "identity"` shorthand
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{section} must be a table with keys name, options (or a codec name)")
    unknown = [k for k in raw if k not in ("name", "options")]
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]}; allowed: name, options")
    default = default_codec(section)
    name = raw.get("name", default.name)
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name must be a codec name (string), got {name!r}")
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"{section}.options must be a table, got {options!r}")
    if "name" not in raw:  # options for the default codec: on top of the default's own
        options = {**default.options, **options}
    try:
        return CodecConfig(name, options)
    except ConfigError as exc:
        raise ConfigError(f"{section}: {exc}") from None


def _build_section(section: str, kind: type, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    hints = typing.get_type_hints(kind)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"unknown key {section}.{key}; allowed: {', '.join(fields)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return kind(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (TOML scalars/arrays only); light conversions."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if (value is None or value == NULL) and type(None) in args:  # "null": TOML has no null
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: value {value!r} has the wrong type")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(key, v, inner) for v in value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)  # the section's own __post_init__ checks the entries
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


# -- TOML and presets ---------------------------------------------------------------------------------------
def preset_names() -> list[str]:
    """Names of the packaged presets (``default``, ``smoke``, ``paper``, ...)."""
    root = resources.files("fedsqueeze") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of a packaged preset."""
    path = resources.files("fedsqueeze") / "configs" / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path.read_text(encoding="utf-8")


CODEC_SECTIONS = ("codec", "downlink")


def _codec_name(data: Mapping[str, Any], section: str) -> str:
    """The codec name ``data`` gives ``section`` (``codec`` / ``downlink``), else the section's default."""
    raw = data.get(section)
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Mapping) and "name" in raw:
        return raw["name"]
    return DOWNLINK_DEFAULT[0] if section == "downlink" else CodecConfig.name


def _drop_options(data: dict[str, Any], section: str) -> None:
    """Forget ``section``'s options (a new codec starts from its own defaults)."""
    raw = data.get(section)
    if isinstance(raw, Mapping):
        data[section] = {k: v for k, v in raw.items() if k != "options"}


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (nested keys allowed: ``codec.options.rate=0.5``) in place.

    Values follow the one command-line grammar of :mod:`fedsqueeze.keyvalue` (TOML literals, ``null``,
    else the raw text), shared with ``--codec NAME:KEY=VALUE``.

    Setting ``codec.name`` (or ``downlink.name``) to another codec than ``data`` names drops ``data``'s
    options for it: the new codec starts from its own defaults, plus any ``codec.options...`` the same
    overrides set (in any order).
    """
    parsed = []
    for item in overrides:
        assignment = parse_assignment(item)
        if assignment is None:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = assignment
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            raise ConfigError(f"unknown section {parts[0]} in --set {key}; allowed: {', '.join(SECTIONS)}")
        if len(parts) < 2:
            raise ConfigError(f"--set {key}: give section.key, e.g. fl.rounds=10")
        parsed.append((key, parts, value))
    for section in CODEC_SECTIONS:
        names = [value for _, parts, value in parsed if parts == [section, "name"]]
        if names and names[-1] != _codec_name(data, section):
            _drop_options(data, section)
    for key, parts, value in parsed:
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part == "downlink":  # `downlink = "x"` shorthand in the file
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a table")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def merge_config(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` on top of ``base`` (raw config tables; neither is modified).

    Sections merge key by key: a key ``layer`` sets replaces the base's (an ``options`` table replaces the
    base's options as a whole). A ``codec`` / ``downlink`` that names another codec than ``base`` and gives
    no ``options`` starts from that codec's defaults, as with ``--set``.
    """
    out = copy.deepcopy(dict(base))
    for section, raw in layer.items():
        table = {"name": raw} if section in CODEC_SECTIONS and isinstance(raw, str) else raw
        old = out.get(section)
        if section in CODEC_SECTIONS and isinstance(old, str):
            old = {"name": old}
        if not (isinstance(table, Mapping) and isinstance(old, Mapping)):
            out[section] = copy.deepcopy(table)
            continue
        if section in CODEC_SECTIONS and table.get("name", _codec_name(out, section)) != _codec_name(
            out, section
        ):
            old = {k: v for k, v in old.items() if k != "options"}
        out[section] = {**old, **copy.deepcopy(dict(table))}
    return out


def _read_toml(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None


def load_config_data(path: str | Path | None = None, *, here: str | Path | None = None) -> dict[str, Any]:
    """The raw config tables of a TOML file or preset, with its ``base`` chain applied (no ``base`` key).

    The merge rule (documented in ``docs/config.md``): a file's top-level ``base`` names what it is applied
    on top of: a preset name, another TOML file (relative to this one) or ``"none"`` (the code defaults).
    A file without ``base`` is applied on top of the ``default`` preset; the packaged presets say
    ``base = "none"``. ``path`` ``None`` is the ``default`` preset; a relative ``path`` is looked up in
    ``here`` first (e.g. the folder of a study file), then in the working directory.
    """
    return _resolve(path, None if here is None else Path(here), ())


def _resolve(ref: str | Path | None, here: Path | None, seen: tuple[str, ...]) -> dict[str, Any]:
    name = "default" if ref is None else str(ref)
    candidate = Path(name) if here is None or Path(name).is_absolute() else here / name
    if ref is not None and not candidate.is_file() and here is not None and Path(name).is_file():
        candidate = Path(name)  # a path relative to the working directory
    if ref is not None and candidate.is_file():
        label, key = str(ref), str(candidate.resolve())
        text, folder = candidate.read_text(encoding="utf-8"), candidate.parent
        default_base = "default"
    elif name in preset_names():
        label, key, text, folder = f"preset {name}", f"preset:{name}", preset_text(name), None
        default_base = NO_BASE
    elif here is None:
        raise ConfigError(f"config file {name!r} not found (presets: {', '.join(preset_names())})")
    else:
        raise ConfigError(
            f"{'base = ' + repr(name) + ': ' if seen else ''}no such file (relative to {here}) and no such "
            f'preset ({", ".join(preset_names())}); base = "{NO_BASE}" means the code defaults'
        )
    if key in seen:
        raise ConfigError(f"{label}: base chain loops back to itself")
    data = _read_toml(text, label)
    base = data.pop(BASE_KEY, default_base)
    if not isinstance(base, str) or not base:
        raise ConfigError(f'{label}: base must be a preset name, a TOML path or "{NO_BASE}", got {base!r}')
    if base == NO_BASE:
        return data
    return merge_config(_resolve(base, folder, (*seen, key)), data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config (``None``: the embedded ``default`` preset) and apply ``--set`` overrides.

    ``path`` may also name a packaged preset (``"smoke"``, ``"paper"``). A file is applied on top of its
    ``base`` (see :func:`load_config_data`: the ``default`` preset unless it names another).
    """
    data = apply_overrides(load_config_data(path), overrides)
    return RunConfig.from_dict(data)
