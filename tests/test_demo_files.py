"""What goes into the demo (pasted text, uploads, their caps) and what comes out (JSONL,
DocBin, CoNLL exports that read back), plus the numbers behind its charts, its HTML, and
the per-call options it hands a pipeline."""
import json
import re

import pytest
import spacy
from spacy.language import Language

from ner.app import charts, predictions
from ner.app.exports import FORMATS, export_bytes
from ner.app.highlight import label_colour, render_entities
from ner.app.store import Document
from ner.app.uploads import MAX_TEXT_CHARS, MAX_UPLOAD_BYTES, UploadError, pasted_record, read_upload
from ner.readers import read_conll, read_docbin, read_records
from ner.spans import Record, Span
from ner.writers import record_to_json

TEXT = "Angela Merkel met Tim Cook in Berlin."
TOKENS = [(0, 6), (7, 13), (14, 17), (18, 21), (22, 26), (27, 29), (30, 36), (36, 37)]
REVIEWED = [
    Record(TEXT, [Span(0, 13, "PER", 0.9), Span(18, 26, "ORG", None), Span(30, 36, "LOC", 0.75)], "d1", tokens=TOKENS),
    Record("Paris\nLondon", [Span(0, 5, "LOC", 0.5)], "d2", tokens=[(0, 5), (6, 12)]),
]


# --------------------------------------------------------------------------- in


def test_txt_upload_is_one_document_per_non_empty_line():
    records = read_upload("news.txt", "\ufeffAngela Merkel met Tim Cook.\n\n  Paris  \r\nLondon\n".encode())
    assert [(r.id, r.text) for r in records] == [("news.txt:1", "Angela Merkel met Tim Cook."),
                                                 ("news.txt:3", "Paris"), ("news.txt:4", "London")]


def test_jsonl_upload_keeps_ids_and_entities():
    lines = [{"id": "a", "text": "Tim Cook", "entities": [{"start": 0, "end": 8, "label": "PER", "score": 0.9}]},
             {"text": "   "}, {"text": "Berlin", "source": "web"}]
    records = read_upload("batch.jsonl", "\n".join(json.dumps(line) for line in lines).encode())
    assert [(r.id, r.text, r.spans) for r in records] == [("a", "Tim Cook", [Span(0, 8, "PER")]),
                                                          ("batch.jsonl:3", "Berlin", [])]


@pytest.mark.parametrize("name, data, message", [
    ("big.txt", b"x" * (MAX_UPLOAD_BYTES + 1), "big.txt is 5.0 MB; the demo takes files up to 5 MB"),
    ("bad.jsonl", b'{"text": "fine"}\n{"text": 3}\n', "bad.jsonl, line 2: missing or non-string field 'text'"),
    ("broken.jsonl", b'{"text": "fine"}\n{"text": \n', "broken.jsonl, line 2: invalid JSON"),
    ("latin1.txt", "Straße".encode("latin-1"), "latin1.txt is not UTF-8 text"),
    ("table.csv", b"a,b\n", "table.csv: the demo reads .txt (one document per line) or .jsonl files, not .csv"),
])
def test_uploads_the_demo_cannot_take_are_refused_with_a_reason(name, data, message):
    with pytest.raises(UploadError, match="^" + re.escape(message)):
        read_upload(name, data)


def test_pasted_text_is_stripped_and_capped():
    assert pasted_record("  Tim Cook \n").text == "Tim Cook"
    with pytest.raises(UploadError, match="empty"):
        pasted_record(" \n ")
    with pytest.raises(UploadError, match=f"{MAX_TEXT_CHARS + 1:,} characters; the demo takes up to"):
        pasted_record("x" * (MAX_TEXT_CHARS + 1))


# --------------------------------------------------------------------------- out


def export(tmp_path, format, suffix):
    path = tmp_path / f"export{suffix}"
    path.write_bytes(export_bytes(REVIEWED, format, spacy.blank("en")))
    return path


