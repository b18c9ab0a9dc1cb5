"""The span training loop's recipe options on a tiny random encoder: train-set slices,
going on from a trained pipeline, a frozen embedding table, and a job packed to train
where spaCy is absent (a lent GPU machine) coming back as the same pipeline."""
import json

import pytest
import spacy
import torch

from conftest import needs_data, tiny_tokenizer, tiny_transformer
from ner.training.loop import load_split, make_optimizer, train

pytestmark = [needs_data, pytest.mark.usefixtures("one_thread")]

EMBEDDINGS = "encoder.transformer.embeddings.word_embeddings.weight"


def write_recipe(tmp_path, name="tiny", *, encoder=None, init=None, training="", output=None) -> str:
    encoder_section = f'init = "{init}"' if init else f'name = "{encoder}"'
    recipe = f"""
[pipeline]
name = "{name}"
lang = "en"
labels = ["PER", "ORG", "LOC", "MISC"]
[data]
train = ["conll2003_en:train:2-8"]
dev = ["conll2003_en:dev:3"]
test = ["conll2003_en:test:3"]
[encoder]
{encoder_section}
[model]
max_width = 4
hidden_size = 32
window = 48
stride = 24
[training]
epochs = 1
segment_subwords = 40
batch_words = 200
{training}
[output]
path = "{output or tmp_path / name}"
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(recipe)
    return path


@pytest.fixture
def tiny_encoder_dir(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_transformer(len(tokenizer)).save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")
    return tmp_path / "encoder"


def test_a_train_split_slice_takes_records_a_to_b():
    whole = load_split(["conll2003_en:train:8"])
    assert [r.text for r in load_split(["conll2003_en:train:2-8"])] == [r.text for r in whole[2:8]]
    assert [r.text for r in load_split(["conll2003_en:train:2-8"], limit=3)] == [r.text for r in whole[2:5]]


def test_sentences_per_record_joins_only_the_datasets_it_names():
    singles = load_split(["conll2002_es:train:5"])
    grouped = load_split(["conll2002_es:train:5", "wnut17:train:2"], sentences_per_record={"conll2002_es": 2})
    assert [len(r.sentences) for r in grouped] == [2, 2, 1, 1, 1]  # 5 Spanish sentences in 3 records, 2 tweets alone
    assert [w for r in grouped[:3] for w in r.words] == [w for r in singles for w in r.words]
    assert sum(len(r.spans) for r in grouped[:3]) == sum(len(r.spans) for r in singles)
    assert grouped[0].labels == singles[0].labels == ["PER", "ORG", "LOC", "MISC"]


def test_select_trains_part_of_a_free_form_corpus_on_chosen_types():
    label_map = {"software": "product", "device": "product", "film": "creative-work", "video game": "creative-work"}
    wanted = ["product", "creative-work"]
    every = load_split(["pile_ner_slimer:dev:300"], label_map, select={"pile_ner_slimer": {"labels": wanted}})
    named = load_split(["pile_ner_slimer:dev:300"], label_map, select={"pile_ner_slimer": {
        "labels": wanted, "named_only": True, "with_entities": True}})
    assert len(every) == 300 and 0 < len(named) < 300
    assert all(r.labels == wanted and r.spans for r in named)
    mentions = [r.text[s.start:s.end] for r in every for s in r.spans]
    kept = [r.text[s.start:s.end] for r in named for s in r.spans]
    assert {s.label for r in every for s in r.spans} <= set(wanted)
    looks_named = lambda m: any(c.isupper() or c.isdigit() for c in m)  # noqa: E731
    assert all(looks_named(m) for m in kept) and not all(looks_named(m) for m in mentions)


def test_a_corpus_label_map_renames_its_types_alone():
    select = {"wikineural/en": {"label_map": {"PER": "person", "LOC": "location"}, "labels": ["person", "location"]}}
    both = load_split(["wikineural/en:val:200", "conll2003_en:train:50"], select=select)
    wiki, news = both[:200], both[200:]
    assert {s.label for r in wiki for s in r.spans} == {"person", "location"}  # ORG and MISC dropped, masked
    assert all(r.labels == ["person", "location"] for r in wiki)
    assert {s.label for r in news for s in r.spans} == {"PER", "ORG", "LOC", "MISC"}  # another corpus keeps its PER
    renamed = load_split(["wikineural/en:val:200"], {"PER": "Person"}, select={"wikineural/en": {"label_map": {"Person": "person"}}})
    assert "person" in renamed[0].labels and "PER" not in renamed[0].labels  # the recipe's map, then the corpus's


def test_a_recipe_from_init_changes_the_windows_only():
    from ner.training.loop import window_settings

    recipe = {"encoder": {"init": "pipelines/en"}, "model": {"window": 512, "stride": 256, "max_width": 8}}
    assert window_settings(recipe) == {"window": 512, "stride": 256}
    assert window_settings({"encoder": {"name": "e5-small"}, "model": {"window": 512}}) == {}


def test_a_soup_averages_floating_weights_and_refuses_other_shapes():
    import torch

    from ner.training.soup import average_state

    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "steps": torch.tensor(9)}
    mean = average_state([a, b], [1.0, 1.0])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and mean["steps"].item() == 3
    assert torch.allclose(average_state([a, b], [3.0, 1.0])["w"], torch.tensor([1.5, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        average_state([a, {"w": torch.zeros(3), "steps": torch.tensor(1)}], [1.0, 1.0])
    with pytest.raises(ValueError, match="different weights"):
        average_state([a, {"w": torch.zeros(2)}], [1.0, 1.0])


def test_frozen_embeddings_are_left_out_of_the_optimiser(tiny_encoder_parts):
    from ner.encoders import WordEncoder
    from ner.span_model import SpanModelSpec

    transformer, tokenizer = tiny_encoder_parts
    model = SpanModelSpec(max_width=3, hidden_size=16).build(WordEncoder(transformer, tokenizer, 32, 16), ["PER"])
    optimizer, _ = make_optimizer(model, {"freeze_embeddings": True}, total_steps=4)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(transformer.get_input_embeddings().weight) not in trained
    assert id(transformer.encoder.layer[0].attention.self.query.weight) in trained


def test_training_goes_on_from_a_trained_pipeline_with_its_vocabulary(tmp_path, tiny_encoder_dir):
    first = train(write_recipe(tmp_path, "first", encoder=tiny_encoder_dir), log=lambda *a: None)
    before = spacy.load(first["output"]).get_pipe("ner").model.state_dict()
    second = train(write_recipe(tmp_path, "second", init=first["output"],
                                training="freeze_embeddings = true\nlearning_rate = 1e-2"), log=lambda *a: None)
    after = spacy.load(second["output"]).get_pipe("ner").model.state_dict()
    assert torch.equal(before[EMBEDDINGS], after[EMBEDDINGS])  # frozen, and the same vocabulary
    changed = [k for k in before if k != EMBEDDINGS and before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed  # the body and head did train
    wider = write_recipe(tmp_path, "wider", init=first["output"])
    wider.write_text(wider.read_text().replace("window = 48\nstride = 24", "window = 64\nstride = 32"))
    encoder = spacy.load(train(wider, log=lambda *a: None)["output"]).get_pipe("ner").model.encoder
    assert (encoder.window, encoder.stride) == (64, 32)  # trained and saved with the recipe's windows
    stored = write_recipe(tmp_path, "stored", init=first["output"])
    stored.write_text(stored.read_text() + 'storage = "int8"\n')
    assert spacy.load(train(stored, log=lambda *a: None)["output"]).get_pipe("ner").cfg["storage"] == "int8"
    from ner.training.thresholds import write_thresholds

    write_thresholds(first["output"], tmp_path / "tuned", "ner", 0.5, {"PER": 0.9})
    again = train(write_recipe(tmp_path, "again", init=str(tmp_path / "tuned")), log=lambda *a: None)
    assert spacy.load(again["output"]).get_pipe("ner").cfg["label_thresholds"] == {}  # chosen afresh, not inherited
    with pytest.raises(ValueError, match="labels"):
        recipe = write_recipe(tmp_path, "third", init=first["output"])
        recipe.write_text(recipe.read_text().replace('"MISC"]', '"MISC", "DATE"]'))
        train(recipe, log=lambda *a: None)


def test_a_corpus_variant_is_taught_by_its_corpus_alone_and_decodes_under_its_base_name(tmp_path, tiny_encoder_dir):
    """A trained pipeline grows ``LOC@wikiann/en``: WikiANN's LOC, from LOC's classifier
    row; the recipe's other corpora keep teaching LOC, WikiANN only its variant."""
    from ner.cli import _evaluation_labels

    variant = "LOC@wikiann/en"
    records = load_split(["wikiann/en:train:5", "conll2003_en:train:3"], select={"wikiann/en": {"variant": True}})
    wikiann, conll = records[:5], records[5:]
    assert all(r.labels == ["PER@wikiann/en", "ORG@wikiann/en", variant] for r in wikiann)
    assert {s.label for r in wikiann for s in r.spans} <= set(wikiann[0].labels) and any(r.spans for r in wikiann)
    assert conll[0].labels == ["PER", "ORG", "LOC", "MISC"]
    family = load_split(["wikiann/de:train:3"], select={"wikiann/de": {"variant": "wikiann"}})
    assert family[0].labels == ["PER@wikiann", "ORG@wikiann", "LOC@wikiann"]  # one variant for every language

    first = train(write_recipe(tmp_path, "first", encoder=tiny_encoder_dir), log=lambda *a: None)
    recipe = write_recipe(tmp_path, "grown", init=first["output"], training="learning_rate = 1e-9\nhead_learning_rate = 1e-9")
    recipe.write_text(recipe.read_text()
                      .replace('"MISC"]', f'"MISC", "{variant}"]')
                      .replace('train = ["conll2003_en:train:2-8"]', 'train = ["conll2003_en:train:2-8", "wikiann/en:train:4"]')
                      + '[data.select."wikiann/en"]\nvariant = true\n')
    grown = spacy.load(train(recipe, log=lambda *a: None)["output"])
    ner = grown.get_pipe("ner")
    assert ner.labels == ("PER", "ORG", "LOC", "MISC", variant) and ner.model.labels == list(ner.labels)
    weight = ner.model.head.classify[-1].weight
    assert weight.shape[0] == 5 and torch.allclose(weight[4], weight[2], atol=1e-6)  # started from LOC, barely moved
    # decoded as LOC, and only when asked for
    words = "Angela Merkel met Tim Cook in Berlin .".split()
    ner.cfg["threshold"] = 0.0  # every span passes: which labels may come out is what is under test
    doc = ner(grown.make_doc(" ".join(words)))
    assert doc.spans["ner"] and not any("@" in s.label_ for s in doc.spans["ner"])
    asked = list(ner.pipe([grown.make_doc(" ".join(words))], labels=[variant]))[0]
    assert asked.spans["ner"] and {s.label_ for s in asked.spans["ner"]} == {"LOC"}
    # `ner evaluate` decodes WikiANN's LOC with WikiANN's variant, CoNLL's with the base label
    args = type("Args", (), {"labels": None})()
    assert _evaluation_labels(grown, "wikiann/en:test", args) == ["PER", "ORG", variant]
    assert _evaluation_labels(grown, "conll2003_en:test", args) == ["PER", "ORG", "LOC", "MISC"]
    with pytest.raises(ValueError, match="corpus variants"):
        recipe.write_text(recipe.read_text().replace(f'"{variant}"', '"DATE@wikiann/en"'))
        train(recipe, log=lambda *a: None)


