"""The shipped pipelines load offline through both entry points and find real entities."""
import json
from pathlib import Path

import pytest
import spacy
import torch
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
    assert shipped_pipelines()[0] == "en"  # the default first: `ner tag` and the demo start with it
    from safetensors import safe_open

    files = [p for p in (PIPELINES / "en").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30_000_000
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".pkl", ".pickle") or p.name == "pytorch_model.bin"]
    with safe_open(str(PIPELINES / "en" / "ner" / "model.safetensors"), "pt") as weights:
        assert len(list(weights.keys())) > 100


def test_en_finds_people_and_places(en):
    doc = en("Angela Merkel met Tim Cook in Berlin.")
    assert entities(doc) == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    assert all(0.5 <= s <= 1.0 for s in doc.spans["ner"].attrs["scores"])


def test_en_organisations_and_misc(en):
    doc = en("Microsoft hired two German engineers in Munich.")
    assert entities(doc) == [("Microsoft", "ORG"), ("German", "MISC"), ("Munich", "LOC")]


def test_spacy_load_by_path_equals_ner_load(en):
    nlp = spacy.load(pipeline_path("en"))
    text = "The United Nations met in Geneva on Monday."
    assert entities(nlp(text)) == entities(en(text))


def test_each_shipped_pipeline_names_a_backend_and_en_loads_on_its_own(en):
    from ner.kernels import BACKENDS

    for name in shipped_pipelines():
        components = spacy.util.load_config(PIPELINES / name / "config.cfg")["components"]
        assert "ner" not in components or components["ner"]["backend"] in BACKENDS, name
    model = en.get_pipe("ner").model
    assert model.backend == spacy.util.load_config(PIPELINES / "en" / "config.cfg")["components"]["ner"]["backend"]
    encoder = model.encoder.transformer
    # int8: 8-bit weights; -fast: the levels this CPU multiplies fastest (7-bit on AVX2 without VNNI); -w7: 7-bit
    requested = {"ner-kernels-int8": 127, "ner-kernels-int8-fast": None, "ner-kernels-int8-w7": 63}[model.backend]
    assert {layer.qkv.levels for layer in encoder.layers} == {encoder.kernels.int8_weight_levels(requested)}


def test_pipelines_on_7_bit_weights_store_weights_rounded_to_63_levels():
    """A pipeline on ``ner-kernels-int8-w7`` ships linear weights rounded to 63 levels (``shrink --weight-levels 63``):
    each stored int8 integer lies within a quarter step of twice a 63-level one, so packing at 63 levels gives
    them back exactly. Weights rounded to 127 levels miss that by up to half a step."""
    from safetensors.torch import load_file

    on_w7 = [name for name in shipped_pipelines()
             if spacy.util.load_config(PIPELINES / name / "config.cfg")["components"].get("ner", {}).get("backend")
             == "ner-kernels-int8-w7"]
    assert "en" in on_w7
    for name in on_w7:
        stored = load_file(str(PIPELINES / name / "ner" / "model.safetensors"))
        matrices = [tensor for key, tensor in stored.items()
                    if tensor.dtype == torch.int8 and "embeddings" not in key]  # the linear layers' weights
        assert len(matrices) > 12, name
        for integers in matrices:
            halved = integers.float() * 63 / 127
            assert (halved - halved.round()).abs().max() <= 0.25, name


def test_en_on_pretokenised_doc(en):
    doc = Doc(en.vocab, words="Barack Obama visited Paris with Apple executives".split())
    for _, component in en.pipeline:
        doc = component(doc)
    assert ("Barack Obama", "PER") in entities(doc) and ("Paris", "LOC") in entities(doc)


@pytest.fixture(scope="module")
def tweets():
    return ner.load("tweets")


def test_every_shipped_pipeline_is_under_30_mb_in_safetensors():
    for name in shipped_pipelines():
        files = [p for p in (PIPELINES / name).rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) < 30_000_000, name
        assert not [p for p in files if p.suffix in (".pt", ".pth", ".pkl", ".pickle") or p.name == "pytorch_model.bin"], name


