"""The zero-shot training mixture: label names, negative sampling, held-out checks,
deterministic epoch plans, and the recipe's own consistency."""
import random
import tomllib
from pathlib import Path

import pytest

from ner.spans import Record, Span, join_words, word_spans_to_char_spans
from ner.training.zero_shot_data import (
    Example,
    LabelSampler,
    Source,
    carve_dev,
    check_held_out,
    epoch_plan,
    map_record_labels,
    natural_name,
    read_sources,
)
from ner.zero_shot import build_zero_shot_model

from conftest import needs_data

RECIPE = Path(__file__).parent.parent / "training" / "zero-shot.toml"


def open_example(spans, words=None, source="pile:dev"):
    words = words or [f"w{i}" for i in range(12)]
    return Example(words, spans, None, source, key=f"{source}#{spans}")


def mixture():
    rng = random.Random(0)
    types = ["person", "organization", "location", "disease", "software", "date", "persons", "concept", "award"]
    examples = []
    for i in range(60):
        labels = rng.sample(types, 3)
        examples.append(open_example([(0, 1, labels[0]), (2, 4, labels[1]), (5, 6, labels[2])], source="pile:dev"))
    examples += [Example(["Paris", "is", "nice"], [(0, 1, "location")], ["location", "organization", "person"],
                         "conll:train", key=f"conll#{i}") for i in range(20)]
    return examples


def test_natural_names_and_label_maps():
    assert natural_name("  Medical   Condition ") == "medical condition"
    text, tokens = join_words("Angela Merkel visited Paris".split())
    record = Record(text, word_spans_to_char_spans(tokens, [(0, 2, "PER"), (3, 4, "LOC")]), tokens=tokens)
    closed = Source("conll2003_en", "train", labels={"PER": "person"})
    assert [s.label for s in map_record_labels(record, closed)] == ["person"]  # LOC is not mapped: dropped
    record.spans = [Span(0, 6, "Person")]
    assert [s.label for s in map_record_labels(record, Source("gliner_sample", "all"))] == ["person"]


def test_held_out_datasets_cannot_be_trained_on():
    train = read_sources([{"dataset": "wikiann/en", "split": "train"}, {"dataset": "conll2003_en"}])
    check_held_out(train, read_sources([{"dataset": "wnut17", "split": "test"}]))
    with pytest.raises(ValueError, match="wikiann"):
        check_held_out(train, read_sources([{"dataset": "wikiann/es", "split": "test"}]))
    with pytest.raises(ValueError, match="unknown keys"):
        read_sources([{"dataset": "wnut17", "label": {}}])


def test_closed_examples_are_asked_exactly_their_types():
    examples = mixture()
    sampler = LabelSampler(examples)
    rng = random.Random(1)
    closed = examples[-1]
    assert sorted(sampler.labels_for(closed, rng)) == sorted(closed.annotated)


def test_open_examples_get_their_types_and_sampled_negatives():
    examples = mixture()
    sampler = LabelSampler(examples, max_labels=8, min_negatives=3, max_negatives=5)
    rng = random.Random(2)
    for example in examples[:60]:
        labels = sampler.labels_for(example, rng)
        positives = {label for _, _, label in example.spans}
        assert positives <= set(labels) and len(labels) == len(set(labels)) <= 8
        negatives = set(labels) - positives
        assert 3 <= len(negatives) <= 5
        # "persons" is never a negative where "person" is a positive
        assert not ("person" in positives and "persons" in negatives)
    no_negatives = Example(["a"], [(0, 1, "person")], None, "x", negatives=False)
    assert sampler.labels_for(no_negatives, rng) == ["person"]


def test_labels_that_do_not_fit_one_group_drop_negatives_first():
    examples = mixture()
    sampler = LabelSampler(examples, fits=lambda labels: len(labels) <= 4)
    example = examples[0]
    labels = sampler.labels_for(example, random.Random(3))
    assert len(labels) == 4 and {label for _, _, label in example.spans} <= set(labels)


def test_epoch_plan_is_fixed_by_seed_and_epoch():
    examples = mixture()
    sampler = LabelSampler(examples)
    plan = lambda epoch, seed=0, weights=None: [[(i.words, i.spans, i.labels) for i in batch] for batch in
                                                epoch_plan(examples, sampler, weights or {}, 60, seed, epoch)]
    assert plan(1) == plan(1)
    assert plan(1) != plan(2) and plan(1) != plan(1, seed=1)
    assert sum(map(len, plan(1))) == len(examples)
    assert sum(map(len, plan(1, weights={"conll:train": 0.5}))) == 60 + 10
    assert sum(map(len, plan(1, weights={"conll:train": 2}))) == 60 + 40
    for batch in epoch_plan(examples, sampler, {}, 60, 0, 1):
        assert max(len(i.words) + 2 * len(i.labels) for i in batch) * len(batch) <= 60 or len(batch) == 1


