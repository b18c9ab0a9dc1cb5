"""The long-span head (boundary scores) and word blocks: entities of any length, documents
of any length with memory bounded by the block size, entities across block edges whole."""
from dataclasses import replace

import numpy as np
import pytest
import spacy
import torch

from ner.blocks import plan_blocks, predict_in_blocks
from ner.boundary_model import END, INSIDE, START, boundary_targets, build_boundary_model, decode_boundaries

from contract import PipelineContract


class TestLongSpanContract(PipelineContract):
    labels = ["award", "interest"]
    model = {"@architectures": "ner_suite.BoundaryModel.v1", "max_length": 64}
    steps = 150
    examples = [
        ("he received the Turing Award of the Association for Computing Machinery in Paris".split(),
         [(3, 13, "award")]),
        ("her research interests are machine learning and data mining and New York".split(),
         [(4, 12, "interest")]),
    ]


class TestLongSpanNestedContract(TestLongSpanContract):
    decoding = "nested"


class TestLongSpanMeanInsideContract(TestLongSpanContract):
    """The "mean" inside rule trains, saves (in cfg.json's spec) and loads like v1's."""
    decoding = "nested"
    model = {**TestLongSpanContract.model, "inside": "mean"}

    def test_the_rule_is_saved_and_a_v1_pipeline_without_it_loads_as_all(self, tmp_path):
        import json

        nlp, _ = self.build()
        nlp.to_disk(tmp_path / "p")
        assert spacy.load(tmp_path / "p").get_pipe("ner").model.spec.inside == "mean"
        cfg = tmp_path / "p" / "ner" / "cfg.json"
        saved = json.loads(cfg.read_text())
        del saved["spec"]["inside"]  # as written before the option existed
        cfg.write_text(json.dumps(saved))
        config = (tmp_path / "p" / "config.cfg").read_text().replace('inside = "mean"\n', "")
        (tmp_path / "p" / "config.cfg").write_text(config)
        assert spacy.load(tmp_path / "p").get_pipe("ner").model.spec.inside == "all"


class TestLongSpanContextContract(TestLongSpanContract):
    """A boundary head with a BiLSTM over its words trains, saves and loads like v1's."""
    model = {**TestLongSpanContract.model, "context_layers": 1}

    def test_added_context_starts_at_zero_and_skips_padding(self):
        from ner.onnx_export import takes_word_vectors_only

        nlp, ner = TestLongSpanContract().build()  # a head without context layers
        model = ner.model.eval()
        short = "he received the Turing Award".split()
        long = "her research interests are machine learning and data mining in New York and Paris".split()
        before = model.probabilities([short])[0][0]
        assert takes_word_vectors_only(model.head)
        model.head.add_context(1)
        model.spec = ner.spec = replace(model.spec, context_layers=1)
        assert not takes_word_vectors_only(model.head)
        assert np.allclose(model.probabilities([short])[0][0], before, atol=1e-6)  # zero at the start
        torch.nn.init.normal_(model.head.mix.weight, std=0.5)  # as if trained
        alone = model.probabilities([short])[0][0]
        assert not np.allclose(alone, before, atol=1e-3)
        beside_a_longer_one = model.probabilities([long, short])[0][1]
        assert np.allclose(beside_a_longer_one, alone, atol=1e-5)  # the padding is not read


def probs_for(n_words, spans, labels=("A", "B")):
    probs = np.zeros((n_words, 3, len(labels)), dtype=np.float32)
    for start, end, label in spans:
        j = labels.index(label)
        probs[start, START, j] = probs[end - 1, END, j] = 0.9
        probs[start:end, INSIDE, j] = 0.9
    return probs


def test_decodes_a_600_word_entity_and_a_one_word_one():
    probs = probs_for(1000, [(100, 700, "A"), (800, 801, "B")])
    found = decode_boundaries(probs, ["A", "B"], 0.5, max_length=1024)
    assert [(s, e, l) for s, e, l, _ in found] == [(100, 700, "A"), (800, 801, "B")]
    assert found[0][3] == pytest.approx(0.9, abs=1e-5)


