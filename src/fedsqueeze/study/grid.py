"""The study grid: tasks × partitions × codecs × seeds, read from a study TOML.

A study file::

    [study]
    name = "default"                 # labels the output folder (default runs/study/<name>)
    seeds = [0, 1]
    baseline = "identity"            # codec label that traffic reduction is measured against
    seed_keys = ["fl.seed"]          # config keys that receive the cell's seed
    set = ["fl.eval_every=1"]        # --set overrides for every cell

    [[tasks]]
    name = "minilm-rt"
    base = "default"                 # a run preset name or a run TOML path (relative to this file), optional
    set = ["fl.rounds=6"]            # overrides on top of base (and of the inline [tasks.config] tables)
    timing = { step_s = 0.25 }       # for --dry-run estimates (see TIMING_DEFAULTS)
    target = 0.7                     # optional fixed target (default: the weakest codec's best)
    codec_set = { cg_fedllm = ["codec.options.model_path=ae/minilm-rt.safetensors"] }  # per task × codec

    [[tasks]]
    name = "minilm-rt-adamw"
    extends = "minilm-rt"            # an earlier task: its base, config, set, target, timing, codec_set
    set = ["train.optimizer=adamw"]  # appended to the parent's set; other keys replace or merge into its own

    [[codecs]]
    label = "flm_topk-even"
    name = "flm_topk"
    options = { mode = "even" }      # replaces the base config's codec options
    set = ["fl.error_feedback=false"]
    rates = [0.25, 1]                # optional: this entry's own rate sweep (see below); [] for none

    [[partitions]]
    label = "dir0.1"
    partition = "dirichlet"
    alpha = 0.1

**Task inheritance.** ``extends = "<task>"`` starts a task from an earlier task of the same file: the
parent's ``base`` (a task that extends gives no ``base`` of its own), its ``config`` tables with the task's
own merged over them, its ``set`` followed by the task's own, and its ``target``, ``timing`` and
``codec_set`` unless the task gives them (``timing`` and ``codec_set`` merge key by key). So two tasks that
differ by one setting say so in one line.

A cell's config is: base, then inline ``config`` tables, then ``study.set``, ``task.set``, the partition, the
codec (name + options), ``codec.set`` and the task's ``codec_set`` for that codec, then the seed. Every cell
config is validated on load.

**Rate sweeps.** ``[study] rates = [0.05, 0.1, 0.25, 0.5, 1, 2]`` (target bits per parameter of the whole
uplink frame, the codec's ``rate`` option: see ``Codec.rate_option``) sweeps every ``[[codecs]]`` entry whose
codec declares a rate option: the entry becomes one column per rate, labelled ``<label>@r<rate>``
(``topk@r0.25``, the rate written with ``%g``), with the rate set on top of the entry's options at the codec's
``rate_path`` (``options.rate``; ``options.inner_options.rate`` for ``predictive`` around a codec with a
rate). An entry's own ``rates`` replaces the study's list for it (``rates = []``: no sweep, one column at its
options); giving ``rates`` to a codec without a rate option (fixed-rate codecs such as
identity, fp16, signsgd) is an error. Entries that take no rate option, and entries whose ``options`` already
set it, stay one column under the study's list. An entry whose options fix its budget another way
(``density = ...``) conflicts with a rate: the cell config says so on load. Each column keeps its ``family``
(the entry label) and its ``rate`` (``None`` for an unswept column), and the results carry both, so curves can
be drawn per family. ``study.baseline`` and ``codec_set`` keys name a column (``topk@r1``); ``codec_set`` may
also name a family, for every column of it. The ``@`` is reserved for these labels.

**BD-rate references.** ``[study] bd_references = ["topk", "identity"]`` names the families every other
family's rate–accuracy curve is compared against in ``bd_rate.json`` (:mod:`.aggregate`); the default is
``topk`` (when the grid has that family) and the baseline.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, load_config_data
from ..errors import ConfigError

__all__ = [
    "TIMING_DEFAULTS",
    "Cell",
    "CodecEntry",
    "PartitionEntry",
    "StudyGrid",
    "TaskEntry",
    "load_study",
    "rate_label",
    "study_names",
    "study_path",
]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: --dry-run cost model of one cell: setup (model load), one local optimizer step, one evaluation, and the
#: local steps per client per round when train.max_steps is unset.
TIMING_DEFAULTS = {"setup_s": 15.0, "step_s": 0.25, "eval_s": 6.0, "steps_per_client": 50.0}


def _label(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise ConfigError(f"{where} = {value!r}: use letters, digits and _ . + - (it names a folder)")
    return value


def _keys(where: str, raw: Any, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table, got {raw!r}")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown key {where}.{key}; allowed: {', '.join(allowed)}")
    return raw


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of 'key=value' strings, got {value!r}")
    return tuple(value)


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into ``into`` (tables merge, everything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A model × dataset with its base run config (a nested dict, before the grid's overrides)."""

    name: str
    base: Mapping[str, Any]
    overrides: tuple[str, ...] = ()
    target: float | None = None
    timing: Mapping[str, float] = dataclasses.field(default_factory=dict)
    codec_overrides: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def rate_label(label: str, rate: float) -> str:
    """The column label of ``label`` swept to ``rate``: ``topk@r0.25``."""
    return f"{label}@r{rate:g}"


