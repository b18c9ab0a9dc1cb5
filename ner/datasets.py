"""Shared datasets by name and split, so configs say ("wnut17", "train") rather than a
path plus reader options.

The manifest ``data/datasets.toml`` (package ``ner.data``) is the one place that knows
where each dataset's files are, which reader and options they need, which splits exist
and under what licence. The files themselves stay in the read-only shared data folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator

from ner.readers import read_records
from ner.spans import Record

DATA_ROOT_VARIABLE = "NER_SUITE_DATA"
_PLACEHOLDERS = {"{lang}": "languages", "{subset}": "subsets"}
_SPLIT_ALIASES = {"validation": "dev", "val": "dev", "devel": "dev", "testa": "dev", "testb": "test"}


@lru_cache(maxsize=1)
def load_manifest() -> dict:
    """The parsed manifest: dataset name → entry (as written, templates unexpanded)."""
    try:
        text = resources.files("ner.data").joinpath("datasets.toml").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        # Running from a source tree (PYTHONPATH) where data/ is not yet mapped to ner.data.
        text = (Path(__file__).parent.parent / "data" / "datasets.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def list_datasets() -> list[str]:
    """Every loadable name; templated datasets appear once per language or subset."""
    names = []
    for name, entry in load_manifest().items():
        key = _template_key(entry)
        if key is None:
            names.append(name)
        else:
            names.extend(f"{name}/{variant}" for variant in entry[key])
    return names


def dataset_info(name: str) -> dict:
    """The manifest entry for a loadable name, with its split paths filled in."""
    base, _, variant = name.partition("/")
    manifest = load_manifest()
    if base not in manifest:
        raise ValueError(f"unknown dataset {name!r}; see list_datasets()")
    entry = dict(manifest[base])
    key = _template_key(entry)
    if (key is None and variant) or (key is not None and variant not in entry[key]):
        choices = [n for n in list_datasets() if n.split("/")[0] == base]
        raise ValueError(f"unknown dataset {name!r}; choose one of {choices}")
    if key is not None:
        placeholder = next(p for p, k in _PLACEHOLDERS.items() if k == key)
        entry["splits"] = {split: path.replace(placeholder, variant) for split, path in entry["splits"].items()}
        if variant in entry.get("labels_by_variant", {}):
            entry["labels"] = entry["labels_by_variant"][variant]
    return entry


def _template_key(entry: dict) -> str | None:
    """"languages" or "subsets" when the entry's paths are templated over them."""
    for placeholder, key in _PLACEHOLDERS.items():
        if any(placeholder in path for path in entry["splits"].values()):
            return key
    return None


def find_data_root() -> Path:
    """``$NER_SUITE_DATA``, else the first ``shared/data`` folder above the current
    directory or above this package (``../shared/data`` from the project root)."""
    if os.environ.get(DATA_ROOT_VARIABLE):
        return Path(os.environ[DATA_ROOT_VARIABLE])
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / "shared" / "data").is_dir():
                return folder / "shared" / "data"
    raise FileNotFoundError(f"no shared/data folder found; set {DATA_ROOT_VARIABLE}")


def split_path(name: str, split: str, *, data_root=None) -> Path:
    """The file (or folder) holding one split of a dataset."""
    entry = dataset_info(name)
    split = _SPLIT_ALIASES.get(split, split)
    if split in _carved_splits(entry):
        split = entry["carve"]["from"]
    if split not in entry["splits"]:
        why = "missing from this copy" if split in entry.get("missing", []) else "not a split"
        raise ValueError(f"{name!r} has no {split!r} split ({why}); available: {sorted(entry['splits'])}")
    return Path(data_root or find_data_root()) / entry["splits"][split]


def load_dataset(name: str, split: str, *, data_root=None, map_labels: bool = False) -> Iterator[Record]:
    """Stream one split of a dataset as Records, read with the manifest's reader options.

    ``map_labels=True`` renames labels through the entry's ``label_map`` (labels it does not
    list stay as they are).
    """
    entry = dataset_info(name)
    path = split_path(name, split, data_root=data_root)
    records = read_records(path, entry["format"], **entry.get("options", {}))
    split = _SPLIT_ALIASES.get(split, split)
    if split in _carved_splits(entry):
        records = _carve(records, entry["carve"], split)
    label_map = entry.get("label_map", {}) if map_labels else {}
    return (_rename_labels(record, label_map) for record in records) if label_map else records


def parse_source(source: str) -> tuple[str, str, int, int | None]:
    """``"dataset:split"``, ``"dataset:split:N"`` (its first N records) or
    ``"dataset:split:A-B"`` (records A to B-1) → (dataset, split, first, stop or None)."""
    parts = source.split(":")
    if not 2 <= len(parts) <= 3 or not all(parts[:2]):
        raise ValueError(f"{source!r}: expected dataset:split, dataset:split:N or dataset:split:A-B")
    name, split, *extent = parts
    if not extent:
        return name, split, 0, None
    first, dash, stop = extent[0].rpartition("-") if "-" in extent[0] else ("0", "", extent[0])
    if not (first.isdigit() and stop.isdigit()) or int(first) > int(stop):
        raise ValueError(f"{source!r}: the records to take are N or A-B (A <= B), got {extent[0]!r}")
    return name, split, int(first), int(stop)


def load_source(source: str, **options) -> Iterator[Record]:
    """The records ``source`` names (``parse_source``), read as ``load_dataset`` reads them."""
    name, split, first, stop = parse_source(source)
    return itertools.islice(load_dataset(name, split, **options), first, stop)


def _carved_splits(entry: dict) -> set[str]:
    """Splits the manifest carves out of another one (``carve``), e.g. a fixed dev/test of
    a dataset that ships only training documents (SciREX), or a fixed train/dev of one
    that ships only dev and test (SeNER's Scholar-XL and Profiling-07, GermEval 2014)."""
    carve = entry.get("carve")
    return {"train", "dev", "test"} & ({*carve} | {carve["rest"]}) if carve else set()


def _carve(records, carve: dict, split: str):
    """The records of a carved split: each record falls in bucket sha1(id or its index) mod
    ``buckets``; a split lists its buckets and ``rest`` takes the buckets no split lists."""
    listed = {b for name in ("train", "dev", "test") for b in carve.get(name, [])}
    wanted = set(carve.get(split, [])) if split != carve["rest"] else set(range(carve["buckets"])) - listed
    for index, record in enumerate(records):
        key = record.id if record.id is not None else str(index)
        if int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % carve["buckets"] in wanted:
            yield record


def _rename_labels(record: Record, label_map: dict[str, str]) -> Record:
    spans = sorted({dataclasses.replace(span, label=label_map.get(span.label, span.label)) for span in record.spans})
    labels = None if record.labels is None else [label_map.get(label, label) for label in record.labels]
    return dataclasses.replace(record, spans=spans, labels=labels)
