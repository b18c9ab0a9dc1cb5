"""Carved splits: fixed, documented dev/test splits of datasets that ship fewer splits."""
import pytest

from ner.datasets import _carve, load_dataset
from ner.spans import Record

from conftest import needs_data


def test_carved_splits_are_disjoint_complete_and_fixed():
    records = [Record(f"text {i}", id=f"doc{i}") for i in range(500)]
    carve = {"from": "train", "buckets": 10, "test": [0], "dev": [1], "rest": "train"}
    splits = {split: [r.id for r in _carve(iter(records), carve, split)] for split in ("train", "dev", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(r.id for r in records)
    assert 20 < len(splits["test"]) < 80 and 20 < len(splits["dev"]) < 80
    assert splits["test"] == [r.id for r in _carve(iter(records), carve, "test")]


@needs_data
def test_scirex_documents_split_306_ways_by_document():
    ids = {split: {r.id for r in load_dataset("scirex", split)} for split in ("train", "dev", "test")}
    assert sum(len(v) for v in ids.values()) == 306
    assert not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"]) and not (ids["train"] & ids["dev"])


@needs_data
@pytest.mark.parametrize("name", ["hiner/collapsed", "germeval2014"])
def test_carved_sentence_splits_exist(name):
    sizes = {split: sum(1 for _ in load_dataset(name, split)) for split in ("train", "dev", "test")}
    assert all(sizes.values()) and sizes["train"] > sizes["dev"]
