"""Reviewed documents out as files, through the suite's own writers: JSONL in ``ner tag``'s
schema (which the demo and ``ner.readers`` read back), a spaCy DocBin, and CoNLL."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ner.writers import write_records


@dataclass(frozen=True)
class ExportFormat:
    name: str  # write_records' format
    title: str
    suffix: str
    mime: str


FORMATS = (
    ExportFormat("jsonl", "JSONL", ".jsonl", "application/jsonl"),
    ExportFormat("docbin", "spaCy DocBin", ".spacy", "application/octet-stream"),
    ExportFormat("conll", "CoNLL", ".conll", "text/plain"),
)


def export_bytes(records, format: str, nlp_or_vocab=None) -> bytes:
    """The records written as ``format``. CoNLL starts each document with ``-DOCSTART-``
    so that reading it back gives one record per document, not per sentence."""
    options = {"jsonl": {}, "conll": {"documents": True}, "docbin": {"nlp_or_vocab": nlp_or_vocab}}.get(format, {})
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "export"  # the DocBin writer needs a path, not a stream
        write_records(records, path, format=format, **options)
        return path.read_bytes()