def test_a_break_in_the_inside_run_or_max_length_stops_a_span():
    probs = probs_for(50, [(10, 30, "A")])
    probs[20, INSIDE, 0] = 0.1
    assert decode_boundaries(probs, ["A", "B"], 0.5) == []
    assert decode_boundaries(probs_for(50, [(10, 30, "A")]), ["A", "B"], 0.5, max_length=19) == []


def test_a_label_with_its_own_threshold_decodes_its_boundaries_against_it():
    probs = probs_for(50, [(10, 30, "A"), (40, 42, "B")])
    probs[40:42, :, 1] *= 0.4 / 0.9  # B's start, end and inside scores at 0.4
    assert [l for _, _, l, _ in decode_boundaries(probs, ["A", "B"], 0.5)] == ["A"]
    own = np.array([0.5, 0.3], dtype=np.float32)
    assert [(s, e, l) for s, e, l, _ in decode_boundaries(probs, ["A", "B"], own)] == [(10, 30, "A"), (40, 42, "B")]


def test_v1_keeps_its_inside_rule_and_rejects_unknown_rules():
    assert build_boundary_model().inside == "all"
    assert build_boundary_model(inside="mean").inside == "mean"
    with pytest.raises(ValueError, match="inside"):
        build_boundary_model(inside="most")


def test_mean_inside_keeps_a_long_entity_whose_inside_scores_dip():
    probs = probs_for(300, [(50, 250, "A")])
    probs[[60, 61, 100, 150, 151, 152, 200, 240], INSIDE, 0] = 0.2  # 8 of 200 words dip
    assert decode_boundaries(probs, ["A", "B"], 0.5, inside="all") == []
    found = decode_boundaries(probs, ["A", "B"], 0.5, inside="mean")
    assert [(s, e, l) for s, e, l, _ in found] == [(50, 250, "A")]


def test_mean_inside_does_not_pair_a_start_across_outside_words():
    probs = probs_for(80, [(10, 20, "A"), (40, 50, "A")])
    probs[19, END, 0] = 0.1  # the first entity's end is missed: its start would pair with word 49
    for inside in ("all", "mean"):  # mean inside over 10..49 is 20 × 0.9 / 40 = 0.45 < 0.5
        found = decode_boundaries(probs, ["A", "B"], 0.5, decoding="nested", inside=inside)
        assert [(s, e, l) for s, e, l, _ in found] == [(40, 50, "A")]


def test_flat_keeps_the_better_of_overlapping_labels_nested_keeps_both():
    probs = probs_for(20, [(2, 10, "A"), (4, 6, "B")])
    probs[4, START, 1] = probs[5, END, 1] = 0.99
    flat = decode_boundaries(probs, ["A", "B"], 0.5, decoding="flat")
    nested = decode_boundaries(probs, ["A", "B"], 0.5, decoding="nested")
    assert len(flat) == 1
    assert sorted((s, e, l) for s, e, l, _ in nested) == [(2, 10, "A"), (4, 6, "B")]
    assert [(s, e, l) for s, e, l, _ in decode_boundaries(probs, ["A", "B"], 0.5, allowed=["A"])] == [(2, 10, "A")]


def test_targets_mark_start_end_and_inside():
    target = boundary_targets([[(1, 4, "B")]], 6, ["A", "B"])
    assert target[0, :, START, 1].tolist() == [0, 1, 0, 0, 0, 0]
    assert target[0, :, END, 1].tolist() == [0, 0, 0, 1, 0, 0]
    assert target[0, :, INSIDE, 1].tolist() == [0, 1, 1, 1, 0, 0]
    assert target[..., 0].sum() == 0


@pytest.mark.parametrize("n_words", [0, 5, 100, 101, 1000, 1234])
def test_block_cores_tile_the_document(n_words):
    blocks = plan_blocks(n_words, size=100, margin=10)
    covered = [i for b in blocks for i in range(b.keep_start, b.keep_end)]
    assert covered == list(range(n_words))
    assert all(b.end - b.start <= 100 and b.start <= b.keep_start and b.keep_end <= b.end for b in blocks)
    assert all(b.keep_start - b.start >= 10 or b.start == 0 for b in blocks)