@dataclasses.dataclass(frozen=True)
class CodecEntry:
    """A ``[[codecs]]`` entry (``rates`` its sweep) or one column of the table (see :meth:`columns`).

    ``family`` is the entry label a column comes from (the label itself for an entry), ``rate`` the target
    rate a column sets (``None``: the codec's own options decide).
    """

    label: str
    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    rates: tuple[float, ...] = ()
    family: str = ""
    rate: float | None = None

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.label)

    def columns(self) -> list[CodecEntry]:
        """One column per rate of :attr:`rates` (with the rate option set), or the entry itself."""
        if not self.rates:
            return [self]
        from ..codecs.registry import with_path  # lazily: the codecs pull in torch

        path = _rate_path(f"codecs.{self.label}", self.name, self.options)
        assert path is not None  # _codec only sweeps codecs with a rate path
        return [
            CodecEntry(
                rate_label(self.label, r), self.name, with_path(self.options, path, r), self.overrides, (),
                self.label, r,
            )
            for r in self.rates
        ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PartitionEntry:
    """A client partition: ``iid`` or ``dirichlet`` with its α."""

    label: str
    partition: str
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"partitions.{self.label}.partition must be iid or dirichlet")
        if self.partition == "dirichlet" and not (self.alpha is not None and self.alpha > 0):
            raise ConfigError(f"partitions.{self.label}: a dirichlet partition needs alpha > 0")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid; ``id`` is also its folder below the study's output folder."""

    task: str
    partition: str
    codec: str
    seed: int
    config: RunConfig
    timing: Mapping[str, float]
    family: str = ""  # the [[codecs]] entry the column comes from (its label; ``codec`` when not swept)
    rate: float | None = None  # the column's target rate (a rate sweep), else None

    @property
    def id(self) -> str:
        return f"{self.task}/{self.partition}/{self.codec}/seed{self.seed}"

    def out_dir(self, root: str | Path) -> Path:
        return Path(root) / self.task / self.partition / self.codec / f"seed{self.seed}"

    def estimate_s(self, *, setup: bool = True) -> float:
        """Rough wall time from the task's timing: steps + evaluations (+ the model load if ``setup``)."""
        t = {**TIMING_DEFAULTS, **self.timing}
        fl, train = self.config.fl, self.config.train
        steps = train.max_steps if train.max_steps is not None else t["steps_per_client"] * train.epochs
        evals = fl.rounds // fl.eval_every + (fl.rounds % fl.eval_every != 0)
        run_s = fl.rounds * fl.clients_per_round * steps * t["step_s"] + evals * t["eval_s"]
        return run_s + (t["setup_s"] if setup else 0.0)


