"""Texts coming into the demo: a pasted text, or an uploaded ``.txt`` (one document per
line, as ``ner tag`` reads it) or ``.jsonl`` (a ``"text"`` per line, entities optional:
the suite's own JSONL, so an export re-imports). Both are capped in size, with a message
that says what to do instead, because the page tags documents as the annotator reaches them
and a bulk job belongs to ``ner tag``.
"""
from __future__ import annotations

import io
from pathlib import Path

from ner.readers import read_jsonl
from ner.spans import FormatError, Record

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_TEXT_CHARS = 100_000
SUFFIXES = ("txt", "jsonl")


class UploadError(ValueError):
    """Input the demo does not take; the message is meant for the annotator."""


def pasted_record(text: str) -> Record:
    text = text.strip()
    if not text:
        raise UploadError("The text is empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise UploadError(
            f"The text has {len(text):,} characters; the demo takes up to {MAX_TEXT_CHARS:,} at a time. "
            "Upload it as a .txt file with one document per line, or tag it in bulk with `ner tag`."
        )
    return Record(text)


def read_upload(name: str, data: bytes) -> list[Record]:
    """The non-empty documents of an uploaded file, ids ``"<name>:<line>"`` unless the
    JSONL gives its own."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in SUFFIXES:
        raise UploadError(f"{name}: the demo reads .txt (one document per line) or .jsonl files, not .{suffix}.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"{name} is {len(data) / 2**20:.1f} MB; the demo takes files up to {MAX_UPLOAD_BYTES / 2**20:.0f} MB. "
            f"Split it, or tag it in bulk with `ner tag {name}`."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UploadError(f"{name} is not UTF-8 text (byte {error.start} cannot be decoded).") from None
    if suffix == "txt":
        return [Record(line.strip(), id=f"{name}:{number}")
                for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    return _jsonl_records(name, text)


def _jsonl_records(name: str, text: str) -> list[Record]:
    try:
        records = list(read_jsonl(io.StringIO(text)))
    except FormatError as error:
        raise UploadError(f"{name}, line {error.line_number}: {error.reason}") from None
    out = []
    for number, record in enumerate(records, 1):
        if record.text.strip():
            record.id = record.id or f"{name}:{number}"
            out.append(record)
    return out
