"""``[data]``: which dataset, how many clients and how it is split among them (:class:`DataConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.files import FORMATS, check_source, is_hub
from ..data.sources import BUILTIN_DATASETS
from ..data.verbalize import VERBALIZERS
from ..errors import ConfigError
from .fields import POSITIVE, setting, validate
from .sections import register_section

if TYPE_CHECKING:
    from .model import ModelConfig

__all__ = [
    "DATASETS",
    "MAPPINGS",
    "PARTITIONS",
    "DataConfig",
    "check_classifier",
    "check_data_config",
    "mapping_kind",
]

DATASETS = tuple(BUILTIN_DATASETS)  # the built-in ones; data.dataset also takes files, folders and hf:NAME
PARTITIONS = ("iid", "dirichlet")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how many clients and how it is split among them.

    Parameters
    ----------
    dataset
        ``rotten_tomatoes`` (review snippets, 2 classes), ``bbc_news`` (articles, 5 classes), ``gsm8k``
        (math problems, exact match of the final number; needs a causal model), ``gsm8k_sft`` (the same
        problems as instruction tuning: held-out loss per solution token), or your own data: a
        ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, a folder of such files (one format), or
        ``hf:NAME[:CONFIG]``, a Hugging Face hub dataset's ``train`` split (only with
        ``FEDSQUEEZE_OFFLINE=0``). Your own data is read with Hugging Face ``datasets``
        (``pip install 'fedsqueeze[data]'``) and mapped to a task by ``text_field`` + ``label_field``
        (classification), ``prompt_field`` + ``response_field`` (instruction tuning) or, with neither, a
        ``messages`` column of chats (instruction tuning through the tokenizer's chat template; the last
        assistant message is the response). Instruction tuning trains on the response tokens only and its
        main metric is ``eval_loss``, the held-out loss per response token (lower is better), with
        ``perplexity`` beside it; it needs a causal model.
    num_clients
        Clients the training pool is split among.
    partition
        ``iid`` (uniform split) or ``dirichlet`` (label skew with concentration ``alpha``; over
        ``group_field`` when set; for instruction tuning without it, a skew of client sizes).
    alpha
        Dirichlet concentration of the label skew (smaller: more skewed).
    max_train_examples
        Cap on the training pool (seeded choice); ``None``: all of it.
    test_examples
        Size of the held-out evaluation set (seeded choice).
    seed
        Seed of the split and the partition (kept apart from ``fl.seed``).
    gen_max_new_tokens
        Generation budget of the gsm8k evaluation (and of ``exact_match``).
    test_dataset
        Your own held-out set: a file or folder (the same columns as ``dataset``), or for an ``hf:`` dataset
        a split name such as ``test``; ``test_examples`` of it are used (a seeded choice), or all if fewer.
        ``None``: a seeded split of ``dataset``.
    text_field, label_field
        Columns of a classification dataset: the input text and the label (strings or numbers; the label
        names are the sorted distinct values, numbers in numeric order). Set both.
    prompt_field, response_field
        Columns of an instruction-tuning dataset: the prompt and the response. The model sees the prompt,
        a newline (unless the prompt ends with white space) and the response; a prompt that leaves no room
        for the response within ``model.max_length`` is an error, a long response is cut. Set both.
    label_words
        The verbalizer's words (``model.classifier = "verbalizer"``), one per label in label-name order,
        each a single token of the model's tokenizer (a leading space is added where missing); ``None``:
        the built-in datasets' words, or your own label names.
    group_field
        A column of your own data whose values the ``dirichlet`` partition skews instead of the labels
        (e.g. a topic or a source per example).
    exact_match
        Instruction tuning only: also generate greedily (``gen_max_new_tokens``) and report
        ``exact_match`` against the reference response (up to white space). Slow; meant for short answers.
    """

    dataset: str = setting(
        "rotten_tomatoes",
        allowed=f"`{'`, `'.join(DATASETS)}`, a `.jsonl`/`.json`/`.csv`/`.parquet` file or folder, "
        "`hf:NAME[:CONFIG]`",
    )
    num_clients: int = setting(20, range=POSITIVE)
    partition: str = setting("iid", choices=PARTITIONS)
    alpha: float = setting(0.5, range=POSITIVE)
    max_train_examples: int | None = setting(None, range=POSITIVE)
    test_examples: int = setting(300, range=POSITIVE)
    seed: int = 0
    gen_max_new_tokens: int = setting(128, range=POSITIVE)
    test_dataset: str | None = None
    text_field: str | None = None
    label_field: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    label_words: tuple[str, ...] | None = None
    group_field: str | None = None
    exact_match: bool = False

    def __post_init__(self) -> None:
        validate(self, "data")
        check_data_config(self)


