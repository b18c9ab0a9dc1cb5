"""The span_ner component: the contract, plain-text and pre-tokenised use, batching,
scores, per-call options and clear errors."""
import pytest
import spacy
from spacy.tokens import Doc

from contract import PipelineContract


class TestEnglishContract(PipelineContract):
    labels = ["PER", "ORG", "LOC"]
    examples = [
        ("Angela Merkel met Tim Cook in Berlin .".split(), [(0, 2, "PER"), (3, 5, "PER"), (6, 7, "LOC")]),
        ("Apple and Google visited Paris .".split(), [(0, 1, "ORG"), (2, 3, "ORG"), (4, 5, "LOC")]),
        ("the New York Times said Barack Obama visited France".split(), [(1, 4, "ORG"), (5, 7, "PER"), (8, 9, "LOC")]),
    ]


class TestInt8StorageContract(TestEnglishContract):
    storage = "int8"


class TestNestedContract(PipelineContract):
    labels = ["ORG", "LOC"]
    decoding = "nested"
    examples = [("the New York Times said".split(), [(1, 4, "ORG"), (1, 3, "LOC")])]

    def test_overfit_save_load_same_spans_score(self, tmp_path):
        nlp, ner = self.build()
        self.overfit(ner)
        doc = Doc(nlp.vocab, words=self.examples[0][0])
        for _, proc in nlp.pipeline:
            doc = proc(doc)
        assert sorted((s.start, s.end, s.label_) for s in doc.spans["ner"]) == [(1, 3, "LOC"), (1, 4, "ORG")]
        assert [(e.start, e.end) for e in doc.ents] == [(1, 4)]


@pytest.fixture(scope="module")
def trained():
    contract = TestEnglishContract()
    nlp, ner = contract.build()
    contract.overfit(ner)
    return nlp


def test_plain_text_and_scores(trained):
    doc = trained("Angela Merkel met Tim Cook in Berlin .")
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    scores = doc.spans["ner"].attrs["scores"]
    assert len(scores) == 3 and all(0.5 <= s <= 1 for s in scores)
    assert [e._.score for e in doc.ents] == scores
    assert doc._.ner_windows["windows"] == 1


def test_whitespace_tokens_are_skipped(trained):
    doc = trained("Angela  Merkel met Tim Cook in\n\nBerlin .")
    assert "Berlin" in [e.text for e in doc.ents]


def test_pipe_keeps_order_and_matches_single_calls(trained):
    texts = ["Apple and Google visited Paris .", "Angela Merkel met Tim Cook in Berlin .", "", "Paris"] * 5
    piped = [[(e.text, e.label_) for e in doc.ents] for doc in trained.pipe(texts, batch_size=3)]
    single = [[(e.text, e.label_) for e in trained(t).ents] for t in texts]
    assert piped == single
    assert piped[2] == []


def test_per_call_threshold(trained):
    doc = trained("Angela Merkel met Tim Cook in Berlin .", component_cfg={"ner": {"threshold": 1.01}})
    assert list(doc.ents) == []


def test_long_document_is_windowed_not_truncated(trained):
    words = ("the a of and to " * 40).split() + "Angela Merkel met Tim Cook in Berlin .".split()
    doc = trained(" ".join(words))
    assert doc._.ner_windows["windows"] > 10
    assert ("Berlin", "LOC") in [(e.text, e.label_) for e in doc.ents]


def test_missing_weights_name_the_file(trained, tmp_path):
    trained.to_disk(tmp_path / "p")
    (tmp_path / "p" / "ner" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        spacy.load(tmp_path / "p")
    (tmp_path / "p" / "ner" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        spacy.load(tmp_path / "p")
