"""The shipped pipelines load offline through both entry points and find real entities."""
from pathlib import Path

import pytest
import spacy
from spacy.tokens import Doc

import ner
from ner.loading import pipeline_path, shipped_pipelines

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def entities(doc):
    return [(e.text, e.label_) for e in doc.ents]


@pytest.fixture(scope="module")
def en():
    return ner.load("en")


def test_en_is_shipped_small_and_in_safetensors():
    assert "en" in shipped_pipelines()
    weights = PIPELINES / "en" / "ner" / "model.safetensors"
    assert weights.stat().st_size < 30_000_000
    assert not list((PIPELINES / "en").rglob("*.bin")) and not list((PIPELINES / "en").rglob("*.pt"))


def test_en_finds_people_and_places(en):
    doc = en("Angela Merkel met Tim Cook in Berlin.")
    assert entities(doc) == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    assert all(0.5 <= s <= 1.0 for s in doc.spans["ner"].attrs["scores"])


def test_en_organisations_and_misc(en):
    doc = en("Microsoft hired two German engineers from Siemens in Munich.")
    found = entities(doc)
    assert ("Microsoft", "ORG") in found and ("Siemens", "ORG") in found
    assert ("German", "MISC") in found and ("Munich", "LOC") in found


def test_spacy_load_by_path_equals_ner_load(en):
    nlp = spacy.load(pipeline_path("en"))
    text = "The United Nations met in Geneva on Monday."
    assert entities(nlp(text)) == entities(en(text))


def test_en_on_pretokenised_doc(en):
    doc = Doc(en.vocab, words="Barack Obama visited Paris with Apple executives".split())
    for _, component in en.pipeline:
        doc = component(doc)
    assert ("Barack Obama", "PER") in entities(doc) and ("Paris", "LOC") in entities(doc)