def test_a_packed_job_trains_without_spacy_and_unpacks_to_the_pipeline_it_scored(tmp_path, tiny_encoder_dir):
    from ner.evaluation import threshold_scores
    from ner.training.loop import load_split
    from ner.training.packed import pack, run, unpack

    recipe = write_recipe(tmp_path, "packed", encoder=tiny_encoder_dir, training='learning_rate = 1e-3')
    job = pack(recipe, tmp_path / "jobs" / "packed", log=lambda *a: None)
    assert len(list((tmp_path / "jobs").glob("body-*.safetensors"))) == 1  # shared by jobs of one encoder
    result = run(job, tmp_path / "result", device="cpu", epochs=2, log=lambda *a: None)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert set(result["test"]) == {"conll2003_en:test:3"}
    pipeline = unpack(job, tmp_path / "result", tmp_path / "pipeline", log=lambda *a: None)
    nlp = spacy.load(pipeline)
    component = nlp.get_pipe("ner")
    assert component.cfg["threshold"] == result["threshold"]
    test = load_split(["conll2003_en:test:3"])
    scores = threshold_scores(component, test, [result["threshold"]])[result["threshold"]]
    assert scores.micro["f1"] == pytest.approx(result["test"]["conll2003_en:test:3"]["f1"])
    assert json.loads((pipeline / "training.json").read_text())["packed_run"]["device"] == "cpu"


