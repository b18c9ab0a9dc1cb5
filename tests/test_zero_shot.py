"""The zero_shot component: the contract (overfit a tiny random encoder with labels given
per call, save, load, same spans and scores, F1 = 1), per-call labels in ``nlp`` and
``nlp.pipe``, 120 labels in one call (batched into groups that each fit the window),
long documents, and clear errors."""
import random

import numpy as np
import pytest
import spacy
import torch
from spacy.tokens import Doc

from ner.evaluation import evaluate, predict_docs, record_to_doc
from ner.spans import Record, join_words, word_spans_to_char_spans
from ner.zero_shot import label_groups
from ner.zero_shot_component import set_default_labels

from conftest import tiny_tokenizer, tiny_transformer

LABELS = ["person", "organization", "location"]
EXAMPLES = [
    ("Angela Merkel met Tim Cook in Berlin .".split(), [(0, 2, "person"), (3, 5, "person"), (6, 7, "location")]),
    ("Apple and Google visited Paris .".split(), [(0, 1, "organization"), (2, 3, "organization"), (4, 5, "location")]),
    ("the New York Times said Barack Obama visited France".split(),
     [(1, 4, "organization"), (5, 7, "person"), (8, 9, "location")]),
]
# Words the tiny tokenizer knows besides the examples': label names and filler.
EXTRA_WORDS = ["person", "organization", "location", "disease", "drug", "date", "the", "a", "of", "and", "to"]


def build(storage="fp32", window=48, **model):
    words = [w for ws, _ in EXAMPLES for w in ws] + EXTRA_WORDS
    tokenizer = tiny_tokenizer(words)
    nlp = spacy.blank("en")
    component = nlp.add_pipe("zero_shot", config={
        "storage": storage,
        "model": {"@architectures": "ner_suite.ZeroShotModel.v1", "encoder": "tiny", "hidden_size": 32,
                  "max_width": 6, "window": window, "stride": window // 2, "prompt_subwords": 24, **model},
    })
    component.set_model(tiny_transformer(len(tokenizer)), tokenizer)
    return nlp, component


def overfit(component, steps=60):
    torch.manual_seed(0)
    rng = random.Random(0)
    optimizer = torch.optim.Adam(component.model.parameters(), lr=3e-3)
    component.model.train()
    for _ in range(steps):
        batch = rng.sample(EXAMPLES, len(EXAMPLES))
        # The labels are shuffled per sequence: a label is known by its name, not its place.
        prompts = [rng.sample(LABELS, len(LABELS)) for _ in batch]
        loss = component.model.loss([w for w, _ in batch], [s for _, s in batch], prompts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    component.model.eval()
    return loss.item()


def records():
    out = []
    for words, spans in EXAMPLES:
        text, tokens = join_words(words)
        out.append(Record(text, word_spans_to_char_spans(tokens, spans), tokens=tokens))
    return out


def predict(nlp, labels=LABELS):
    docs = [record_to_doc(nlp.vocab, r) for r in records()]
    return [[(s.start, s.end, s.label_, score) for s, score in zip(d.spans["ner"], d.spans["ner"].attrs["scores"])]
            for d in predict_docs(nlp, docs, labels=labels)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread):
    nlp, component = build()
    loss = overfit(component)
    return nlp, component, loss


def test_contract_overfit_save_load_same_spans(trained, tmp_path):
    nlp, component, loss = trained
    assert loss < 0.05
    before = predict(nlp)
    assert [[x[:3] for x in doc] for doc in before] == [sorted(spans) for _, spans in EXAMPLES]
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.pipe_names == ["zero_shot"]
    after = predict(loaded)
    for doc_before, doc_after in zip(before, after):
        assert [x[:3] for x in doc_before] == [x[:3] for x in doc_after]
        assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(doc_before, doc_after))
    assert evaluate(loaded, records(), labels=LABELS).micro["f1"] == 1.0


def test_int8_storage_keeps_spans(trained, tmp_path):
    nlp, component, _ = trained
    component.cfg["storage"] = "int8"
    try:
        nlp.to_disk(tmp_path / "int8")
    finally:
        component.cfg["storage"] = "fp32"
    loaded = spacy.load(tmp_path / "int8")
    assert [[x[:3] for x in doc] for doc in predict(loaded)] == [sorted(spans) for _, spans in EXAMPLES]


def test_labels_per_call_in_nlp_and_pipe(trained):
    nlp, _, _ = trained
    text = "Angela Merkel met Tim Cook in Berlin ."
    doc = nlp(text, component_cfg={"zero_shot": {"labels": ["person", "location"], "threshold": 0.5}})
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "person"), ("Tim Cook", "person"),
                                                       ("Berlin", "location")]
    assert [e._.score for e in doc.ents] == doc.spans["ner"].attrs["scores"]
    only = nlp(text, component_cfg={"zero_shot": {"labels": ["location"]}})
    assert [(e.text, e.label_) for e in only.ents] == [("Berlin", "location")]
    texts = ["Apple and Google visited Paris .", text, "", "Paris"] * 3
    cfg = {"zero_shot": {"labels": LABELS}}
    piped = [[(e.text, e.label_) for e in d.ents] for d in nlp.pipe(texts, batch_size=3, component_cfg=cfg)]
    single = [[(e.text, e.label_) for e in nlp(t, component_cfg=cfg).ents] for t in texts]
    assert piped == single and piped[2] == []
    none = nlp(text, component_cfg={"zero_shot": {"labels": LABELS, "threshold": 1.01}})
    assert list(none.ents) == []


