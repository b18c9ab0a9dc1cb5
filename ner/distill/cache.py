"""The teachers' answers on disk, so a rerun costs nothing and an interrupted run resumes.

One SQLite file, one row per answer, keyed by the sha256 of (model, prompt version, the
rendered messages): the messages hold the passage and, for typed prompts, the labels, so
asking for other labels is a new question. The raw answer is stored, not the parsed one,
so a better parser or aligner reuses every answer already paid for.

Crash safety comes from SQLite: each answer is committed on its own in WAL mode, so a
``kill -9`` loses at most the requests in flight, never the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path


def default_cache_path() -> Path:
    root = os.environ.get("NER_SUITE_CACHE") or Path.home() / ".cache" / "ner-suite"
    return Path(root) / "distill" / "answers.sqlite"


def answer_key(model: str, prompt_version: str, messages: list[dict]) -> str:
    payload = json.dumps([model, prompt_version, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    """A thread-safe key → answer store in one SQLite file (created when missing)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the worker threads, serialised by a lock: SQLite would
        # serialise the writes anyway, and this keeps one file handle.
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, prompt TEXT,"
                " answer TEXT NOT NULL, created REAL)"
            )

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._connection.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, answer: str, *, model: str = "", prompt: str = "") -> None:
        with self._lock:
            self._connection.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                                     (key, model, prompt, answer, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
