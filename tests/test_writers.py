"""Writers: every format round-trips (write → read gives the same Records back)."""
from __future__ import annotations

import io
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ner.datasets import find_data_root, load_dataset
from ner.readers import read_brat, read_conll, read_docbin, read_jsonl, read_records
from ner.spans import Record, Span, join_words, word_spans_to_char_spans
from ner.writers import (
    record_to_doc,
    write_brat,
    write_conll,
    write_docbin,
    write_jsonl,
    write_records,
)


def core(record: Record):
    """What every round trip must preserve."""
    return record.text, record.spans, record.tokens, record.sentences


def two_sentence_record() -> Record:
    text = "Mira Holt visited Oslo .\nAcme Lund agreed"
    tokens = [(0, 4), (5, 9), (10, 17), (18, 22), (23, 24), (25, 29), (30, 34), (35, 41)]
    spans = [Span(0, 9, "PER"), Span(18, 22, "LOC"), Span(25, 29, "ORG"), Span(30, 34, "ORG")]
    return Record(text, spans, "doc-1", tokens, [(0, 24), (25, 41)])


# --------------------------------------------------------------------------- JSON lines


def test_jsonl_schema_and_round_trip(tmp_path):
    record = Record("Ana met Bo.", [Span(0, 3, "PER", 0.75), Span(8, 10, "PER")], "r1")
    path = tmp_path / "out.jsonl"
    assert write_jsonl(iter([record, Record("", id=None)]), path) == 2
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"id": "r1", "text": "Ana met Bo.", "entities": [
        {"start": 0, "end": 3, "label": "PER", "score": 0.75, "text": "Ana"},
        {"start": 8, "end": 10, "label": "PER", "score": None, "text": "Bo"}]}
    back, empty = read_jsonl(path)
    assert (back.id, back.text, back.spans) == ("r1", record.text, record.spans)
    assert [s.score for s in back.spans] == [0.75, None]
    assert (empty.text, empty.id) == ("", None)


def test_jsonl_writes_to_open_streams():
    buffer = io.StringIO()
    write_jsonl([Record("Zoë", [Span(0, 3, "PER")], "u")], buffer)
    assert '"Zoë"' in buffer.getvalue()  # not \u-escaped


# --------------------------------------------------------------------------- CoNLL


def test_conll_documents_round_trip(tmp_path):
    path = tmp_path / "out.conll"
    write_conll([two_sentence_record()], path, documents=True)
    assert path.read_text().startswith("-DOCSTART-\tO\n\nMira\tB-PER\nHolt\tI-PER\n")
    (back,) = read_conll(path)
    assert core(back) == core(two_sentence_record())


def test_conll_sentences_and_iob1(tmp_path):
    path = tmp_path / "out.conll"
    write_conll([two_sentence_record()], path, scheme="IOB1")
    text = path.read_text()
    assert "Acme\tI-ORG\nLund\tB-ORG\n" in text and "\n\nAcme" in text
    back = list(read_conll(path))
    assert [r.text for r in back] == ["Mira Holt visited Oslo .", "Acme Lund agreed"]
    assert back[1].spans == [Span(0, 4, "ORG"), Span(5, 9, "ORG")] and back[1].meta["scheme"] == "IOB1"


def test_conll_tokenises_on_whitespace_when_needed(tmp_path):
    buffer = io.StringIO()
    write_conll([Record("Ana  met\tBo", [Span(9, 11, "PER")])], buffer)
    assert buffer.getvalue() == "Ana\tO\nmet\tO\nBo\tB-PER\n\n"


@pytest.mark.parametrize("spans, message", [([Span(0, 8, "ORG"), Span(4, 8, "LOC")], "overlapping"),
                                            ([Span(0, 2, "PER")], "word boundaries")])
def test_conll_rejects_spans_flat_tags_cannot_hold(spans, message):
    with pytest.raises(ValueError, match=message):
        write_conll([Record("Big Bank", spans, "r")], io.StringIO())


# --------------------------------------------------------------------------- spaCy DocBin


def test_docbin_round_trip_keeps_newlines_nesting_and_ids(tmp_path):
    from spacy.vocab import Vocab

    nested = Record("Die Berliner Bank", [Span(4, 12, "LOC"), Span(4, 17, "ORG")], "g1",
                    [(0, 3), (4, 12), (13, 17)], [(0, 17)], labels=["LOC", "ORG"], meta={"source": "x"})
    records = [two_sentence_record(), nested]
    path = tmp_path / "out.spacy"
    assert write_docbin(records, path, Vocab()) == 2
    back = list(read_docbin(path, spans_key="sc"))
    assert [core(r) for r in back] == [core(r) for r in records]
    assert (back[1].id, back[1].labels, back[1].meta) == ("g1", ["LOC", "ORG"], {"source": "x"})
    flat = list(read_docbin(path))[1]
    assert flat.spans == [Span(4, 17, "ORG")]  # doc.ents keeps the longest of nested spans


