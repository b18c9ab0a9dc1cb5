"""The annotation page, driven through Streamlit's AppTest on a tiny pipeline built here:
tag, correct, undo, accept; restarts; a file one document at a time; refused uploads;
a zero-shot pipeline (a stub) given labels and a threshold per call."""
import re
from pathlib import Path

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Span as SpacySpan
from streamlit.testing.v1 import AppTest

from ner.app.store import Store
from ner.app.uploads import MAX_UPLOAD_BYTES
from ner.extensions import install_extensions

import test_span_ner  # its contract class, imported by module so that pytest does not run it again here

PAGE = str(Path(__file__).parents[1] / "app" / "page.py")
TEXT = "Angela Merkel met Tim Cook in Berlin ."


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """The contract's overfit English pipeline, saved once per test session (the browser
    test uses the same folder)."""
    path = tmp_path_factory.getbasetemp() / "demo-tiny-pipeline"
    if not (path / "config.cfg").exists():
        contract = test_span_ner.TestEnglishContract()
        nlp, ner = contract.build()
        contract.overfit(ner)
        nlp.to_disk(path)
    return path


def open_page(monkeypatch, database, pipeline) -> AppTest:
    monkeypatch.setenv("NER_DEMO_DB", str(database))
    monkeypatch.setenv("NER_DEMO_PIPELINES", str(pipeline))
    return AppTest.from_file(PAGE, default_timeout=60).run()


def marked(at) -> list[tuple[str, str]]:
    """(text, label) of the entities highlighted in the document."""
    [html] = [m.value for m in at.markdown if 'class="ner-document"' in m.value]
    return [(text, label) for label, text in re.findall(r'<mark data-label="([^"]+)"[^>]*>(.*?) <span', html)]


def button(at, label):
    [found] = [b for b in at.button if b.label == label or b.label.startswith(label + " (")]
    return found


def label_box(at, index):
    return next(s for s in at.selectbox if s.key.startswith("label-") and s.key.split("-")[2] == str(index))


def paste(at, text):
    at.text_area[0].input(text)
    return button(at, "Tag this text").click().run()


def no_exception(at):
    assert not at.exception, at.exception[0].value if at.exception else ""
    return at


def test_tag_correct_undo_accept(tiny_pipeline, tmp_path, monkeypatch):
    at = no_exception(open_page(monkeypatch, tmp_path / "db.sqlite", tiny_pipeline))
    assert at.info[0].value == "Paste a text or upload a file to start."
    no_exception(paste(at, TEXT))
    assert marked(at) == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    html = next(m.value for m in at.markdown if 'class="ner-document"' in m.value)
    assert len(re.findall(r'opacity:0.7">0\.\d\d<', html)) == 3  # a score beside each label
    assert button(at, "Undo").disabled

    label_box(at, 1).set_value("ORG").run()  # Tim Cook: PER → ORG
    assert marked(at) == [("Angela Merkel", "PER"), ("Tim Cook", "ORG"), ("Berlin", "LOC")]
    [b for b in at.button if b.key.startswith("delete-") and b.key.split("-")[2] == "2"][0].click().run()
    assert marked(at) == [("Angela Merkel", "PER"), ("Tim Cook", "ORG")]
    at.select_slider[0].set_range(5, 6)  # the words "in Berlin"
    next(s for s in at.selectbox if s.key.startswith("new-label-")).set_value("LOC")
    button(at, "Add entity").click().run()
    assert marked(at) == [("Angela Merkel", "PER"), ("Tim Cook", "ORG"), ("in Berlin", "LOC")]
    assert button(at, "Undo").label == "Undo (add)"
    button(at, "Undo").click().run()
    assert marked(at) == [("Angela Merkel", "PER"), ("Tim Cook", "ORG")]

    no_exception(button(at, "Accept").click().run())
    assert at.success[0].value.startswith("Every document here is reviewed")
    assert "1 of 1 reviewed · 1 accepted" in at.get("progress")[0].proto.text
    [record] = Store(tmp_path / "db.sqlite").reviewed()
    assert [(TEXT[s.start:s.end], s.label, s.score is None) for s in record.spans] == [
        ("Angela Merkel", "PER", False), ("Tim Cook", "ORG", True)]
    assert [b.label for b in at.get("download_button")] == ["JSONL (1)", "spaCy DocBin (1)", "CoNLL (1)"]

    paste(at, TEXT + "\n")  # the same text again
    assert "already reviewed (accepted, in pasted)" in at.warning[0].value


