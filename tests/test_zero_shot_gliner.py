"""GLiNER interop: a model built by the ``gliner`` library from a local tiny encoder and
saved with ``GLiNER.save_pretrained`` (safetensors and pickle) loads into the
``zero_shot`` component and gives the same entities and scores as ``gliner`` itself."""
import argparse

import pytest
import spacy
import torch

from ner.gliner_checkpoint import CheckpointError, load_gliner_checkpoint, run

from conftest import tiny_tokenizer, tiny_transformer

gliner = pytest.importorskip("gliner", reason="the gliner library is not installed (pip install --no-deps gliner==0.2.29)")

LABELS = ["person", "location", "organization"]
TEXTS = ["Angela Merkel met Tim Cook in Berlin .", "Apple and Google visited Paris .",
         "the New York Times said Barack Obama visited France"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gliner_model(tmp_path_factory):
    """A randomly initialised GLiNER uni-encoder span model (markerV0 spans, one LSTM
    layer, a projection from the encoder's 32 to 24 dimensions) with its label projection
    scaled up so that its scores spread out instead of all sitting near 0.5."""
    encoder_dir = tmp_path_factory.mktemp("encoder")
    words = [w for text in TEXTS for w in text.split()] + LABELS
    tokenizer = tiny_tokenizer(words)
    tiny_transformer(len(tokenizer)).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    torch.manual_seed(0)
    config = gliner.GLiNERConfig(model_name=str(encoder_dir), max_width=6, hidden_size=24, dropout=0.1,
                                 span_mode="markerV0", max_len=48)
    model = gliner.GLiNER.from_config(config, backbone_from_pretrained=True, local_files_only=True)
    with torch.no_grad():
        model.model.prompt_rep_layer[3].weight.mul_(40.0)
        model.model.prompt_rep_layer[3].bias.mul_(40.0)
    model.eval()
    return model


def thresholds(model):
    """Two thresholds that leave some of the random model's spans above them."""
    scores = sorted(e["score"] for text in TEXTS
                    for e in model.predict_entities(text, LABELS, flat_ner=False, threshold=0.0, multi_label=True))
    return [scores[int(len(scores) * 0.7)], scores[int(len(scores) * 0.95)]]


def gliner_entities(model, threshold):
    return [[(e["start"], e["end"], e["label"], e["score"]) for e in
             model.predict_entities(text, LABELS, flat_ner=True, threshold=threshold)] for text in TEXTS]


def our_entities(nlp, threshold):
    cfg = {"zero_shot": {"labels": LABELS, "threshold": threshold}}
    return [[(e.start_char, e.end_char, e.label_, e._.score) for e in doc.ents]
            for doc in nlp.pipe(TEXTS, component_cfg=cfg)]


def assert_same(expected, found):
    assert [[e[:3] for e in doc] for doc in found] == [[e[:3] for e in doc] for doc in expected]
    for doc_expected, doc_found in zip(expected, found):
        assert all(abs(a[3] - b[3]) < 1e-4 for a, b in zip(doc_expected, doc_found))


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_gliner_checkpoint_gives_gliners_entities(gliner_model, tmp_path, safe_serialization):
    gliner_model.save_pretrained(tmp_path / "checkpoint", safe_serialization=safe_serialization)
    nlp = load_gliner_checkpoint(tmp_path / "checkpoint")
    for threshold in thresholds(gliner_model):
        expected = gliner_entities(gliner_model, threshold)
        assert sum(map(len, expected)) > 0
        assert_same(expected, our_entities(nlp, threshold))


def test_imported_pipeline_saves_and_loads(gliner_model, tmp_path):
    gliner_model.save_pretrained(tmp_path / "checkpoint", safe_serialization=True)
    arguments = argparse.Namespace(checkpoint=str(tmp_path / "checkpoint"), output=str(tmp_path / "pipeline"),
                                   labels=",".join(LABELS), threshold=0.5, storage="fp32")
    assert run(arguments) == 0
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("zero_shot").cfg["labels"] == LABELS
    threshold = thresholds(gliner_model)[0]
    assert_same(gliner_entities(gliner_model, threshold), our_entities(loaded, threshold))
    doc = loaded(TEXTS[0])  # the default labels from the import
    assert {e.label_ for e in doc.ents} <= set(LABELS)


def test_unsupported_or_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="gliner_config.json"):
        load_gliner_checkpoint(tmp_path)
    (tmp_path / "gliner_config.json").write_text('{"span_mode": "token_level", "labels_encoder": "bge"}')
    with pytest.raises(CheckpointError, match="span_mode='token_level'.*|labels_encoder"):
        load_gliner_checkpoint(tmp_path)