def test_every_shipped_config_states_the_threshold_a_load_uses():
    for name in shipped_pipelines():
        config = spacy.util.load_config(PIPELINES / name / "config.cfg")
        for component, settings in config["components"].items():
            saved = json.loads((PIPELINES / name / component / "cfg.json").read_text())
            assert settings["threshold"] == saved["threshold"], (name, component)  # cfg.json is what a load reads


def test_tweets_keeps_hashtags_mentions_urls_emoji_and_finds_wnut_types(tweets):
    doc = tweets("@elonmusk just landed in Berlin with #SpaceX, 🚀 https://t.co/xYz123 Taylor Swift concert tonight")
    words = [t.text for t in doc]
    assert {"@elonmusk", "#SpaceX", "🚀", "https://t.co/xYz123"} <= set(words)
    assert ("Berlin", "location") in entities(doc) and ("Taylor Swift", "person") in entities(doc)


def test_tweets_predicts_tweebank_types_when_asked(tweets):
    doc = tweets("Taylor Swift played in London last night", component_cfg={"ner": {"labels": ["PER", "ORG", "LOC", "MISC"]}})
    assert entities(doc) == [("Taylor Swift", "PER"), ("London", "LOC")]


def test_en_finds_the_entity_at_the_end_of_a_document_longer_than_a_block(en):
    filler = ("the committee said on Monday that the talks would resume next week . " * 230).split()
    doc = Doc(en.vocab, words=filler + "Angela Merkel visited Paris .".split())
    for _, component in en.pipeline:
        doc = component(doc)
    assert len(doc) > en.get_pipe("ner").spec.block_words and doc._.ner_windows["blocks"] >= 2
    assert entities(doc)[-2:] == [("Angela Merkel", "PER"), ("Paris", "LOC")]


@pytest.fixture(scope="module")
def biomedical():
    return ner.load("biomedical")


def test_biomedical_finds_chemicals_diseases_and_genes(biomedical):
    doc = biomedical("Cisplatin-induced nephrotoxicity was attenuated by inhibition of p53.")
    assert ("Cisplatin", "Chemical") in entities(doc) and ("nephrotoxicity", "Disease") in entities(doc)
    assert ("p53", "Gene") in entities(doc)
    # Entities every backend scores well clear of their thresholds: "cystic fibrosis" in "Mutations
    # in the CFTR gene cause cystic fibrosis." (0.74 in fp32 against Disease's 0.7) fell under it
    # with the 7-bit activations of AVX2 without VNNI, a rounding difference, not a regression.
    found = entities(biomedical("Huntington's disease is caused by an expansion in the HTT gene."))
    assert ("Huntington's disease", "Disease") in found and any("HTT" in text and label == "Gene" for text, label in found)


def test_biomedical_scores_bc2gm_through_its_label_map(biomedical):
    assert biomedical.meta["label_map"] == {"GENE": "Gene"}  # BC2GM's GENE is the pipeline's Gene


def test_biomedical_decodes_each_label_at_the_threshold_its_dev_data_chose(biomedical):
    component = biomedical.get_pipe("ner")
    chosen = dict(zip(component.model.labels, component.thresholds()))
    assert chosen == pytest.approx({"Disease": 0.7, "Chemical": 0.4, "Gene": 0.5, "Disease@ncbi_disease": 0.3})
    text = "Hereditary breast cancer was treated with cisplatin."
    doc = biomedical(text)
    assert doc.spans["ner"] and all(span._.score >= chosen[span.label_] for span in doc.spans["ner"])
    strict = biomedical(text, component_cfg={"ner": {"threshold": 0.99}})  # a call's threshold is every label's
    assert all(span._.score >= 0.99 for span in strict.spans["ner"]) and len(strict.spans["ner"]) < len(doc.spans["ner"])