def test_docbin_uses_the_pipeline_tokenizer_for_untokenised_text():
    import spacy

    doc = record_to_doc(Record("Ana's cat, Bo.", [Span(11, 13, "PER")]), spacy.blank("en"))
    assert [t.text for t in doc] == ["Ana", "'s", "cat", ",", "Bo", "."] and doc.ents[0].text == "Bo"
    with pytest.raises(ValueError, match="token edges"):
        record_to_doc(Record("Ana's", [Span(0, 2, "PER")]), spacy.blank("en"))


# --------------------------------------------------------------------------- BRAT


def test_brat_round_trip_with_fragments_and_crlf(tmp_path):
    record = Record("Left\r\nand right lung.", [Span(0, 20, "Anatomy"), Span(10, 20, "Anatomy")], "n1",
                    meta={"fragments": [[0, 20, "Anatomy", [[0, 4], [16, 20]]]]})
    write_brat(record, tmp_path / "n1.txt", tmp_path / "n1.ann")
    assert (tmp_path / "n1.ann").read_text() == "T1\tAnatomy 0 4;16 20\tLeft lung\nT2\tAnatomy 10 20\tright lung\n"
    (back,) = read_brat(tmp_path)
    assert (back.text, back.spans, back.id, back.meta) == (record.text, record.spans, "n1", record.meta)


def test_brat_rejects_labels_with_spaces(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_brat(Record("Graph theory", [Span(0, 12, "field of study")]), tmp_path / "a.txt", tmp_path / "a.ann")


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("format, target", [("jsonl", "out.jsonl"), ("conll", "out.conll"),
                                            ("docbin", "out.spacy"), ("brat", "brat_dir")])
def test_write_records_then_read_records(tmp_path, format, target):
    from spacy.vocab import Vocab

    options = {"nlp_or_vocab": Vocab()} if format == "docbin" else {}
    record = Record("Ana met Bo", [Span(0, 3, "PER"), Span(8, 10, "PER")], "r1", [(0, 3), (4, 7), (8, 10)], [(0, 10)])
    assert write_records([record], tmp_path / target, format, **options) == 1
    (back,) = read_records(tmp_path / target)
    assert (back.text, back.spans) == (record.text, record.spans)


# --------------------------------------------------------------------------- properties

WORDS = st.text("abcdeéXYZ.,'-", min_size=1, max_size=6)


@st.composite
def tokenised_records(draw):
    """Records as CoNLL holds them: words joined by spaces, flat spans per sentence."""
    sentences = draw(st.lists(st.lists(WORDS, min_size=1, max_size=8), min_size=1, max_size=3))
    text_parts, tokens, sentence_offsets, spans, position = [], [], [], [], 0
    for words in sentences:
        text, offsets = join_words(words)
        offsets = [(s + position, e + position) for s, e in offsets]
        word_spans, index = [], 0
        while index < len(words) and draw(st.booleans()):
            start = draw(st.integers(index, len(words) - 1))
            end = draw(st.integers(start + 1, len(words)))
            word_spans.append((start, end, draw(st.sampled_from(["PER", "LOC"]))))
            index = end
        spans += word_spans_to_char_spans(offsets, word_spans)
        text_parts.append(text)
        tokens += offsets
        sentence_offsets.append((position, position + len(text)))
        position += len(text) + 1
    return Record("\n".join(text_parts), spans, "r", tokens, sentence_offsets)


# Hypothesis reruns a test many times per call, so files go to a session-scoped folder.


@settings(max_examples=40, deadline=None)
@given(records=st.lists(tokenised_records(), min_size=1, max_size=3), scheme=st.sampled_from(["BIO", "IOB1"]))
def test_conll_write_read_is_identity(tmp_path_factory, records, scheme):
    path = tmp_path_factory.mktemp("conll") / "out.conll"
    write_conll(records, path, scheme, documents=True)
    assert [core(r) for r in read_conll(path, scheme=scheme)] == [core(r) for r in records]


@settings(max_examples=40, deadline=None)
@given(records=st.lists(tokenised_records(), min_size=1, max_size=3))
def test_jsonl_write_read_keeps_text_and_spans(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("jsonl") / "out.jsonl"
    write_jsonl(records, path)
    assert [(r.text, r.spans) for r in read_jsonl(path)] == [(r.text, r.spans) for r in records]


# --------------------------------------------------------------------------- real data

try:
    find_data_root()
    HAVE_DATA = True
except FileNotFoundError:
    HAVE_DATA = False


@pytest.mark.skipif(not HAVE_DATA, reason="shared data folder not available")
def test_conll2003_documents_survive_a_round_trip(tmp_path):
    documents = list(itertools.islice(load_dataset("conll2003_en", "dev"), 5))
    write_conll(documents, tmp_path / "out.conll", scheme="IOB1", documents=True)
    assert [core(r) for r in read_conll(tmp_path / "out.conll")] == [core(r) for r in documents]