def test_keep_layers_takes_the_named_layers_in_order():
    from ner.training.knowledge_distillation import keep_layers

    transformer = tiny_transformer(12, layers=3)
    layers = list(transformer.encoder.layer)
    keep_layers(transformer, [0, 2])
    assert list(transformer.encoder.layer) == [layers[0], layers[2]] and transformer.config.num_hidden_layers == 2
    keep_layers(transformer, 1)
    assert list(transformer.encoder.layer) == [layers[0]]
    with pytest.raises(ValueError, match="layers"):
        keep_layers(transformer, [3])


def test_a_student_distils_the_teacher_with_fewer_layers(tmp_path):
    import copy

    from ner.training.batches import Segment
    from ner.training.knowledge_distillation import attach_teacher_targets, distillation_loss

    tokenizer = tiny_tokenizer()
    tiny_transformer(len(tokenizer), layers=2).save_pretrained(tmp_path / "encoder2")
    tokenizer.save_pretrained(tmp_path / "encoder2")
    teacher_run = train(write_recipe(tmp_path, "teacher", encoder=tmp_path / "encoder2"), log=lambda *a: None)
    teacher = spacy.load(teacher_run["output"]).get_pipe("ner").model

    # the teacher's targets are its own probabilities; a student that is the teacher has no hidden loss
    segments = [Segment(["Angela", "Merkel", "met", "Tim", "Cook", "in", "Berlin", "."], [(0, 2, "PER")], None),
                Segment(["Paris", "and", "London"], [], [])]
    attach_teacher_targets(teacher, segments, with_vectors=True, log=lambda *a: None)
    probs, _ = teacher.probabilities([s.words for s in segments])
    assert all(abs(s.teacher_probs.astype("float32") - p).max() < 2e-3 for s, p in zip(segments, probs))
    assert distillation_loss(teacher, segments, {"soft_weight": 0.0, "hard_weight": 0.0, "hidden_weight": 1.0}).item() < 1e-5
    student = copy.deepcopy(teacher)
    from ner.training.knowledge_distillation import keep_layers

    keep_layers(student.encoder.transformer, [1])
    assert distillation_loss(student, segments, {"soft_weight": 0.0, "hard_weight": 0.0, "hidden_weight": 1.0}).item() > 5e-5

    # inner-state transfer (the teacher runs beside the student): nothing to learn from itself ...
    inner = {"soft_weight": 0.0, "hard_weight": 0.0, "layer_weight": 1.0, "relation_weight": 1.0, "relation_heads": 4}
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(student, segments, inner)
    teacher.eval()
    assert distillation_loss(teacher, segments, inner, teacher).item() < 1e-5
    # ... but a one-layer student (teacher layer 1 kept) differs from the teacher in relations and in layer 0's output
    student.train(False)
    loss = distillation_loss(student, segments, inner, teacher, layer_map=[1])
    assert loss.item() > 1e-4  # its layer 0 holds the teacher's layer 1 but reads the embeddings, not layer 0's output
    loss.backward()
    query = student.encoder.transformer.encoder.layer[0].attention.self.query.weight
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())

    # the recipe: init from the teacher, one of its layers, soft + hard + hidden, unlabeled text, a backend to load on
    recipe = write_recipe(tmp_path, "student", init=teacher_run["output"], training="learning_rate = 1e-3")
    text = recipe.read_text().replace("[training]", '[distillation]\nteacher = "%s"\nsoft_weight = 1.0\nhard_weight = 0.5\n'
                                      'hidden_weight = 1.0\nunlabeled = ["conll2003_en:dev:3-6"]\n[training]' % teacher_run["output"])
    text = text.replace(f'init = "{teacher_run["output"]}"', f'init = "{teacher_run["output"]}"\nlayers = [1]\nffn_size = 32')
    text = text.replace("[training]", "[pruning]\nblock_sparsity = 0.5\nend = 0.5\nevery = 1\n[training]")
    recipe.write_text(text + 'backend = "ner-kernels"\n')
    logged = []
    result = train(recipe, log=logged.append)
    assert any("labelling" in line for line in logged) and result["epochs"][-1]["block_sparsity"] == 0.5
    nlp = spacy.load(result["output"])
    assert nlp.get_pipe("ner").backend == "ner-kernels"
    assert nlp("Angela Merkel met Tim Cook in Berlin .") is not None
    transformer = spacy.load(result["output"], config={"components": {"ner": {"backend": "torch"}}}).get_pipe("ner").model.encoder.transformer
    assert transformer.config.num_hidden_layers == 1 and transformer.config.intermediate_size == 32
    from ner.kernels.pruning import block_density

    assert block_density(transformer.encoder.layer[0].intermediate.dense.weight) == pytest.approx(0.5)




