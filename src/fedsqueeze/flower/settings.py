"""What a Flower run needs beyond the engine: the run config as flat Flower keys, the workload, timeouts.

Flower run configs are flat ``key = scalar`` tables that travel to every ServerApp and ClientApp, so the whole
:class:`~fedsqueeze.config.RunConfig` travels as one JSON string (``fedsqueeze-config``); the server and
every client rebuild the same config from it and check its digest on every message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError
from ..fl.driver import check_job_out_dir  # re-exported: the driver's refusal, shared by the CLI
from ..fl.workload import Workload
from .binding import parse_partition_map

__all__ = [
    "DEFAULT_ROUND_TIMEOUT",
    "FlowerSettings",
    "check_job_out_dir",
    "default_out_dir",
    "make_workload",
    "settings_from_context",
]

RUN_CONFIG_ENV = "FEDSQUEEZE_FLOWER_RUN_CONFIG"  # run config for run_simulation (which passes an empty one)

DEFAULT_ROUND_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True)
class FlowerSettings:
    """One Flower run: the engine config plus the Flower-only knobs.

    Parameters
    ----------
    config
        The same :class:`~fedsqueeze.config.RunConfig` ``fedsqueeze run`` takes (``fl.min_replies`` is
        honoured here: a round with fewer valid replies leaves the model unchanged; ``None`` means 1).
    workload
        ``""``: built from the config exactly as ``fedsqueeze run`` builds it (``model.name = "toy"`` gives
        the tiny synthetic :class:`~fedsqueeze.fl.toy.ToyWorkload`); ``"module:callable"``:
        ``callable(config) -> Workload``, importable on every node (the ServerApp and every ClientApp).
    round_timeout
        Seconds the server waits for replies each round (Flower run-config key ``round-timeout``); clients
        that have not replied by then are dropped from that round.
    out_dir
        Where the ServerApp writes ``metrics.jsonl`` / ``summary.json`` / ``checkpoint/`` (on the machine
        running the ServerApp, i.e. the SuperLink's in a deployment); ``""`` for
        ``runs/<time>-<codec>-flower``.
    resume
        Continue the run in ``out_dir`` from its checkpoint (run-config key ``resume``), like
        ``fedsqueeze run --resume``: the same config except that ``fl.rounds`` may grow.
    node_state_dir
        Where a node started without ``state-dir`` in its node config keeps its state
        (``NODE_STATE_DIR/p<partition id>``; run-config key ``node-state-dir``). ``fedsqueeze flower
        simulate`` sets ``OUT/nodes``, which makes a resumed simulation bit-identical; ``""``: such nodes
        keep their state in ``context.state`` (memory).
    bind_partitions
        Bind each partition to the public key of the first SuperNode that claims it (run-config key
        ``bind-partitions``): a later claim from another key is refused (:mod:`.binding`). Needs SuperNode
        authentication; ``False``: a restarted node replaces the old id.
    partition_map
        The JSON text of ``{identity: partition id}`` (run-config key ``partition-map``;
        :func:`~.binding.parse_partition_map`): only the identities it lists may serve, each its own
        partition. ``""``: no map.
    """

    config: RunConfig
    workload: str = ""
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    out_dir: str = ""
    resume: bool = False
    node_state_dir: str = ""
    bind_partitions: bool = False
    partition_map: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.round_timeout, int | float) and math.isfinite(self.round_timeout)) or (
            self.round_timeout <= 0
        ):
            raise ConfigError(f"round-timeout must be a number of seconds > 0, got {self.round_timeout!r}")
        if not isinstance(self.resume, bool):
            raise ConfigError(f"resume must be true or false, got {self.resume!r}")
        if self.workload and ":" not in self.workload:
            raise ConfigError(f'workload must be "" or "module:callable", got {self.workload!r}')
        if not isinstance(self.bind_partitions, bool):
            raise ConfigError(f"bind-partitions must be true or false, got {self.bind_partitions!r}")
        parse_partition_map(self.partition_map, self.config.data.num_clients)  # a bad map fails here

    @property
    def partition_entries(self) -> dict[str, int]:
        """The partition map as canonical identity -> partition id (empty without one)."""
        return parse_partition_map(self.partition_map, self.config.data.num_clients)

    @property
    def digest(self) -> str:
        """Short SHA-256 of the config and workload: server and clients must agree on it."""
        blob = json.dumps([self.config.to_dict(), self.workload], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def state_digest(self) -> str:
        """Short SHA-256 of the config without ``fl.rounds``, and the workload: what names and guards a
        node's state, which stays valid when a resumed run grows ``fl.rounds``."""
        data = self.config.to_dict()
        data["fl"] = {k: v for k, v in data["fl"].items() if k != "rounds"}
        blob = json.dumps([data, self.workload], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def min_replies(self) -> int:
        return self.config.fl.min_replies or 1

    def to_run_config(self) -> dict[str, str | float | bool]:
        """The flat Flower run config (``[tool.flwr.app.config]`` / ``context.run_config``)."""
        return {
            "fedsqueeze-config": json.dumps(self.config.to_dict(), sort_keys=True),
            "workload": self.workload,
            "round-timeout": float(self.round_timeout),
            "out-dir": self.out_dir,
            "resume": self.resume,
            "node-state-dir": self.node_state_dir,
            "bind-partitions": self.bind_partitions,
            "partition-map": self.partition_map,
        }

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FlowerSettings:
        """Inverse of :meth:`to_run_config` (raises :class:`~fedsqueeze.ConfigError` on a bad value)."""
        raw = run_config.get("fedsqueeze-config")
        if not isinstance(raw, str) or not raw:
            raise ConfigError(
                "the Flower run config has no fedsqueeze-config; start runs with `fedsqueeze flower`"
            )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"fedsqueeze-config is not valid JSON: {exc}") from None
        return cls(
            config=RunConfig.from_dict(data),
            workload=str(run_config.get("workload", "")),
            round_timeout=float(run_config.get("round-timeout", DEFAULT_ROUND_TIMEOUT)),
            out_dir=str(run_config.get("out-dir", "")),
            resume=_flag(run_config.get("resume", False), "resume"),
            node_state_dir=str(run_config.get("node-state-dir", "")),
            bind_partitions=_flag(run_config.get("bind-partitions", False), "bind-partitions"),
            partition_map=str(run_config.get("partition-map", "")),
        )


def _flag(value: Any, key: str) -> bool:
    """A run-config boolean: TOML ``true``/``false`` (``flwr run --run-config`` may also give a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"run-config key {key} must be true or false, got {value!r}")


def settings_from_context(run_config: Mapping[str, Any]) -> FlowerSettings:
    """Settings from a Flower ``context.run_config``, else from ``$FEDSQUEEZE_FLOWER_RUN_CONFIG`` (JSON)."""
    if "fedsqueeze-config" not in run_config and os.environ.get(RUN_CONFIG_ENV):
        run_config = json.loads(os.environ[RUN_CONFIG_ENV])
    return FlowerSettings.from_run_config(run_config)


def default_out_dir(settings: FlowerSettings) -> Path:
    """``runs/<timestamp>-<codec>-flower`` under the current directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{settings.config.codec.name}-flower"


_CACHE: dict[str, Workload] = {}


def make_workload(settings: FlowerSettings) -> Workload:
    """Build (once per process and config) the workload named by ``settings.workload``.

    The cache matters in simulation, where client actors stay warm; in a deployment every message gets a
    fresh ClientApp process, so the model is rebuilt each round (see docs/flower.md).
    """
    key = settings.digest
    if key not in _CACHE:
        _CACHE.clear()  # one config per process at a time; do not pin old models in memory
        _CACHE[key] = _build(settings)
    return _CACHE[key]


def _build(settings: FlowerSettings) -> Workload:
    cfg = settings.config
    if settings.workload == "":
        from ..fl.loop import build_workload  # the same construction as `fedsqueeze run`

        return build_workload(cfg)
    mod, _, attr = settings.workload.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"workload {settings.workload!r} cannot be imported: {exc}") from None
    return factory(cfg)