def test_blocks_stitch_per_word_scores_exactly_and_bound_each_pass():
    passes = []

    def probabilities(batch):  # a position-local "model": the score of a word is its number
        passes.append(sum(len(w) for w in batch))
        return [np.array([float(w) for w in words]).reshape(-1, 1) for words in batch], [1] * len(batch)

    docs = [[str(i) for i in range(n)] for n in (5000, 3, 250)]
    out, windows, blocks = predict_in_blocks(probabilities, docs, size=200, margin=20, words_per_pass=400)
    for words, array in zip(docs, out):
        assert array[:, 0].tolist() == [float(w) for w in words]
    assert blocks == [len(plan_blocks(5000, 200, 20)), 1, 2]
    assert max(passes) <= 400


def test_a_500_word_entity_across_many_blocks_is_decoded_whole():
    def probabilities(batch):  # a word-local "model": "<" starts, ">" ends, "x" is inside
        out = []
        for words in batch:
            probs = np.zeros((len(words), 3, 1), dtype=np.float32)
            probs[:, START, 0] = [w == "<" for w in words]
            probs[:, END, 0] = [w == ">" for w in words]
            probs[:, INSIDE, 0] = [w in "<x>" for w in words]
            out.append(probs)
        return out, [1] * len(batch)

    words = ["o"] * 3000 + ["<"] + ["x"] * 498 + [">"] + ["o"] * 10
    stitched, _, blocks = predict_in_blocks(probabilities, [words], size=300, margin=20)
    assert blocks[0] > 10  # no block holds the entity: only the stitched array does
    found = decode_boundaries(stitched[0], ["E"], 0.5)
    assert [(s, e) for s, e, _, _ in found] == [(3000, 3500)]


def test_report_decodes_each_record_on_its_labels_nested_for_sener_only(monkeypatch):
    from ner.spans import Record, join_words, word_spans_to_char_spans
    from ner.training import long_span_report as report

    text, tokens = join_words("a b c d e f".split())
    record = Record(text, word_spans_to_char_spans(tokens, [(0, 4, "A"), (1, 2, "B")]), tokens=tokens)
    record.labels = ["A", "B"]  # its dataset does not annotate C
    monkeypatch.setattr(report, "dataset_records", lambda name, limit=None: [record])

    class Model:  # predicts the gold pair (nested) and a C span
        labels = ["A", "B", "C"]

        def eval(self):
            pass

        def predict(self, batch):
            return [probs_for(6, [(0, 4, "A"), (1, 2, "B"), (4, 6, "C")], labels=("A", "B", "C"))], [1], [1]

        def decode(self, probs, threshold, decoding, labels):
            return decode_boundaries(probs, self.labels, threshold, 64, decoding, labels)

    setting = (0.5, None)
    assert report.decode_settings(Model()) == [(t, None) for t in report.THRESHOLDS]
    sener = report.score_settings(Model(), ["sener_long_ner/scholar-xl:test"], [setting])[setting]
    assert sener.micro["f1"] == 1.0 and sener.by_length["4-12"].micro["f1"] == 1.0
    scirex = report.score_settings(Model(), ["scirex:test"], [setting])[setting]  # flat: one of the pair
    assert scirex.micro["precision"] == 1.0 and scirex.micro["recall"] == 0.5


def test_a_one_sentence_document_longer_than_the_budget_is_cut_where_no_entity_crosses():
    """A SeNER page is one "sentence": it must still train in budget-sized segments
    (memory), never cutting an entity."""
    from ner.spans import Record, join_words, word_spans_to_char_spans
    from ner.training.batches import make_segments

    text, tokens = join_words([f"w{i}" for i in range(1000)])
    spans = word_spans_to_char_spans(tokens, [(95, 130, "A"), (500, 501, "B")])
    record = Record(text, spans, tokens=tokens, sentences=[(0, len(text))])
    segments = make_segments(record, lambda word: 1, 100)
    assert sum(len(s.words) for s in segments) == 1000 and max(len(s.words) for s in segments) == 130
    assert [s.spans for s in segments if s.spans] == [[(95, 130, "A")], [(70, 71, "B")]]