def test_gradual_block_pruning_follows_its_schedule_and_keeps_pruned_blocks_zero():
    from ner.kernels.pruning import block_density
    from ner.training.gradual_pruning import GradualBlockPruning

    transformer = tiny_transformer(12, hidden=64, layers=2)  # 64x64 and 128x64 matrices: 8 and 16 blocks
    pruning = GradualBlockPruning(transformer, 0.5, total_steps=10, start=0.0, end=0.5, every=2)
    assert pruning.target(0) == 0.0 and 0.0 < pruning.target(1) < pruning.target(3) < 0.5 and pruning.target(5) == 0.5
    for step in range(1, 11):
        with torch.no_grad():  # an optimiser step moves every weight, pruned ones too
            for linear in pruning.linears:
                linear.weight.add_(0.01 * torch.randn_like(linear.weight))
        pruning()
        assert pruning.done == (step >= 5)
    for linear in pruning.linears:
        assert block_density(linear.weight) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="start < end"):
        GradualBlockPruning(transformer, 0.5, 10, start=0.6, end=0.5)


def test_the_token_classifier_peer_trains_with_one_output_per_bio_tag(tmp_path, tiny_encoder_dir):
    from ner.training.peers import TokenClassifier, train_token_classifier

    train_token_classifier(write_recipe(tmp_path, "peer", encoder=tiny_encoder_dir), tmp_path / "peer-out")
    classifier = TokenClassifier.load(tmp_path / "peer-out")
    assert classifier.model.config.num_labels == 9 and classifier.tags[0] == "O"  # O + B/I of 4 labels
    (spans,) = classifier.predict_spans([["Angela", "Merkel", "visited", "Berlin"]])
    assert all(0 <= s < e <= 4 and label in {"PER", "ORG", "LOC", "MISC"} for s, e, label in spans)