@pytest.mark.parametrize("pipeline, variants", [
    ("biomedical", ["Disease@ncbi_disease"]),
    ("multilingual", ["PER@wikiann", "ORG@wikiann", "LOC@wikiann"]),
])
def test_corpus_variants_answer_only_when_asked_and_under_their_base_names(pipeline, variants, request):
    nlp = request.getfixturevalue(pipeline)
    assert set(variants) <= set(nlp.get_pipe("ner").labels)
    text = {"biomedical": "Hereditary breast cancer was treated with cisplatin.",
            "multilingual": "Angela Merkel traf Emmanuel Macron in Paris."}[pipeline]
    by_default = entities(nlp(text))
    asked = entities(nlp(text, component_cfg={"ner": {"labels": variants}}))
    assert by_default and asked and not any("@" in label for _, label in by_default + asked)
    assert {label for _, label in asked} <= {v.split("@")[0] for v in variants}


@pytest.fixture(scope="module")
def multilingual():
    return ner.load("multilingual")


@pytest.mark.parametrize("text, expected", [
    ("Gabriel García Márquez nació en Aracataca, Colombia.", [("Gabriel García Márquez", "PER"), ("Colombia", "LOC")]),
    ("Angela Merkel traf Emmanuel Macron in Paris.", [("Angela Merkel", "PER"), ("Emmanuel Macron", "PER"), ("Paris", "LOC")]),
    ("Rais Samia Suluhu Hassan alitembelea Nairobi jana.", [("Samia Suluhu Hassan", "PER"), ("Nairobi", "LOC")]),
    ("Владимир Путин посетил Москву.", [("Владимир Путин", "PER"), ("Москву", "LOC")]),
])
def test_multilingual_finds_people_and_places_in_four_scripts_and_languages(multilingual, text, expected):
    found = entities(multilingual(text))
    assert all(entity in found for entity in expected), found


def test_multilingual_stores_its_embeddings_at_4_bits():
    import json

    cfg = json.loads((PIPELINES / "multilingual" / "ner" / "cfg.json").read_text())
    assert cfg["storage"] == "int8-emb4"


@pytest.fixture(scope="module")
def zero_shot():
    return ner.load("zero-shot")


def test_zero_shot_finds_the_types_it_is_asked_for(zero_shot):
    doc = zero_shot("Angela Merkel met Tim Cook in Berlin.", component_cfg={"zero_shot": {"labels": ["person", "city"]}})
    assert ("Angela Merkel", "person") in entities(doc) and ("Tim Cook", "person") in entities(doc)
    assert {e.label_ for e in doc.ents} <= {"person", "city"}
    doc = zero_shot("Imatinib is used to treat chronic myeloid leukaemia in adults.",
                    component_cfg={"zero_shot": {"labels": ["drug", "disease"]}})
    assert ("Imatinib", "drug") in entities(doc)
    assert all(0.0 < e._.score <= 1.0 for e in doc.ents)


@pytest.fixture(scope="module")
def long_span():
    return ner.load("long-span")


def test_long_span_finds_profile_entities_and_scientific_terms(long_span):
    profile = [label for label in long_span.get_pipe("ner").labels if label not in ("Method", "Task", "Metric", "Material")]
    text = ("John Smith is a Professor of Computer Science at Stanford University. He received his Ph.D. "
            "from MIT in 1998. His research interests include machine learning, natural language processing "
            "and computer vision. He received the Turing Award in 2015.")
    doc = long_span(text, component_cfg={"ner": {"labels": profile}})
    spans = {(s.text, s.label_) for s in doc.spans["ner"]}
    assert ("the Turing Award", "awards") in spans and ("Ph.D.", "highest_education") in spans
    assert {s.label_ for s in doc.spans["ner"]} <= set(profile)
    doc = long_span("We propose a graph neural network for named entity recognition and report its F1 score.",
                    component_cfg={"ner": {"labels": ["Method", "Task", "Metric", "Material"]}})
    assert ("graph neural network", "Method") in {(s.text, s.label_) for s in doc.spans["ner"]}
