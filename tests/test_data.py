"""Datasets from installed packages, held-out splits, partitioners, text collation and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.data import metrics
from fedsqueeze.data.partition import (
    dirichlet_partition,
    iid_partition,
    partition,
    quantity_skew_partition,
    train_test_split,
)
from fedsqueeze.data.sources import load_bbc_news, load_dataset, load_gsm8k, load_rotten_tomatoes
from fedsqueeze.data.text import (
    IGNORE_INDEX,
    clean_gsm8k_answer,
    collate_causal,
    collate_classification,
    collate_prompts,
)
from fedsqueeze.errors import ConfigError


# -- sources -------------------------------------------------------------------------------------------
def test_rotten_tomatoes_counts_and_labels():
    d = load_rotten_tomatoes()
    assert d.label_names == ("rotten", "fresh")
    # 12,808 fresh/rotten rows (plot rows dropped) minus 56 exact duplicates.
    assert len(d) == 12_752
    counts = np.bincount(d.labels)
    assert counts.tolist() == [5_384, 7_368]
    assert len(set(d.texts)) == len(d)
    assert all(t for t in d.texts)


def test_bbc_news_counts_and_labels():
    d = load_bbc_news()
    assert d.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert len(d) == 2_125  # 2,225 files, 100 exact duplicates
    assert set(d.labels) == {0, 1, 2, 3, 4}
    assert len(set(d.texts)) == len(d)


def test_gsm8k_is_the_test_split_with_parsable_answers():
    d = load_gsm8k()
    assert len(d) == 1_319
    assert d.labels is None and not d.is_classification
    refs = [metrics.parse_gsm8k_answer(a) for a in d.answers]
    assert all(r is not None for r in refs)
    assert refs[0] == "18"  # Janet's ducks


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError):
        load_dataset("imdb")


# -- splits and partitions -----------------------------------------------------------------------------
def test_train_test_split_is_disjoint_deterministic_and_nested():
    train, test = train_test_split(1000, 100, seed=3)
    assert len(test) == 100 and len(train) == 900
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(1000))
    train2, test2 = train_test_split(1000, 100, seed=3)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    _, other = train_test_split(1000, 100, seed=4)
    assert not np.array_equal(test, other)
    _, small = train_test_split(1000, 50, seed=3)
    assert set(small) <= set(test)
    capped, _ = train_test_split(1000, 100, seed=3, max_train=10)
    assert len(capped) == 10 and set(capped) <= set(train)
    with pytest.raises(ConfigError):
        train_test_split(10, 10, seed=0)


def _assert_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(20, 400),
    k=st.integers(1, 12),
    classes=st.integers(1, 5),
    alpha=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**32),
)
def test_partitions_cover_every_example_once(n, k, classes, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, classes, n)
    for parts in (
        iid_partition(n, k, seed=seed),
        dirichlet_partition(labels, k, alpha, seed=seed),
        quantity_skew_partition(n, k, alpha, seed=seed),
    ):
        assert len(parts) == k
        _assert_cover(parts, n)
        assert min(len(p) for p in parts) >= min(4, n // k)


def test_partitions_are_seeded():
    labels = np.arange(600) % 3
    a = partition(600, 10, "dirichlet", labels=labels, alpha=0.3, seed=1)
    b = partition(600, 10, "dirichlet", labels=labels, alpha=0.3, seed=1)
    c = partition(600, 10, "dirichlet", labels=labels, alpha=0.3, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    i1 = partition(600, 10, "iid", seed=5)
    i2 = partition(600, 10, "iid", seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(i1, i2, strict=True))
    assert max(len(p) for p in i1) - min(len(p) for p in i1) <= 1


def _mean_majority_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_dirichlet_small_alpha_is_label_skewed():
    labels = np.arange(5000) % 5
    skewed = partition(5000, 20, "dirichlet", labels=labels, alpha=0.1, seed=0)
    flat = partition(5000, 20, "dirichlet", labels=labels, alpha=100.0, seed=0)
    iid = partition(5000, 20, "iid", seed=0)
    assert _mean_majority_share(skewed, labels) > 0.6
    assert _mean_majority_share(flat, labels) < 0.35
    assert _mean_majority_share(iid, labels) < 0.35


def test_unlabelled_dirichlet_is_quantity_skew():
    parts = partition(1000, 10, "dirichlet", labels=None, alpha=0.3, seed=0)
    _assert_cover(parts, 1000)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 3 * sizes[0]


def test_partition_errors():
    with pytest.raises(ConfigError):
        partition(5, 10, "iid")
    with pytest.raises(ConfigError):
        partition(100, 10, "shards")


# -- collation -----------------------------------------------------------------------------------------
def test_collate_classification_pads_right():
    b = collate_classification([[1, 2, 3], [4]], [1, 0], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [1, 0]


def test_collate_causal_and_prompts():
    b = collate_causal([[5, 6, 7], [8]], [[IGNORE_INDEX, 6, 7], [8]], pad_id=2)
    assert b["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    p = collate_prompts([[5, 6, 7], [8]], pad_id=2)
    assert p["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
    assert p["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_clean_gsm8k_answer_drops_calculator_annotations():
    assert clean_gsm8k_answer("16 - 3 = <<16-3=13>>13 eggs\n#### 13") == "16 - 3 = 13 eggs\n#### 13"


# -- metrics -------------------------------------------------------------------------------------------
def test_accuracy_and_macro_f1():
    y = [0, 0, 1, 1, 2]
    p = [0, 1, 1, 1, 0]
    assert metrics.accuracy(p, y) == pytest.approx(3 / 5)
    # F1: class0 tp1 fp1 fn1 -> 0.5; class1 tp2 fp1 fn0 -> 0.8; class2 -> 0
    assert metrics.macro_f1(p, y, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.macro_f1(y, y, 3) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("The answer is 1,234.50 dollars.", "1234.5"),
        ("so x = -3.", "-3"),
        ("first 5 then 7.00", "7"),
        ("#### $2,000", "2000"),
        ("#### unknown, but maybe 12", "12"),
        ("no digits here", None),
    ],
)
def test_extract_final_number(text, want):
    assert metrics.extract_final_number(text) == want


def test_gsm8k_exact_match():
    refs = ["a\n#### 18", "b\n#### 3", "c\n#### 1,000"]
    gens = ["so 18 eggs", "#### 4", "The total is 1000.0"]
    assert metrics.gsm8k_exact_match(gens, refs) == pytest.approx(2 / 3)