def test_dev_carve_is_stable():
    examples = mixture()
    train, dev = carve_dev(examples, 0.2)
    assert 0 < len(dev) < len(examples) and len(train) + len(dev) == len(examples)
    assert [e.key for e in carve_dev(list(reversed(examples)), 0.2)[1]] == [e.key for e in reversed(dev)]


def test_recipe_holds_out_the_required_datasets_and_builds_a_model():
    recipe = tomllib.loads(RECIPE.read_text())
    train, heldout = read_sources(recipe["data"]["train"]), read_sources(recipe["data"]["heldout"])
    check_held_out(train, heldout)
    assert {"wnut17", "ncbi_disease", "tweebank_ner", "conll2002_es"} <= {s.dataset for s in heldout}
    assert {"pile_ner_slimer", "textile_gpt4o_synthetic", "gliner_sample"} <= {s.dataset for s in train}
    spec = build_zero_shot_model(encoder=recipe["encoder"]["name"], **recipe["model"])
    assert recipe["training"]["segment_subwords"] + spec.prompt_subwords + 2 <= spec.window
    assert recipe["training"]["max_labels"] <= spec.labels_per_group


def test_long_segments_are_cut_where_no_entity_crosses():
    from ner.training.batches import Segment
    from ner.training.zero_shot_data import cut_long_segment

    words = [f"w{i}" for i in range(40)]
    spans = [(8, 12, "award"), (30, 31, "date")]
    pieces = cut_long_segment(Segment(words, spans, None), lambda word: 1, budget=10)
    assert [w for ws, _ in pieces for w in ws] == words
    # within the budget, except where it would cut an entity (words 8-12 stay together)
    assert [len(ws) for ws, _ in pieces] == [12, 9, 9, 9, 1]
    rebuilt = []
    offset = 0
    for ws, ss in pieces:
        rebuilt += [(s + offset, e + offset, label) for s, e, label in ss]
        offset += len(ws)
    assert rebuilt == spans
    assert cut_long_segment(Segment(words[:5], [], None), lambda word: 1, budget=10) == [(words[:5], [])]


@needs_data
def test_training_loop_runs_end_to_end_on_a_tiny_encoder(tmp_path):
    """Recipe → mixture → training → best pipeline saved → held-out zero-shot scores,
    with a tiny random encoder saved as a local directory."""
    import json

    import spacy
    import torch

    from conftest import tiny_tokenizer, tiny_transformer
    from ner.training.zero_shot_loop import train

    tokenizer = tiny_tokenizer()
    tiny_transformer(len(tokenizer)).save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")
    recipe = f"""
[pipeline]
name = "zero-shot-tiny"
component = "zero_shot"
lang = "en"
[encoder]
name = "{tmp_path / 'encoder'}"
[model]
max_width = 4
hidden_size = 32
window = 48
stride = 24
labels_per_group = 8
prompt_subwords = 24
[data]
dev_fraction = 0.3
[[data.train]]
dataset = "gliner_sample"
split = "all"
[[data.train]]
dataset = "bc2gm"
split = "train"
labels = {{ GENE = "gene" }}
[[data.heldout]]
dataset = "ncbi_disease"
split = "test"
labels = {{ Disease = "disease" }}
[training]
epochs = 1
segment_subwords = 20
batch_words = 150
max_labels = 8
eval_every = 2
threads = 1
[output]
path = "{tmp_path / 'pipeline'}"
"""
    (tmp_path / "recipe.toml").write_text(recipe)
    threads = torch.get_num_threads()
    try:
        result = train(tmp_path / "recipe.toml", limit=6, log=lambda *args: None)
    finally:
        torch.set_num_threads(threads)
    assert result["evaluations"] and result["best_dev_f1"] >= 0
    report = json.loads((tmp_path / "pipeline" / "zero_shot.json").read_text())
    assert set(report["at_threshold"]["datasets"]) == {"ncbi_disease:test"}
    import ner

    nlp = ner.load(tmp_path / "pipeline")  # its checksums cover training.json and zero_shot.json, written last
    doc = nlp("the BRCA1 gene", component_cfg={"zero_shot": {"labels": ["gene"]}})
    assert {e.label_ for e in doc.ents} <= {"gene"}

    # a second stage goes on from the saved pipeline: its vocabulary, encoder and head
    before = nlp.get_pipe("zero_shot").model.state_dict()
    encoder, first, second = (str(tmp_path / name) for name in ("encoder", "pipeline", "stage2"))
    stage2 = recipe.replace(f'name = "{encoder}"', f'init = "{first}"').replace(f'path = "{first}"', f'path = "{second}"')
    (tmp_path / "stage2.toml").write_text(stage2)
    try:
        train(tmp_path / "stage2.toml", limit=6, log=lambda *args: None)
    finally:
        torch.set_num_threads(threads)
    after = ner.load(tmp_path / "stage2").get_pipe("zero_shot").model.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