def test_a_reload_or_restart_loses_nothing(tiny_pipeline, tmp_path, monkeypatch):
    at = paste(open_page(monkeypatch, tmp_path / "db.sqlite", tiny_pipeline), TEXT)
    label_box(at, 0).set_value("ORG").run()
    paste(at, "Apple and Google visited Paris .")
    assert "Queued after 1 pasted text(s)" in at.info[0].value

    again = no_exception(open_page(monkeypatch, tmp_path / "db.sqlite", tiny_pipeline))  # a fresh session
    assert marked(again) == [("Angela Merkel", "ORG"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    assert again.subheader[0].value == "Document 1 of 2"
    button(again, "Accept").click().run()
    assert marked(again) == [("Apple", "ORG"), ("Google", "ORG"), ("Paris", "LOC")]
    assert button(again, "Undo").label == "Undo (accept)"


def test_a_file_one_document_at_a_time(tiny_pipeline, tmp_path, monkeypatch):
    at = open_page(monkeypatch, tmp_path / "db.sqlite", tiny_pipeline)
    lines = [TEXT, "Apple and Google visited Paris .", "", TEXT, "the New York Times said Barack Obama visited France"]
    at.file_uploader[0].set_value(("news.txt", "\n".join(lines).encode(), "text/plain")).run()
    no_exception(at)
    assert at.success[0].value == "news.txt: 3 new document(s); 1 already seen, not offered again."
    seen = []
    steps = [("Document 1 of 3", "Accept"), ("Document 2 of 3", "Reject"), ("Document 3 of 3", "Accept")]
    for expected, action in steps:
        assert at.subheader[0].value == expected
        seen.append(marked(at)[0])
        button(at, action).click().run()
    assert seen == [("Angela Merkel", "PER"), ("Apple", "ORG"), ("New York Times", "ORG")]
    assert "3 of 3 reviewed · 2 accepted · 1 rejected" in at.get("progress")[0].proto.text
    assert [r.id for r in Store(tmp_path / "db.sqlite").reviewed("news.txt")] == ["news.txt:1", "news.txt:5"]
    assert len(at.get("vega_lite_chart")) == 2  # label counts and score histogram
    assert at.subheader[-2].value == "This file at a glance"
    assert at.caption[0].value.startswith("3 of 3 document(s) tagged")


@pytest.mark.parametrize("name, data, message", [
    ("huge.txt", b"word " * (MAX_UPLOAD_BYTES // 5 + 1), "the demo takes files up to 5 MB"),
    ("bad.jsonl", b'{"text": "ok"}\nnot json\n', "bad.jsonl, line 2: invalid JSON"),
], ids=["too-large", "bad-jsonl"])
def test_refused_uploads_say_why(tiny_pipeline, tmp_path, monkeypatch, name, data, message):
    at = open_page(monkeypatch, tmp_path / "db.sqlite", tiny_pipeline)
    at.file_uploader[0].set_value((name, data, "text/plain")).run()
    assert message in at.error[0].value
    assert at.info[0].value == "Paste a text or upload a file to start."  # nothing was added


# --------------------------------------------------------------------------- zero-shot

CALLS = []


@Language.component("demo_page_zero_shot_stub")
def zero_shot_stub(doc, labels=(), threshold=0.5):
    """Stands in for the zero-shot component: every capitalised word is an entity of the
    first label asked for, scored 0.8."""
    CALLS.append((list(labels), threshold))
    spans = []
    for token in doc:
        if labels and token.text[:1].isupper() and threshold <= 0.8:
            span = SpacySpan(doc, token.i, token.i + 1, label=labels[0])
            span._.score = 0.8
            spans.append(span)
    doc.ents = spans
    return doc


@pytest.fixture(scope="module")
def zero_shot_pipeline(tmp_path_factory):
    install_extensions()
    nlp = spacy.blank("en")
    nlp.add_pipe("demo_page_zero_shot_stub", name="zero_shot")
    path = tmp_path_factory.mktemp("zero-shot") / "stub"
    nlp.to_disk(path)
    return path


def test_zero_shot_labels_and_threshold_are_passed_per_call(zero_shot_pipeline, tmp_path, monkeypatch):
    at = paste(open_page(monkeypatch, tmp_path / "db.sqlite", zero_shot_pipeline), "Tim visited Berlin")
    assert "type some labels" in at.info[0].value
    CALLS.clear()
    at.text_input(key="zero_shot_labels").input("city, person").run()
    assert CALLS == [(["city", "person"], 0.5)]
    assert marked(at) == [("Tim", "city"), ("Berlin", "city")]

    at.slider[0].set_value(0.85).run()  # above the stub's scores: an untouched document is tagged again
    assert CALLS[-1] == (["city", "person"], 0.85)
    assert marked(at) == []
    at.slider[0].set_value(0.5).run()
    label_box(at, 0).set_value("person").run()
    assert "person" in label_box(at, 1).options
    calls = len(CALLS)
    at.slider[0].set_value(0.85).run()  # a document the annotator touched keeps its spans
    assert marked(at) == [("Tim", "person"), ("Berlin", "city")]
    assert len(CALLS) == calls
