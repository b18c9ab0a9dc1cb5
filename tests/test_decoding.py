import numpy as np

from ner.decoding import decode_flat, decode_nested

LABELS = ["PER", "LOC"]


def probs_with(spans, n_words=6, max_width=4):
    probs = np.zeros((n_words, max_width, len(LABELS)), dtype=np.float32)
    for start, end, label, p in spans:
        probs[start, end - start - 1, LABELS.index(label)] = p
    return probs


def test_flat_keeps_best_of_overlapping_spans():
    probs = probs_with([(0, 2, "PER", 0.9), (1, 3, "LOC", 0.8), (4, 5, "LOC", 0.7)])
    assert [(s, e, l) for s, e, l, _ in decode_flat(probs, LABELS)] == [(0, 2, "PER"), (4, 5, "LOC")]


def test_threshold_drops_weak_spans():
    probs = probs_with([(0, 2, "PER", 0.4)])
    assert decode_flat(probs, LABELS, threshold=0.5) == []
    assert len(decode_flat(probs, LABELS, threshold=0.3)) == 1


def test_nested_keeps_inner_and_outer_but_not_crossing():
    probs = probs_with([(0, 3, "LOC", 0.9), (1, 2, "PER", 0.8), (2, 4, "PER", 0.7)])
    found = [(s, e, l) for s, e, l, _ in decode_nested(probs, LABELS)]
    assert found == [(0, 3, "LOC"), (1, 2, "PER")]


def test_corpus_variants_are_named_after_their_corpus_and_found_by_their_base():
    from ner.decoding import base_labels, corpus_variant, dataset_labels

    labels = ["Disease", "Chemical", corpus_variant("Disease", "ncbi_disease"), "email@work"]
    assert labels[2] == "Disease@ncbi_disease"
    assert base_labels(labels) == {"Disease@ncbi_disease": "Disease"}  # "work" names no label: not a variant
    assert dataset_labels(["Disease"], "ncbi_disease", labels) == ["Disease@ncbi_disease"]
    assert dataset_labels(["Chemical", "Disease"], "bc5cdr", labels) == ["Chemical", "Disease"]
    family = ["PER", "LOC", "PER@wikiann", "LOC@wikiann/de"]
    assert dataset_labels(["PER", "LOC"], "wikiann/de", family) == ["PER@wikiann", "LOC@wikiann/de"]  # its own first
    assert dataset_labels(["PER", "LOC"], "wikiann/nl", family) == ["PER@wikiann", "LOC"]


def test_a_label_with_its_own_threshold_keeps_spans_the_others_would_drop():
    from ner.decoding import label_thresholds

    probs = probs_with([(0, 2, "PER", 0.4), (3, 4, "LOC", 0.4)])
    own = label_thresholds(LABELS, 0.5, {"LOC": 0.3})
    assert list(own) == [0.5, 0.3]
    assert [(s, e, l) for s, e, l, _ in decode_flat(probs, LABELS, own)] == [(3, 4, "LOC")]
    assert label_thresholds(LABELS, 0.5) == 0.5  # no label of its own: one number, as before


def test_the_best_label_is_chosen_among_those_that_pass_their_own_threshold():
    from ner.decoding import label_thresholds

    probs = probs_with([(0, 2, "PER", 0.6), (0, 2, "LOC", 0.55)])
    assert [l for _, _, l, _ in decode_flat(probs, LABELS, 0.5)] == ["PER"]
    found = decode_flat(probs, LABELS, label_thresholds(LABELS, 0.5, {"PER": 0.7}))
    assert [(l, round(score, 2)) for _, _, l, score in found] == [("LOC", 0.55)]


def test_label_thresholds_refuse_unknown_labels_and_negative_thresholds():
    import pytest

    from ner.decoding import label_thresholds

    with pytest.raises(ValueError, match="unknown labels \\['ORG'\\]"):
        label_thresholds(LABELS, 0.5, {"ORG": 0.3})
    with pytest.raises(ValueError, match="LOC: -0.5"):
        label_thresholds(LABELS, 0.5, {"LOC": -0.5})
    with pytest.raises(ValueError, match="threshold: nan"):
        label_thresholds(LABELS, float("nan"))