# -- your own data: the config-time checks (no file is read; data/own.py reads the files) ---------------
#: Column mapping kind -> the two ``data.*`` keys that select it (both are needed).
MAPPINGS: dict[str, tuple[str, str]] = {
    "classification": ("text_field", "label_field"),
    "sft": ("prompt_field", "response_field"),
}
_OWN_ONLY = ("text_field", "label_field", "prompt_field", "response_field", "test_dataset", "group_field")


def mapping_kind(data: DataConfig) -> str | None:
    """The mapping ``data`` selects (``None``: none set); incomplete or mixed mappings are errors."""
    chosen = []
    for kind, (a, b) in MAPPINGS.items():
        has_a, has_b = getattr(data, a) is not None, getattr(data, b) is not None
        if has_a != has_b:
            given, missing = (a, b) if has_a else (b, a)
            raise ConfigError(f"data.{given} needs data.{missing} too ({kind}: set both)")
        if has_a:
            chosen.append(kind)
    if len(chosen) > 1:
        raise ConfigError(
            "set data.text_field + data.label_field (classification) or data.prompt_field + "
            "data.response_field (instruction tuning), not both"
        )
    return chosen[0] if chosen else None


def check_data_config(data: DataConfig) -> None:
    """The ``data`` section's checks that span keys or look at the file system (no file is read).

    Raises
    ------
    ConfigError
        One line naming the key: an unknown dataset or a missing file, an incomplete column mapping, a key
        that applies to your own data only, a bad ``data.test_dataset`` or ``data.label_words``.
    """
    if not isinstance(data.dataset, str):
        raise ConfigError(f"data.dataset must be a string, got {data.dataset!r}")
    kind = mapping_kind(data)
    entry = BUILTIN_DATASETS.get(data.dataset)
    if entry is not None:
        for key in _OWN_ONLY:
            if getattr(data, key) is not None:
                raise ConfigError(
                    f"data.{key} applies to your own data (a file, a folder or hf:NAME), not the built-in "
                    f"{data.dataset!r}"
                )
        if data.exact_match:
            raise ConfigError(
                f"data.exact_match applies to your own instruction-tuning data, not {data.dataset!r}"
            )
        if data.label_words is not None and entry.kind != "classification":
            raise ConfigError(f"data.label_words applies to classification data, not {data.dataset!r}")
    else:
        check_source(data.dataset, "data.dataset")
        if kind == "sft" and data.label_words is not None:
            raise ConfigError("data.label_words applies to classification data, not to data.prompt_field")
        if kind == "classification" and data.exact_match:
            raise ConfigError("data.exact_match applies to instruction-tuning data, not to data.label_field")
    if data.test_dataset is not None:
        _check_test_source(data.dataset, data.test_dataset)
    if data.label_words is not None:
        words = [w.strip() for w in data.label_words]
        if not all(words) or len(set(words)) != len(words):
            raise ConfigError(
                f"data.label_words = {list(data.label_words)} must be distinct, non-empty words"
            )
    for key in (*_OWN_ONLY, *(k for pair in MAPPINGS.values() for k in pair)):
        value = getattr(data, key)
        if value is not None and not str(value).strip():
            raise ConfigError(f"data.{key} is empty; name a column (or leave it unset)")


def _check_test_source(dataset: str, test: str) -> None:
    if Path(test).exists() or Path(test).suffix in FORMATS or is_hub(test):
        check_source(test, "data.test_dataset")
    elif not is_hub(dataset):
        raise ConfigError(
            f"data.test_dataset = {test!r} is not an existing file or folder (a split name such as 'test' "
            "goes with an hf: dataset only)"
        )


def check_classifier(model: ModelConfig, data: DataConfig) -> None:
    """:class:`~fedsqueeze.ConfigError` when ``model.classifier`` does not fit ``data.dataset`` (the rule
    that spans two sections; ``RunConfig`` and ``build_workload`` both call it)."""
    if model.classifier != "verbalizer":
        if data.label_words is not None:
            raise ConfigError(
                "data.label_words are the verbalizer's words: set model.classifier = 'verbalizer'"
            )
        return
    builtin = data.dataset in BUILTIN_DATASETS
    if (builtin and data.dataset not in VERBALIZERS) or data.prompt_field is not None:
        raise ConfigError(
            f"model.classifier = 'verbalizer' needs a classification dataset ({', '.join(VERBALIZERS)} or "
            f"your own with data.text_field + data.label_field), not {data.dataset!r}"
        )


register_section("data", DataConfig)