@dataclasses.dataclass(frozen=True)
class StudyGrid:
    """A parsed study file; :meth:`cells` expands and validates the grid."""

    name: str
    tasks: tuple[TaskEntry, ...]
    codecs: tuple[CodecEntry, ...]
    partitions: tuple[PartitionEntry, ...]
    seeds: tuple[int, ...] = (0, 1)
    baseline: str = "identity"
    seed_keys: tuple[str, ...] = ("fl.seed",)
    overrides: tuple[str, ...] = ()
    out: str | None = None
    rates: tuple[float, ...] = ()
    bd_references: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for what, items, attr in (
            ("tasks", self.tasks, "name"),
            ("codecs", self.codecs, "label"),
            ("codec columns", self.columns, "label"),
            ("partitions", self.partitions, "label"),
        ):
            labels = [getattr(i, attr) for i in items]
            if not labels:
                raise ConfigError(f"the study needs at least one entry in [[{what}]]")
            dup = {x for x in labels if labels.count(x) > 1}
            if dup:
                raise ConfigError(f"duplicate {what} label(s): {', '.join(sorted(dup))}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"study.seeds must be a non-empty list of distinct integers, got {self.seeds}")
        labels = [c.label for c in self.columns]
        families = [c.label for c in self.codecs]
        if self.baseline not in labels:
            swept = self.baseline in families
            raise ConfigError(
                f"study.baseline = {self.baseline!r} is "
                + (
                    "swept over rates; name one of its columns ("
                    + ", ".join(c.label for c in self.columns if c.family == self.baseline)
                    + ") or give it rates = []"
                    if swept
                    else "not a codec label of [[codecs]]"
                )
            )
        for task in self.tasks:
            for label in task.codec_overrides:
                if label not in labels and label not in families:
                    raise ConfigError(f"tasks.{task.name}.codec_set.{label}: no codec has this label")
        for ref in self.bd_references or ():
            if ref not in families:
                raise ConfigError(f"study.bd_references: {ref!r} is not a codec label of [[codecs]]")

    @property
    def columns(self) -> tuple[CodecEntry, ...]:
        """The codec columns: every entry of :attr:`codecs`, each swept rate of an entry a column."""
        return tuple(col for entry in self.codecs for col in entry.columns())

    def references(self) -> tuple[str, ...]:
        """The families BD-rates are computed against: ``bd_references``, else ``topk`` (if the grid has that
        family) and the baseline's family."""
        if self.bd_references is not None:
            return self.bd_references
        families = [c.label for c in self.codecs]
        base = next(c.family for c in self.columns if c.label == self.baseline)
        return tuple(dict.fromkeys(f for f in ("topk", base) if f in families))

    def default_out(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / "study" / self.name

    def cells(self) -> list[Cell]:
        """Every cell in task, partition, codec column, seed order (each config built and validated)."""
        out = []
        columns = self.columns
        for task in self.tasks:
            for part in self.partitions:
                for codec in columns:
                    for seed in self.seeds:
                        out.append(self._cell(task, part, codec, seed))
        return out

    def _cell(self, task: TaskEntry, part: PartitionEntry, codec: CodecEntry, seed: int) -> Cell:
        cell_id = f"{task.name}/{part.label}/{codec.label}/seed{seed}"
        data = copy.deepcopy(dict(task.base))
        try:
            apply_overrides(data, [*self.overrides, *task.overrides])
            data.setdefault("data", {})["partition"] = part.partition
            if part.alpha is not None:
                data["data"]["alpha"] = part.alpha
            data["codec"] = {"name": codec.name, "options": copy.deepcopy(dict(codec.options))}
            apply_overrides(
                data,
                [
                    *codec.overrides,
                    *(task.codec_overrides.get(codec.family, ()) if codec.family != codec.label else ()),
                    *task.codec_overrides.get(codec.label, ()),
                    *(f"{key}={seed}" for key in self.seed_keys),
                ],
            )
            config = RunConfig.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell_id}: {exc}") from None
        return Cell(
            task.name, part.label, codec.label, seed, config, dict(task.timing), codec.family, codec.rate
        )


# -- reading a study file -----------------------------------------------------------------------------------
def _read_base(where: str, base: Any, here: Path) -> dict[str, Any]:
    if base is None:
        return {}
    if not isinstance(base, str):
        raise ConfigError(f"{where}.base must be a preset name or a run TOML path, got {base!r}")
    try:
        return load_config_data(base, here=here)  # a run TOML sits on its own base (the default preset)
    except ConfigError as exc:
        raise ConfigError(f"{where}.base = {base!r}: {exc}") from None


_TASK_KEYS = ("name", "base", "config", "set", "target", "timing", "codec_set")


def _extend(i: int, raw: Any, earlier: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``raw`` with its ``extends`` resolved against the (already resolved) tasks before it."""
    where = f"tasks[{i}]"
    raw = dict(_keys(where, raw, (*_TASK_KEYS, "extends")))
    if "extends" not in raw:
        return raw
    parent_name = raw.pop("extends")
    where = f"tasks.{raw.get('name', i)}"
    if not isinstance(parent_name, str) or parent_name not in earlier:
        known = ", ".join(earlier) or "none"
        raise ConfigError(
            f"{where}.extends = {parent_name!r} must name a task defined above it (tasks so far: {known})"
        )
    if "base" in raw:
        raise ConfigError(f"{where}: give base or extends, not both (extends takes {parent_name!r}'s base)")
    parent = earlier[parent_name]
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in parent.items() if k != "name"}
    out["name"] = raw.get("name")
    for key in ("config", "timing", "codec_set"):
        mine, theirs = raw.get(key, {}), out.get(key, {})
        if not isinstance(mine, Mapping) or not isinstance(theirs, Mapping):
            out[key] = mine  # not a table: _task reports it
        elif key == "config":
            out[key] = _merge(dict(theirs), mine)  # theirs: already out's deep copy of the parent
        else:
            out[key] = {**theirs, **mine}
    mine_set, theirs_set = raw.get("set", []), out.get("set", [])
    both = isinstance(mine_set, list) and isinstance(theirs_set, list)
    out["set"] = [*theirs_set, *mine_set] if both else mine_set
    if "target" in raw:
        out["target"] = raw["target"]
    return out


def _task(i: int, raw: Any, here: Path) -> TaskEntry:
    where = f"tasks[{i}]"
    raw = _keys(where, raw, _TASK_KEYS)
    name = _label(f"{where}.name", raw.get("name"))
    where = f"tasks.{name}"
    base = _read_base(where, raw.get("base"), here)
    sections = ("model", "data", "train", "fl", "codec", "downlink", "tgap", "network")
    _merge(base, _keys(f"{where}.config", raw.get("config", {}), sections))
    timing = _keys(f"{where}.timing", raw.get("timing", {}), tuple(TIMING_DEFAULTS))
    for key, value in timing.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}.timing.{key} must be a number >= 0, got {value!r}")
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)):
        raise ConfigError(f"{where}.target must be a number, got {target!r}")
    codec_set = raw.get("codec_set", {})
    if not isinstance(codec_set, Mapping):
        raise ConfigError(
            f"{where}.codec_set must be a table of codec label = [overrides], got {codec_set!r}"
        )
    return TaskEntry(
        name,
        base,
        _strings(f"{where}.set", raw.get("set", [])),
        None if target is None else float(target),
        {k: float(v) for k, v in timing.items()},
        {k: _strings(f"{where}.codec_set.{k}", v) for k, v in codec_set.items()},
    )


def _rate_path(where: str, name: str, options: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Where the codec takes its rate in ``options`` (``Codec.rate_path``); ``None``: a fixed-rate codec."""
    from ..codecs import codec_class

    try:
        return codec_class(name).rate_path(options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _path_set(options: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    """Whether ``options`` already sets the value at ``path`` (nested tables)."""
    node: Any = options
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _rates(where: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
    ):
        raise ConfigError(f"{where} must be a list of rates > 0 (bits per parameter), got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} lists a rate twice: {value!r}")
    return tuple(float(v) for v in value)


def _codec(i: int, raw: Any, study_rates: tuple[float, ...] = ()) -> CodecEntry:
    raw = _keys(f"codecs[{i}]", raw, ("label", "name", "options", "set", "rates"))
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"codecs[{i}].name must be a codec name, got {name!r}")
    label = _label(f"codecs[{i}].label", raw.get("label", name))
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"codecs.{label}.options must be a table, got {options!r}")
    path = _rate_path(f"codecs.{label}", name, options)
    if "rates" in raw:
        rates = _rates(f"codecs.{label}.rates", raw["rates"])
        if rates and path is None:
            raise ConfigError(
                f"codecs.{label}.rates: codec {name} has no rate option (its rate is fixed); drop rates"
            )
        if rates and path is not None and _path_set(options, path):
            raise ConfigError(
                f"codecs.{label}: options.{'.'.join(path)} and rates both set the rate; give one of them"
            )
    else:  # the study's sweep, for codecs that take a rate and do not fix it in their options
        rates = study_rates if path is not None and not _path_set(options, path) else ()
    return CodecEntry(label, name, dict(options), _strings(f"codecs.{label}.set", raw.get("set", [])), rates)


def _partition(i: int, raw: Any) -> PartitionEntry:
    raw = _keys(f"partitions[{i}]", raw, ("label", "partition", "alpha"))
    alpha = raw.get("alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)):
        raise ConfigError(f"partitions[{i}].alpha must be a number, got {alpha!r}")
    partition = raw.get("partition", "dirichlet" if alpha is not None else "iid")
    label = _label(f"partitions[{i}].label", raw.get("label", partition))
    return PartitionEntry(label, partition, None if alpha is None else float(alpha))


def _tasks(raws: list[Any], here: Path) -> tuple[TaskEntry, ...]:
    resolved: dict[str, dict[str, Any]] = {}
    tasks = []
    for i, raw in enumerate(raws):
        full = _extend(i, raw, resolved)
        tasks.append(_task(i, full, here))
        resolved.setdefault(tasks[-1].name, full)  # a duplicate name fails in StudyGrid
    return tuple(tasks)


def study_from_dict(data: Mapping[str, Any], *, here: str | Path = ".", name: str = "study") -> StudyGrid:
    """Build a :class:`StudyGrid` from a parsed study TOML; ``here`` resolves relative ``base`` paths."""
    _keys("study file", data, ("study", "tasks", "codecs", "partitions"))
    head = _keys(
        "study",
        data.get("study", {}),
        ("name", "out", "seeds", "baseline", "seed_keys", "set", "rates", "bd_references"),
    )
    rates = _rates("study.rates", head.get("rates", []))
    refs = head.get("bd_references")
    if refs is not None and (not isinstance(refs, list) or not all(isinstance(r, str) for r in refs)):
        raise ConfigError(f"study.bd_references must be a list of codec labels, got {refs!r}")
    seeds = head.get("seeds", [0, 1])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"study.seeds must be a list of integers, got {seeds!r}")
    out = head.get("out")
    if out is not None and not isinstance(out, str):
        raise ConfigError(f"study.out must be a folder path, got {out!r}")
    for section in ("tasks", "codecs", "partitions"):
        if not isinstance(data.get(section, []), list):
            raise ConfigError(f"{section} must be an array of tables ([[{section}]])")
    grid = StudyGrid(
        name=_label("study.name", head.get("name", name)),
        tasks=_tasks(data.get("tasks", []), Path(here)),
        codecs=tuple(_codec(i, c, rates) for i, c in enumerate(data.get("codecs", []))),
        partitions=tuple(_partition(i, p) for i, p in enumerate(data.get("partitions", []))),
        seeds=tuple(seeds),
        baseline=head.get("baseline", "identity"),
        seed_keys=_strings("study.seed_keys", head.get("seed_keys", ["fl.seed"])),
        overrides=_strings("study.set", head.get("set", [])),
        out=out,
        rates=rates,
        bd_references=None if refs is None else tuple(refs),
    )
    grid.cells()  # validate every cell config now, not hours into the study
    return grid


def study_names() -> list[str]:
    """Names of the packaged study grids (``default``, ``e2e-default``, ``full``)."""
    root = resources.files("fedsqueeze") / "configs" / "study"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def study_path(name: str) -> Path:
    """The file of a packaged study grid (package data, ``fedsqueeze/configs/study/NAME.toml``)."""
    if name not in study_names():
        raise ConfigError(f"unknown study {name!r}; available: {', '.join(study_names())}")
    return Path(str(resources.files("fedsqueeze") / "configs" / "study" / f"{name}.toml"))


def load_study(path: str | Path) -> StudyGrid:
    """Read and validate a study TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"study file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return study_from_dict(data, here=path.parent, name=path.stem)
