"""The annotation database: every document offered and every decision made, in SQLite.

Each decision (add, delete, relabel, accept, reject) is written in its own transaction
the moment it is made, with the document's spans and status before and after, so that a
reload or a restart of the demo loses nothing and undo can put back exactly what was
there. A text is stored once (keyed by its hash), so it is never offered twice.

Documents are grouped by ``source`` (the uploaded file's name, or "pasted") and offered
in the order they arrived: the current document of a source is its first pending one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ner.spans import Record, Span

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
# ``tagged_with`` of a document whose spans came with the uploaded file: never re-tagged.
FROM_FILE = "file"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    position    INTEGER NOT NULL,
    key         TEXT NOT NULL,
    text        TEXT NOT NULL,
    text_hash   TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL DEFAULT 'pending',
    spans       TEXT NOT NULL DEFAULT '[]',
    tokens      TEXT,
    tagged_with TEXT,
    touched_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_source ON documents (source, status, position);
-- AUTOINCREMENT: an undone decision's id is never reused, so (max id, count) names a state.
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents (id),
    action      TEXT NOT NULL,
    before      TEXT NOT NULL,
    after       TEXT NOT NULL,
    made_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_document ON decisions (document_id);
"""


@dataclass(frozen=True)
class Document:
    id: int
    source: str
    position: int
    key: str
    text: str
    status: str
    spans: list[Span]
    tokens: list[tuple[int, int]] | None
    tagged_with: str | None
    decisions: int  # how many decisions on it are in force (0: untouched by the annotator)


@dataclass(frozen=True)
class Progress:
    total: int
    accepted: int
    rejected: int

    @property
    def reviewed(self) -> int:
        return self.accepted + self.rejected

    @property
    def pending(self) -> int:
        return self.total - self.reviewed


@dataclass(frozen=True)
class Added:
    added: int
    duplicates: int  # texts already in the database (from any source), not offered again


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spans_to_json(spans) -> str:
    return json.dumps([[s.start, s.end, s.label, s.score] for s in spans])


def spans_from_json(value: str) -> list[Span]:
    return [Span(start, end, label, score) for start, end, label, score in json.loads(value)]