def test_ents_carry_the_exact_strings_asked(trained):
    nlp, _, _ = trained
    text = "Angela Merkel met Tim Cook in Berlin ."
    cased = nlp(text, component_cfg={"zero_shot": {"labels": ["Person", "LOCATION"]}})
    assert {e.label_ for e in cased.ents} == {"Person", "LOCATION"}  # prompts are lower-cased, labels kept
    described = nlp(text, component_cfg={"zero_shot": {"labels": {"PER": "person", "LOC": "location"}}})
    assert [(e.text, e.label_) for e in described.ents] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"),
                                                             ("Berlin", "LOC")]
    assert {e.label_ for e in nlp(text, component_cfg={"zero_shot": {"labels": "person, location"}}).ents} == {
        "person", "location"}
    assert {e.label_ for e in nlp(text, component_cfg={"zero_shot": {"labels": "PER=person,LOC=location"}}).ents} == {
        "PER", "LOC"}


def test_default_labels_from_config_and_clear_error(trained):
    nlp, component, _ = trained
    with pytest.raises(ValueError, match="needs labels"):
        nlp("Angela Merkel met Tim Cook in Berlin .")
    component.cfg["labels"] = ["person"]
    try:
        doc = nlp("Angela Merkel met Tim Cook in Berlin .")
    finally:
        component.cfg["labels"] = []
    assert {e.label_ for e in doc.ents} == {"person"}
    with pytest.raises(ValueError, match="non-empty"):
        nlp("Paris", component_cfg={"zero_shot": {"labels": ["person", ""]}})


def test_set_default_labels_is_what_ner_tag_labels_uses(trained):
    nlp, component, _ = trained
    assert set_default_labels(nlp, {"PER": "person", "LOC": "location"}) == 1
    try:
        doc = nlp("Angela Merkel met Tim Cook in Berlin .")
        assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
        set_default_labels(nlp, "person,location")
        assert {e.label_ for e in nlp("Angela Merkel met Tim Cook in Berlin .").ents} == {"person", "location"}
    finally:
        component.cfg["labels"] = []


def test_pretokenised_doc(trained):
    nlp, component, _ = trained
    doc = Doc(nlp.vocab, words="Apple and Google visited Paris .".split())
    doc = component(doc, labels=LABELS)
    assert [(e.start, e.end, e.label_) for e in doc.ents] == [(0, 1, "organization"), (2, 3, "organization"),
                                                               (4, 5, "location")]


def test_120_labels_are_batched_into_groups_that_fit(trained):
    nlp, component, _ = trained
    model = component.model
    many = LABELS + [f"type{i}" for i in range(117)]
    groups = model.label_groups(many)
    assert len(groups) > 1 and [label for group in groups for label in group] == many
    # Each group's prompt fits the prompt budget, and 120 labels at once would not fit the
    # 48-subword window: without groups the call could not run.
    assert all(1 + sum(1 + model.encoder.label_pieces(l) for l in group) <= model.spec.prompt_subwords for group in groups)
    assert 1 + sum(1 + model.encoder.label_pieces(l) for l in many) > model.spec.window
    words = [w for w, _ in EXAMPLES]
    with torch.inference_mode():
        together, _ = model.probabilities(words, many)
        by_group = [model.probabilities(words, group)[0] for group in groups]
    for i in range(len(words)):
        assert together[i].shape == (len(words[i]), model.spec.max_width, 120)
        np.testing.assert_allclose(together[i], np.concatenate([g[i] for g in by_group], axis=-1), atol=1e-5)
    doc = nlp("Angela Merkel met Tim Cook in Berlin .", component_cfg={"zero_shot": {"labels": many}})
    assert {e.label_ for e in doc.ents} <= set(many)