def test_a_recipe_that_trains_on_its_dev_data_keeps_its_last_epoch_and_threshold(tmp_path, tiny_encoder_dir):
    lines = []
    recipe = write_recipe(tmp_path, "last", encoder=tiny_encoder_dir,
                          training='keep = "last"\ntune_threshold = false\nlearning_rate = 1e-3')
    result = train(recipe, epochs=2, log=lines.append)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert [e["threshold"] for e in result["epochs"]] == [0.5, 0.5]
    saved = [i for i, line in enumerate(lines) if str(line).startswith("saved")]
    epoch_two = next(i for i, line in enumerate(lines) if '"epoch": 2' in str(line))
    assert saved and all(i > epoch_two for i in saved)  # nothing saved before the last epoch
    assert any("keeps its last epoch" in str(line) for line in lines)
    repeat = train(recipe, output=tmp_path / "repeat", seed=7, log=lambda *a: None)  # ner train --seed 7
    assert json.loads((tmp_path / "repeat" / "training.json").read_text())["recipe"]["training"]["seed"] == 7
    assert repeat["epochs"][0]["loss"] != result["epochs"][0]["loss"]


def test_a_fixed_threshold_scores_each_dev_record_over_its_own_datasets_types(tmp_path, tiny_encoder_dir):
    # a dev set that annotates PER only: a fixed threshold must not count the other types as errors
    from ner.evaluation import evaluate, threshold_scores
    from training.loop import recipe_records, read_recipe

    recipe = write_recipe(tmp_path, "fixed", encoder=tiny_encoder_dir, training="tune_threshold = false")
    text = recipe.read_text().replace('labels = ["PER", "ORG", "LOC", "MISC"]',
                                      'labels = ["PER", "ORG", "LOC", "MISC"]\nthreshold = 0.05')
    recipe.write_text(text + '[data.select.conll2003_en]\nlabels = ["PER"]\n')
    logged = train(recipe, log=lambda *a: None)["epochs"][-1]
    nlp = spacy.load(tmp_path / "fixed")
    ner = nlp.get_pipe("ner")
    dev = recipe_records(read_recipe(recipe), "dev")
    assert all(r.labels == ["PER"] for r in dev)
    scoped = threshold_scores(ner, dev, [0.05])[0.05].micro
    unscoped = evaluate(nlp, dev).micro  # every type predicted: more false positives
    assert logged["threshold"] == 0.05 and scoped["precision"] > unscoped["precision"]
    assert logged["dev_f1"] == pytest.approx(scoped["f1"], abs=1e-6)