class Store:
    def __init__(self, path):
        self.path = Path(path)
        with self._connect() as db:
            # WAL lets a second browser tab read while the first one writes.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self, *, writing: bool = False):
        # One short-lived connection per operation: Streamlit runs each script rerun on
        # its own thread, and sqlite3 connections must stay on the thread that made them.
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            with db:  # commits, or rolls back on an exception
                if writing:
                    # Read-modify-write: take the write lock before reading, so that two
                    # browser tabs cannot both read the same "before".
                    db.execute("BEGIN IMMEDIATE")
                yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ documents in

    def add(self, source: str, records) -> Added:
        """Queue the records' texts under ``source``, after those already there. A text
        already in the database is skipped; a record's spans, when it has any, are kept as
        its starting spans instead of the pipeline's."""
        added = duplicates = 0
        now = time.time()
        with self._connect(writing=True) as db:
            position = db.execute("SELECT coalesce(max(position), 0) FROM documents WHERE source = ?",
                                  (source,)).fetchone()[0]
            for record in records:
                position += 1
                key = record.id or f"{source}:{position}"
                cursor = db.execute(
                    "INSERT OR IGNORE INTO documents (source, position, key, text, text_hash, spans, tagged_with,"
                    " touched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (source, position, key, record.text, text_hash(record.text), spans_to_json(record.spans),
                     FROM_FILE if record.spans else None, now),
                )
                added += cursor.rowcount
                duplicates += 1 - cursor.rowcount
        return Added(added, duplicates)

    def find(self, text: str) -> Document | None:
        with self._connect() as db:
            row = db.execute(_SELECT + " WHERE text_hash = ?", (text_hash(text),)).fetchone()
        return _document(row) if row else None

    def save_tagging(self, document_id: int, tokens, spans, tagged_with: str) -> None:
        """Store a document's words and the pipeline's spans (``spans=None`` keeps its own).
        Not a decision: predictions on untouched documents follow the current settings."""
        with self._connect() as db:
            if spans is None:
                db.execute("UPDATE documents SET tokens = ?, tagged_with = ? WHERE id = ?",
                           (json.dumps(tokens), tagged_with, document_id))
            else:
                db.execute("UPDATE documents SET tokens = ?, spans = ?, tagged_with = ? WHERE id = ?",
                           (json.dumps(tokens), spans_to_json(spans), tagged_with, document_id))

    # ------------------------------------------------------------------ reading

    def sources(self) -> list[str]:
        """Source names, the most recently touched first (where a reload should land)."""
        with self._connect() as db:
            rows = db.execute("SELECT source FROM documents GROUP BY source ORDER BY max(touched_at) DESC, source")
            return [row[0] for row in rows]

    def document(self, document_id: int) -> Document:
        with self._connect() as db:
            return _document(db.execute(_SELECT + " WHERE d.id = ?", (document_id,)).fetchone())

    def pending(self, source: str, limit: int = 1) -> list[Document]:
        """The next ``limit`` documents to review in ``source``, in arrival order."""
        with self._connect() as db:
            rows = db.execute(_SELECT + " WHERE source = ? AND status = ? ORDER BY position LIMIT ?",
                              (source, PENDING, limit))
            return [_document(row) for row in rows]

    def current(self, source: str) -> Document | None:
        documents = self.pending(source, 1)
        return documents[0] if documents else None

    def documents(self, source: str) -> list[Document]:
        with self._connect() as db:
            return [_document(row) for row in db.execute(_SELECT + " WHERE source = ? ORDER BY position", (source,))]

    def progress(self, source: str) -> Progress:
        with self._connect() as db:
            counts = dict(db.execute("SELECT status, count(*) FROM documents WHERE source = ? GROUP BY status",
                                     (source,)).fetchall())
        return Progress(sum(counts.values()), counts.get(ACCEPTED, 0), counts.get(REJECTED, 0))

    def reviewed(self, source: str | None = None) -> list[Record]:
        """The accepted documents (of ``source``, or all) as Records, in arrival order."""
        where, parameters = "status = ?", [ACCEPTED]
        if source is not None:
            where, parameters = where + " AND source = ?", [*parameters, source]
        with self._connect() as db:
            rows = db.execute(_SELECT + f" WHERE {where} ORDER BY source, position", parameters)
            documents = [_document(row) for row in rows]
        return [Record(d.text, sorted(d.spans), d.key,
                       tokens=[tuple(t) for t in d.tokens] if d.tokens is not None else None)
                for d in documents]

    def version(self) -> tuple[int, int]:
        """Changes whenever a decision is made or undone (a cache key for exports)."""
        with self._connect() as db:
            return tuple(db.execute("SELECT coalesce(max(id), 0), count(*) FROM decisions").fetchone())

    # ------------------------------------------------------------------ decisions

    def decide(self, document_id: int, action: str, *, spans=None, status: str | None = None) -> Document:
        """Record one decision: the document's new spans and/or status, with what they
        were before (for undo)."""
        with self._connect(writing=True) as db:
            row = db.execute("SELECT spans, status FROM documents WHERE id = ?", (document_id,)).fetchone()
            if row is None:
                raise KeyError(f"no document {document_id}")
            before = {"spans": json.loads(row["spans"]), "status": row["status"]}
            after = {"spans": json.loads(spans_to_json(spans)) if spans is not None else before["spans"],
                     "status": status or before["status"]}
            now = time.time()
            db.execute("INSERT INTO decisions (document_id, action, before, after, made_at) VALUES (?, ?, ?, ?, ?)",
                       (document_id, action, json.dumps(before), json.dumps(after), now))
            db.execute("UPDATE documents SET spans = ?, status = ?, touched_at = ? WHERE id = ?",
                       (json.dumps(after["spans"]), after["status"], now, document_id))
        return self.document(document_id)

    def last_decision(self, source: str) -> tuple[int, str] | None:
        """(document id, action) of the decision undo would take back in ``source``."""
        with self._connect() as db:
            row = db.execute("SELECT c.document_id, c.action FROM decisions c JOIN documents d ON d.id = c.document_id"
                             " WHERE d.source = ? ORDER BY c.id DESC LIMIT 1", (source,)).fetchone()
        return (row[0], row[1]) if row else None

    def undo(self, source: str) -> Document | None:
        """Take back the last decision made in ``source``; return the document it touched."""
        with self._connect(writing=True) as db:
            row = db.execute("SELECT c.id, c.document_id, c.before FROM decisions c JOIN documents d"
                             " ON d.id = c.document_id WHERE d.source = ? ORDER BY c.id DESC LIMIT 1",
                             (source,)).fetchone()
            if row is None:
                return None
            before = json.loads(row["before"])
            db.execute("DELETE FROM decisions WHERE id = ?", (row["id"],))
            db.execute("UPDATE documents SET spans = ?, status = ?, touched_at = ? WHERE id = ?",
                       (json.dumps(before["spans"]), before["status"], time.time(), row["document_id"]))
        return self.document(row["document_id"])


_SELECT = ("SELECT d.*, (SELECT count(*) FROM decisions c WHERE c.document_id = d.id) AS decisions"
           " FROM documents d")


def _document(row) -> Document:
    return Document(
        id=row["id"], source=row["source"], position=row["position"], key=row["key"], text=row["text"],
        status=row["status"], spans=spans_from_json(row["spans"]),
        tokens=[tuple(t) for t in json.loads(row["tokens"])] if row["tokens"] is not None else None,
        tagged_with=row["tagged_with"], decisions=row["decisions"],
    )
