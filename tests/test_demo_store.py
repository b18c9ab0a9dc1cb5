"""The demo's non-UI core: the SQLite store (decisions, undo, restarts, no text twice)
and the correction operations."""
import sqlite3

import pytest

from ner.app import corrections
from ner.app.store import ACCEPTED, FROM_FILE, PENDING, REJECTED, Store
from ner.spans import Record, Span

TEXT = "Angela Merkel met Tim Cook in Berlin ."
TOKENS = [(0, 6), (7, 13), (14, 17), (18, 21), (22, 26), (27, 29), (30, 36), (37, 38)]
PREDICTED = [Span(0, 13, "PER", 0.9), Span(18, 26, "PER", 0.8), Span(30, 36, "LOC", 0.7)]


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "annotations.sqlite")
    store.add("news.txt", [Record(TEXT, id="news.txt:1"), Record("Apple and Google visited Paris ."),
                           Record("Paris London")])
    first = store.current("news.txt")
    store.save_tagging(first.id, TOKENS, PREDICTED, "settings-1")
    return store


def test_documents_come_in_arrival_order_and_a_text_only_once(store):
    assert [d.key for d in store.pending("news.txt", 10)] == ["news.txt:1", "news.txt:2", "news.txt:3"]
    again = store.add("other.jsonl", [Record(TEXT), Record("Berlin"), Record("Berlin")])
    assert (again.added, again.duplicates) == (1, 2)
    assert [d.text for d in store.documents("other.jsonl")] == ["Berlin"]
    assert store.find(TEXT).source == "news.txt"
    assert store.find("never seen") is None


def test_decisions_move_through_the_file_and_undo_walks_back(store):
    first = store.current("news.txt")
    assert (first.spans, first.tokens, first.tagged_with, first.decisions) == (PREDICTED, TOKENS, "settings-1", 0)
    edited = corrections.delete_span(first.spans, PREDICTED[2])
    store.decide(first.id, "delete", spans=edited)
    store.decide(first.id, "accept", status=ACCEPTED)
    second = store.current("news.txt")
    assert second.key == "news.txt:2"
    store.decide(second.id, "reject", status=REJECTED)
    assert store.progress("news.txt").__dict__ == {"total": 3, "accepted": 1, "rejected": 1}
    assert store.last_decision("news.txt") == (second.id, "reject")

    assert store.undo("news.txt").id == second.id
    assert store.current("news.txt").id == second.id
    assert store.undo("news.txt").status == PENDING
    # The accepted document is the first pending one again, with its edit still in force.
    back = store.current("news.txt")
    assert (back.id, back.spans, back.decisions) == (first.id, PREDICTED[:2], 1)
    undone = store.undo("news.txt")
    assert (undone.spans, undone.decisions) == (PREDICTED, 0)
    assert store.undo("news.txt") is None


def test_a_restart_loses_nothing(store, tmp_path):
    first = store.current("news.txt")
    store.decide(first.id, "relabel", spans=corrections.relabel_span(first.spans, PREDICTED[1], "ORG"))
    store.decide(first.id, "accept", status=ACCEPTED)
    del store

    reopened = Store(tmp_path / "annotations.sqlite")
    assert reopened.progress("news.txt").accepted == 1
    assert reopened.current("news.txt").key == "news.txt:2"
    [record] = reopened.reviewed("news.txt")
    assert (record.id, record.text, record.tokens) == ("news.txt:1", TEXT, TOKENS)
    assert [(s.start, s.end, s.label, s.score) for s in record.spans] == [
        (0, 13, "PER", 0.9), (18, 26, "ORG", None), (30, 36, "LOC", 0.7)]
    # Every decision is on disk, with what it replaced.
    with sqlite3.connect(tmp_path / "annotations.sqlite") as db:
        assert [row[0] for row in db.execute("SELECT action FROM decisions ORDER BY id")] == ["relabel", "accept"]


def test_reviewed_holds_accepted_documents_only_and_version_names_each_state(store):
    versions = {store.version()}
    first = store.current("news.txt")
    store.decide(first.id, "accept", status=ACCEPTED)
    versions.add(store.version())
    store.decide(store.current("news.txt").id, "reject", status=REJECTED)
    after_reject = store.version()
    store.undo("news.txt")
    # After an undo, a new decision must not reuse the undone one's version.
    store.decide(store.current("news.txt").id, "accept", status=ACCEPTED)
    assert store.version() not in versions | {after_reject}
    assert [r.id for r in store.reviewed("news.txt")] == ["news.txt:1", "news.txt:2"]
    assert store.reviewed("elsewhere") == []


def test_spans_that_come_with_the_file_are_kept(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.add("gold.jsonl", [Record("Tim Cook", [Span(0, 8, "PER")], id="g1")])
    document = store.current("gold.jsonl")
    assert (document.tagged_with, document.spans) == (FROM_FILE, [Span(0, 8, "PER")])


# --------------------------------------------------------------------------- corrections


def test_adding_a_span_over_words_replaces_what_it_overlaps():
    new = corrections.span_over_words(TOKENS, 3, 6, " ORG ")
    assert (new.start, new.end, new.label, new.score) == (18, 36, "ORG", None)
    assert corrections.add_span(PREDICTED, new) == [PREDICTED[0], new]
    between = corrections.span_over_words(TOKENS, 2, 2, "MISC")  # "met", between two entities: both stay
    assert corrections.add_span(PREDICTED, between) == [PREDICTED[0], between, *PREDICTED[1:]]


def test_relabel_drops_the_score_and_delete_removes_one_span():
    relabelled = corrections.relabel_span(PREDICTED, Span(18, 26, "PER"), "ORG")
    assert [(s.label, s.score) for s in relabelled] == [("PER", 0.9), ("ORG", None), ("LOC", 0.7)]
    assert corrections.delete_span(PREDICTED, Span(0, 13, "PER")) == PREDICTED[1:]


@pytest.mark.parametrize("call", [
    lambda: corrections.span_over_words(TOKENS, 5, 2, "PER"),
    lambda: corrections.span_over_words(TOKENS, 0, 8, "PER"),
    lambda: corrections.span_over_words(TOKENS, 0, 0, "  "),
    lambda: corrections.delete_span(PREDICTED, Span(0, 6, "PER")),
    lambda: corrections.relabel_span(PREDICTED, Span(30, 36, "PER"), "LOC"),
])
def test_impossible_corrections_are_refused(call):
    with pytest.raises(ValueError):
        call()
