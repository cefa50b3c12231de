"""A SuperNode's own data: ``fedsqueeze flower supernode --data PATH`` (no Flower import here).

By default SuperNode ``i`` trains on slice ``i`` of the dataset the job's config names (``data.dataset``
split and partitioned exactly as ``fedsqueeze run`` does). With ``--data PATH`` (node-config key
``data-path``) it trains on every row of its own file or folder instead; the job's column mapping
(``data.text_field`` + ``data.label_field``, ``data.prompt_field`` + ``data.response_field``, or a
``messages`` column) applies to it, and a node whose columns are named otherwise renames them with
``--set data.text_field=COLUMN`` etc. (node-config keys ``data-text-field``, ...). The held-out set stays
with the server: the node never evaluates.

The node checks the server's messages against the digest of the job's config as the server sent it, while
it builds its model and data from a node-local copy of that config (:func:`local_run_config`):
``data.dataset`` is the node's path, all of its rows are one client's shard, and the server's
``data.test_dataset`` and ``data.group_field`` (paths and columns of the server's data) are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import LocalTrainConfig, RunConfig
from ..config.data import MAPPINGS
from ..data.files import FORMATS, check_source, is_hub
from ..errors import ConfigError
from ..fl.workload import Workload
from .settings import DEFAULT_ROUND_TIMEOUT, FlowerSettings, settings_from_context

__all__ = [
    "FIELD_KEYS",
    "PATH_KEY",
    "LocalData",
    "LocalDataWorkload",
    "NodeSettings",
    "local_data",
    "local_run_config",
    "node_config_entries",
    "node_settings",
    "node_workload",
]

#: Node-config key of the node's own data (an absolute path).
PATH_KEY = "data-path"
#: ``data.*`` column key -> its node-config key: the column mapping a node may rename with ``--set``.
FIELD_KEYS: dict[str, str] = {
    f"data.{key}": f"data-{key.replace('_', '-')}" for pair in MAPPINGS.values() for key in pair
}


@dataclasses.dataclass(frozen=True)
class LocalData:
    """A node's own training data.

    Attributes
    ----------
    path
        An absolute ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or a folder of such files.
    fields
        ``data.*`` column keys this node renames (e.g. ``{"data.text_field": "body"}``); the job's
        mapping holds for the others.
    """

    path: str
    fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if is_hub(self.path):
            raise ConfigError(f"--data {self.path}: give a local file or folder (hf: datasets are not local)")
        if not Path(self.path).exists() and Path(self.path).suffix not in FORMATS:
            raise ConfigError(
                f"--data {self.path}: no such file or folder (give a {'/'.join(FORMATS)} file or a folder of "
                "them)"
            )
        check_source(self.path, "--data")
        for key, column in self.fields:
            if key not in FIELD_KEYS:
                raise ConfigError(
                    f"--set {key}: a SuperNode renames only the columns ({', '.join(FIELD_KEYS)}); "
                    "every other key comes from the job's config"
                )
            if not column.strip():
                raise ConfigError(f"--set {key}= names no column")
        for value in (self.path, *(c for _, c in self.fields)):
            if '"' in value:
                raise ConfigError(f"{value!r}: a double quote cannot travel in Flower's node config")

    @classmethod
    def from_args(cls, path: str, sets: list[str]) -> LocalData:
        """From ``--data PATH`` and ``--set data.KEY=COLUMN`` (the path made absolute)."""
        fields = []
        for item in sets:
            key, eq, column = item.partition("=")
            if not eq:
                raise ConfigError(f"--set {item!r}: write data.KEY=COLUMN, e.g. data.text_field=review")
            fields.append((key.strip(), column.strip()))
        return cls(path if is_hub(path) else str(Path(path).expanduser().resolve()), tuple(fields))


def node_config_entries(local: LocalData) -> list[str]:
    """``key="value"`` entries of ``--node-config`` that carry ``local`` to the ClientApp."""
    entries = [f"{PATH_KEY}={json.dumps(local.path)}"]
    entries += [f"{FIELD_KEYS[key]}={json.dumps(column)}" for key, column in local.fields]
    return entries


def local_data(node_config: Mapping[str, Any]) -> LocalData | None:
    """The node's own data named in its node config (``None``: it trains on its slice of the job's data)."""
    path = node_config.get(PATH_KEY)
    if not path:
        return None
    by_node_key = {v: k for k, v in FIELD_KEYS.items()}
    fields = tuple((by_node_key[k], str(v)) for k, v in node_config.items() if k in by_node_key)
    return LocalData(str(path), fields)


def local_run_config(job: Mapping[str, Any], local: LocalData) -> RunConfig:
    """The job's config (``RunConfig.to_dict`` form) as a node with its own data builds its workload from.

    ``data.dataset`` becomes ``local.path`` and every one of its rows goes to the node's single client:
    the training pool is the whole file (``data.max_train_examples`` does not apply), and the split's
    held-out part is one row of the same file read again (``data.test_dataset``), which the node never
    uses: evaluation is the server's, on its own held-out set. Renamed columns replace the job's; the
    server's sampling keys (``fl.clients_per_round``, ``fl.min_replies``) are set to fit one client.

    Raises
    ------
    ConfigError
        A renamed column that the job's mapping does not use (the node would build another task).
    """
    data = dict(job.get("data", {}))
    for key, column in local.fields:
        short = key.removeprefix("data.")
        if data.get(short) is None:
            used = [f"data.{k}" for pair in MAPPINGS.values() for k in pair if data.get(k) is not None]
            maps = ", ".join(used) or "a messages column"
            raise ConfigError(
                f"--set {key}: the job does not map {key} (it maps {maps}); "
                "a node may rename only the job's own columns"
            )
        data[short] = column
    data.update(
        dataset=local.path,
        test_dataset=local.path,
        test_examples=1,
        num_clients=1,
        partition="iid",
        max_train_examples=None,
        group_field=None,
        exact_match=False,
    )
    # One client here: the server's sampling keys (not the node's concern) must fit it.
    fl = {**job.get("fl", {}), "clients_per_round": 1, "min_replies": None}
    return RunConfig.from_dict({**job, "data": data, "fl": fl})


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class NodeSettings(FlowerSettings):
    """:class:`~fedsqueeze.flower.settings.FlowerSettings` of a node with its own data.

    ``config`` is the node-local config (:func:`local_run_config`); :attr:`digest` and
    :attr:`state_digest` are the job's, computed from the config the server sent, so the node answers and
    checks the server's messages as any other node does.
    """

    job_digest: str = ""
    job_state_digest: str = ""
    local: LocalData | None = None
    job_num_clients: int = 1

    @property
    def digest(self) -> str:
        return self.job_digest

    @property
    def state_digest(self) -> str:
        # The node's data names its state too: a node restarted on other files starts a fresh residual.
        return _digest([self.job_state_digest, dataclasses.asdict(self.local) if self.local else None])


def node_settings(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> FlowerSettings:
    """This node's settings: the job's (``run_config``), or with its own data a :class:`NodeSettings`."""
    local = local_data(node_config)
    if local is None:
        return settings_from_context(run_config)
    raw = run_config.get("fedsqueeze-config")
    if not isinstance(raw, str) or not raw:
        raise ConfigError(
            "the Flower run config has no fedsqueeze-config; start runs with `fedsqueeze flower`"
        )
    job = json.loads(raw)
    workload = str(run_config.get("workload", ""))
    stateless = {**job, "fl": {k: v for k, v in job.get("fl", {}).items() if k != "rounds"}}
    base = FlowerSettings(
        local_run_config(job, local),
        workload=workload,
        round_timeout=float(run_config.get("round-timeout", DEFAULT_ROUND_TIMEOUT)),
        out_dir=str(run_config.get("out-dir", "")),
        node_state_dir=str(run_config.get("node-state-dir", "")),
    )
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(FlowerSettings)}
    return NodeSettings(
        **fields,
        job_digest=_digest([job, workload]),  # = FlowerSettings.digest of the server's config
        job_state_digest=_digest([stateless, workload]),
        local=local,
        job_num_clients=int(job.get("data", {}).get("num_clients", 1)),
    )


class LocalDataWorkload:
    """A node's workload on its own data: client ``client`` (its partition id) trains on every row.

    Wraps the workload built from :func:`local_run_config` (one client, index 0); everything else
    (specs, initial parameters, the model) is that workload's, which are the server's: the same model, seed
    and task.
    """

    def __init__(self, inner: Workload, client: int, num_clients: int) -> None:
        self.inner, self.client, self._n = inner, client, num_clients
        self.lora_spec, self.head_spec = inner.lora_spec, inner.head_spec
        self.metric_name = inner.metric_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # info, metric_higher_is_better, save_adapter, ...

    def _own(self, client: int) -> int:
        if client != self.client:
            raise ConfigError(f"this node trains client {self.client} on its own data, not client {client}")
        return 0

    def num_clients(self) -> int:
        return self._n

    def client_num_examples(self, client: int) -> int:
        return self.inner.client_num_examples(self._own(client))

    def initial_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.inner.initial_params()

    def train_client(
        self,
        client: int,
        lora: dict[str, torch.Tensor],
        head: dict[str, torch.Tensor],
        cfg: LocalTrainConfig,
        *,
        seed: int,
        train_head: bool = True,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        return self.inner.train_client(self._own(client), lora, head, cfg, seed=seed, train_head=train_head)

    def evaluate(self, lora: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.inner.evaluate(lora, head)


_CACHE: dict[tuple[str, LocalData, int], LocalDataWorkload] = {}


def node_workload(settings: NodeSettings, client: int) -> LocalDataWorkload:
    """Build (once per process, job, data and client) the workload of a node with its own data.

    The model, LoRA adapter and head are built from the job's config and seed, as on every node and on the
    server; the data is the node's (:func:`local_run_config`). A custom ``--workload`` factory is called
    with that node-local config.
    """
    from .settings import _build

    assert settings.local is not None, "node_workload is for a node with its own data"
    key = (settings.digest, settings.local, client)
    if key not in _CACHE:
        _CACHE.clear()  # one job per process at a time; do not pin old models in memory
        try:
            inner = _build(FlowerSettings(settings.config, workload=settings.workload))  # node-local config
        except ConfigError as exc:
            field = str(exc).split(" = ", 1)[0]
            if field in FIELD_KEYS and " is not a column of " in str(exc):  # name this node's column for it
                raise ConfigError(f"{exc} (start this SuperNode with --set {field}=COLUMN)") from None
            raise
        _CACHE[key] = LocalDataWorkload(inner, client, settings.job_num_clients)
    return _CACHE[key]