def test_a_student_with_pruned_attention_heads_saves_and_loads_at_its_new_shape(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_transformer(len(tokenizer), hidden=64).save_pretrained(tmp_path / "encoder64")  # 2 heads of 32
    tokenizer.save_pretrained(tmp_path / "encoder64")
    teacher = train(write_recipe(tmp_path, "teacher", encoder=tmp_path / "encoder64"), log=lambda *a: None)["output"]
    recipe = write_recipe(tmp_path, "student", init=teacher, training='learning_rate = 1e-3\nbackend = "ner-kernels"')
    recipe.write_text(recipe.read_text().replace(f'init = "{teacher}"', f'init = "{teacher}"\nheads = 1'))
    result = train(recipe, log=lambda *a: None)
    nlp = spacy.load(result["output"], config={"components": {"ner": {"backend": "torch"}}})
    attention = nlp.get_pipe("ner").model.encoder.transformer.encoder.layer[0].attention
    assert attention.self.num_attention_heads == 1 and attention.self.query.weight.shape == (32, 64)
    words = "Angela Merkel met Tim Cook in Berlin .".split()
    kernels = spacy.load(result["output"], config={"components": {"ner": {"backend": "ner-kernels"}}})
    torch_probs, _ = nlp.get_pipe("ner").model.probabilities([words])
    kernel_probs, _ = kernels.get_pipe("ner").model.probabilities([words])
    assert abs(torch_probs[0] - kernel_probs[0]).max() < 1e-4  # the kernels run the pruned layer the same