def test_one_label_per_group_scores_a_label_as_if_asked_alone(trained):
    _, component, _ = trained
    model = component.model
    many = LABELS + [f"type{i}" for i in range(117)]
    words = [w for w, _ in EXAMPLES]
    saved = model.spec.labels_per_group
    model.spec.labels_per_group = 1
    try:
        with torch.inference_mode():
            together, _ = model.probabilities(words, many)
            alone = model.probabilities(words, ["location"])[0]
    finally:
        model.spec.labels_per_group = saved
    for i in range(len(words)):
        np.testing.assert_allclose(together[i][..., 2], alone[i][..., 0], atol=1e-5)


def test_long_document_is_windowed_with_the_prompt_in_every_window(trained, monkeypatch):
    nlp, component, _ = trained
    encoder = component.model.encoder
    rows_seen = []
    encode_rows = encoder._encode_rows
    monkeypatch.setattr(encoder, "_encode_rows", lambda rows, *a: rows_seen.extend(rows) or encode_rows(rows, *a))
    words = ("the a of and to " * 40).split() + "Angela Merkel met Tim Cook in Berlin .".split()
    doc = nlp(" ".join(words), component_cfg={"zero_shot": {"labels": LABELS}})
    assert doc._.ner_windows["windows"] == len(rows_seen) > 5
    prompt, _ = encoder.prompt(LABELS)
    assert all(row[1 : 1 + len(prompt)] == prompt and len(row) <= encoder.window for row in rows_seen)
    assert ("Berlin", "location") in [(e.text, e.label_) for e in doc.ents]


def test_label_groups_respect_count_and_subwords():
    pieces = {"a": 1, "bb": 2, "long label": 5}.get
    assert label_groups(["a"] * 5, pieces, per_group=2, prompt_subwords=100) == [["a", "a"], ["a", "a"], ["a"]]
    # prompt = separator + (marker + pieces) per label
    assert label_groups(["bb", "bb", "a", "long label"], pieces, per_group=25, prompt_subwords=8) == [
        ["bb", "bb"], ["a"], ["long label"]]
    assert label_groups(["bb", "bb", "a", "long label"], pieces, per_group=25, prompt_subwords=9) == [
        ["bb", "bb", "a"], ["long label"]]
    with pytest.raises(ValueError, match="long label"):
        label_groups(["long label"], pieces, per_group=25, prompt_subwords=6)


def test_markerv0_span_representation_with_lstm_trains():
    nlp, component = build(span_representation="markerV0", rnn_layers=1, score_bias=False)
    assert overfit(component, steps=5) > 0
    doc = nlp("Angela Merkel met Tim Cook in Berlin .", component_cfg={"zero_shot": {"labels": LABELS, "threshold": 0.0}})
    assert len(doc.spans["ner"]) > 0


def test_ner_evaluate_and_tag_ask_a_zero_shot_pipeline_for_label_prompt_pairs(trained, tmp_path, capsys):
    import json

    from ner.cli import main, parse_labels

    assert parse_labels("drug, disease") == ["drug", "disease"]
    assert parse_labels("PER=person,LOC=location") == {"PER": "person", "LOC": "location"}
    nlp, _, _ = trained
    nlp.to_disk(tmp_path / "pipeline")
    data = tmp_path / "gold.conll"
    data.write_text("".join(f"{w} {t}\n" for w, t in zip("Angela Merkel met Tim Cook in Berlin .".split(),
                                                         ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC", "O"])))
    assert main(["evaluate", str(tmp_path / "pipeline"), str(data), "--labels", "PER=person,LOC=location",
                 "--json", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["micro"]["f1"] == 1.0
    source = tmp_path / "in.txt"
    source.write_text("Angela Merkel met Tim Cook in Berlin .\n")
    assert main(["tag", str(source), "-o", str(tmp_path / "out.jsonl"), "--pipeline", str(tmp_path / "pipeline"),
                 "--labels", "PER=person,LOC=location"]) == 0
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert [(e["text"], e["label"]) for e in row["entities"]] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
