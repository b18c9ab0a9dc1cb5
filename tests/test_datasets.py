"""Carved splits: fixed, documented dev/test splits of datasets that ship fewer splits."""
import pytest

from ner.datasets import _carve, load_dataset, split_path
from ner.readers import read_records
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
@pytest.mark.parametrize("name, sizes", [("sener_long_ner/scholar-xl", (309, 40, 350)),
                                         ("sener_long_ner/profiling-07", (63, 8, 143))])
def test_sener_dev_documents_carved_into_train_and_dev_test_official(name, sizes):
    """SeNER ships dev and test only: dev is carved by doc_id (bucket 0 → dev, rest →
    train), the official test stays whole."""
    ids = {split: [r.id for r in load_dataset(name, split)] for split in ("train", "dev", "test")}
    assert tuple(len(v) for v in ids.values()) == sizes
    official_dev = [r.id for r in read_records(split_path(name, "dev"), "sener")]
    assert sorted(ids["train"] + ids["dev"]) == sorted(official_dev) and not set(ids["train"]) & set(ids["dev"])


@needs_data
@pytest.mark.parametrize("name", ["hiner/collapsed", "germeval2014"])
def test_carved_sentence_splits_exist(name):
    sizes = {split: sum(1 for _ in load_dataset(name, split)) for split in ("train", "dev", "test")}
    assert all(sizes.values()) and sizes["train"] > sizes["dev"]


def test_a_source_names_a_split_or_part_of_it():
    from ner.datasets import parse_source

    assert parse_source("wnut17:test") == ("wnut17", "test", 0, None)
    assert parse_source("scirex:dev:2") == ("scirex", "dev", 0, 2)
    assert parse_source("wikiann/de:train:2000-4500") == ("wikiann/de", "train", 2000, 4500)
    for bad in ("wnut17", "wnut17:test:10:20", "wnut17:test:ten", "wnut17:test:9-3", ":test"):
        with pytest.raises(ValueError, match="wnut17|:test"):
            parse_source(bad)


@needs_data
def test_load_source_takes_the_records_a_range_names():
    from ner.datasets import load_dataset, load_source

    whole = [r.text for r in load_dataset("wnut17", "dev")][:12]
    assert [r.text for r in load_source("wnut17:dev:5")] == whole[:5]
    assert [r.text for r in load_source("wnut17:dev:5-12")] == whole[5:12]
