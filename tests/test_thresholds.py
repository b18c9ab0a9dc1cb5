"""Per-label decoding thresholds: chosen on dev, saved with the pipeline, used by a load."""
import json

import numpy as np
import pytest
import spacy

from ner.decoding import DECODERS, keep_labels
from ner.loading import verify_checksums
from ner.training.thresholds import DevPredictions, choose_thresholds, write_thresholds

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ["PER", "LOC"]


class StoredModel:
    """Probabilities given in advance, decoded as a span model decodes them."""

    labels = LABELS

    def __init__(self, probs):
        self.by_words = probs

    def eval(self):
        pass

    def predict(self, batch):
        return [self.by_words[tuple(words)] for words in batch], None, None

    def decode(self, probs, threshold, decoding="flat", labels=None):
        return DECODERS[decoding](keep_labels(probs, self.labels, labels), self.labels, threshold)


def sentence(n, spans):
    probs = np.zeros((3, 2, len(LABELS)), dtype=np.float32)
    for start, end, label, p in spans:
        probs[start, end - start - 1, LABELS.index(label)] = p
    return tuple(f"w{n}_{i}" for i in range(3)), probs


def test_each_label_gets_the_threshold_dev_prefers_for_it():
    # PER: right at 0.6, wrong at 0.45. LOC: right at 0.25, wrong at 0.15.
    items, probs = [], {}
    for n, (spans, gold) in enumerate([
        ([(0, 1, "PER", 0.6), (2, 3, "PER", 0.45)], [(0, 1, "PER")]),
        ([(0, 1, "LOC", 0.25), (1, 2, "LOC", 0.15)], [(0, 1, "LOC")]),
        ([(0, 1, "PER", 0.7), (1, 3, "LOC", 0.3)], [(0, 1, "PER"), (1, 3, "LOC")]),
    ]):
        words, p = sentence(n, spans)
        probs[words] = p
        items.append((list(words), gold, None))
    dev = DevPredictions(StoredModel(probs), items)
    threshold, own, f1 = choose_thresholds(dev, LABELS, grid=(0.1, 0.2, 0.3, 0.4, 0.5), log=lambda _: None)
    assert threshold == 0.2  # one number: 4 right, 1 wrong (PER at 0.45)
    assert own == {"PER": 0.5}  # PER alone raised: the wrong PER goes, every right span stays
    assert f1 == pytest.approx(1.0)
    single, none, single_f1 = choose_thresholds(dev, LABELS, grid=(0.1, 0.2, 0.3, 0.4, 0.5), per_label=False,
                                                log=lambda _: None)
    assert (single, none) == (0.2, {}) and single_f1 < f1


def test_a_label_only_some_records_can_predict_is_tuned_on_those(tmp_path):
    words, p = sentence(0, [(0, 1, "PER", 0.45)])
    dev = DevPredictions(StoredModel({words: p}), [(list(words), [(0, 1, "PER")], ["LOC"])])
    assert dev.users("PER") == [] and dev.users("LOC") == [0]


def test_written_thresholds_are_what_the_loaded_pipeline_decodes_with(pipeline_dir, tmp_path):
    out = tmp_path / "tuned"
    write_thresholds(pipeline_dir, out, "ner", 0.4, {"LOC": 0.2})
    assert json.loads((out / "ner" / "cfg.json").read_text())["label_thresholds"] == {"LOC": 0.2}
    assert verify_checksums(out)
    assert (out / "ner" / "model.safetensors").read_bytes() == (pipeline_dir / "ner" / "model.safetensors").read_bytes()
    component = spacy.load(out).get_pipe("ner")
    assert component.cfg["threshold"] == 0.4
    expected = [0.2 if label == "LOC" else 0.4 for label in component.model.labels]
    assert list(component.thresholds()) == pytest.approx(expected)
    assert spacy.load(pipeline_dir).get_pipe("ner").thresholds() == 0.5  # the original is untouched


def test_a_call_threshold_overrides_every_label_threshold(pipeline_dir, tmp_path):
    out = tmp_path / "tuned"
    write_thresholds(pipeline_dir, out, "ner", 0.99, {"LOC": 0.99})
    nlp = spacy.load(out)
    text = "Angela Merkel met Tim Cook in Berlin ."
    assert list(nlp(text).spans["ner"]) == []  # an untrained model scores nothing at 0.99
    low = nlp(text, component_cfg={"ner": {"threshold": 0.01}})
    assert len(low.spans["ner"]) > 0
    assert all(span._.score >= 0.01 for span in low.spans["ner"])