def test_jsonl_export_is_ner_tags_schema_and_reimports(tmp_path):
    path = export(tmp_path, "jsonl", ".jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [record_to_json(record) for record in REVIEWED]
    assert rows[0]["entities"][1] == {"start": 18, "end": 26, "label": "ORG", "score": None, "text": "Tim Cook"}
    for reread in (list(read_records(path, format="jsonl")), read_upload("export.jsonl", path.read_bytes())):
        assert [(r.id, r.text, r.spans) for r in reread] == [(r.id, r.text, r.spans) for r in REVIEWED]
        assert [s.score for s in reread[0].spans] == [0.9, None, 0.75]


def test_docbin_and_conll_exports_read_back(tmp_path):
    docs = list(read_docbin(export(tmp_path, "docbin", ".spacy"), spacy.blank("en").vocab))
    assert [(d.id, d.text, d.spans) for d in docs] == [(r.id, r.text, r.spans) for r in REVIEWED]
    # CoNLL keeps words and tags only: one record per document, words joined by spaces.
    conll = list(read_conll(export(tmp_path, "conll", ".conll")))
    assert [[(c.text[s.start:s.end], s.label) for s in c.spans] for c in conll] == [
        [("Angela Merkel", "PER"), ("Tim Cook", "ORG"), ("Berlin", "LOC")], [("Paris", "LOC")]]
    assert {f.name for f in FORMATS} == {"jsonl", "docbin", "conll"}


# --------------------------------------------------------------------------- charts and HTML


def document(status, spans):
    return Document(1, "f", 1, "k", TEXT, status, spans, TOKENS, "s", 0)


def test_chart_numbers_leave_rejected_documents_out():
    documents = [document("accepted", REVIEWED[0].spans), document("pending", [Span(0, 5, "LOC", 1.0)]),
                 document("rejected", [Span(0, 5, "MISC", 0.95)])]
    assert charts.label_counts(documents) == {"LOC": 2, "PER": 1, "ORG": 1}
    histogram = charts.score_histogram(documents)
    assert set(histogram) == {"LOC", "PER"}  # the annotator's ORG has no score
    assert histogram["PER"][9] == 1 and histogram["LOC"][7] == 1 and histogram["LOC"][9] == 1  # 1.0 in the last bin
    assert sum(map(sum, histogram.values())) == 3
    assert len(charts.bin_names()) == 10 and charts.bin_names()[9] == "0.9"


def test_entities_are_marked_in_their_colour_and_text_is_escaped():
    text = "<b>Tim</b> & Cook"
    html = render_entities(text, [Span(0, 10, "PER", 0.875), Span(13, 17, "ORG")])
    assert "<b>" not in html and "&lt;b&gt;Tim&lt;/b&gt;" in html and " &amp; " in html
    assert html.count("<mark") == 2 and html.index('data-label="PER"') < html.index('data-label="ORG"')
    assert f"background:{label_colour('PER')}" in html and "0.88" in html
    assert label_colour("PER") == label_colour("PER") and label_colour("PER") != label_colour("LOC")


# --------------------------------------------------------------------------- pipeline options


@Language.component("demo_files_zero_shot_stub")
def zero_shot_stub(doc, labels=(), threshold=0.5):
    return doc


def test_per_call_options_reach_each_kind_of_component():
    nlp = spacy.blank("en")
    nlp.add_pipe("span_ner", name="ner", config={"labels": ["PER", "LOC"], "threshold": 0.4})
    assert (predictions.default_threshold(nlp), predictions.pipeline_labels(nlp)) == (0.4, ["PER", "LOC"])
    assert not predictions.is_zero_shot(nlp)
    assert predictions.tagging_options(nlp, 0.3, ["ignored"]) == {"ner": {"threshold": 0.3}}

    zero_shot = spacy.blank("en")
    zero_shot.add_pipe("demo_files_zero_shot_stub", name="zero_shot")
    assert predictions.is_zero_shot(zero_shot) and predictions.pipeline_labels(zero_shot) == []
    options = predictions.tagging_options(zero_shot, 0.6, predictions.parse_labels("city, drug,, city\nperson"))
    assert options == {"zero_shot": {"threshold": 0.6, "labels": ["city", "drug", "person"]}}
