"""``ner.load``: a shipped pipeline by name, or any pipeline directory by path."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import spacy


def shipped_pipelines() -> list[str]:
    root = resources.files("ner.pipelines")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.cfg").is_file())


def pipeline_path(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = resources.files("ner.pipelines") / str(name_or_path)
    if candidate.is_dir() and (candidate / "config.cfg").is_file():
        return Path(str(candidate))
    raise ValueError(
        f"no pipeline {name_or_path!r}: give a directory or one of {shipped_pipelines()}"
    )


def load(name_or_path="en", **options) -> spacy.language.Language:
    """The pipeline ``name_or_path`` (e.g. "en", "biomedical") as a spaCy Language.
    Nothing is fetched from a network."""
    return spacy.load(pipeline_path(name_or_path), **options)
