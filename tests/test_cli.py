"""``ner tag`` and ``ner evaluate`` end to end on a tiny pipeline saved to disk."""
import io
import json
import sys

import pytest
import spacy

from ner.cli import main
from ner.readers import read_conll, read_docbin

import test_span_ner


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    contract = test_span_ner.TestEnglishContract()
    nlp, ner = contract.build()
    contract.overfit(ner)
    path = tmp_path_factory.mktemp("pipeline") / "tiny"
    nlp.to_disk(path)
    return path


TEXTS = ["Angela Merkel met Tim Cook in Berlin .", "", "Apple and Google visited Paris ."]


def test_tag_jsonl_keeps_order_and_schema(pipeline_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "body": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out.jsonl"
    assert main(["tag", str(source), "-o", str(out), "--pipeline", str(pipeline_dir), "--text-field", "body", "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d0", "d1", "d2"]
    assert [(e["text"], e["label"]) for e in rows[0]["entities"]] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    assert rows[1]["entities"] == []
    entity = rows[2]["entities"][0]
    assert set(entity) == {"start", "end", "label", "score", "text"}
    assert rows[2]["text"][entity["start"]:entity["end"]] == entity["text"] == "Apple"
    assert 0.5 <= entity["score"] <= 1.0


def test_tag_stdin_to_stdout(pipeline_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(TEXTS) + "\n"))
    assert main(["tag", "--pipeline", str(pipeline_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    assert [e["label"] for e in rows[0]["entities"]] == ["PER", "PER", "LOC"]


def test_tag_conll_in_conll_and_docbin_out(pipeline_dir, tmp_path):
    source = tmp_path / "in.conll"
    source.write_text("\n".join(f"{w} O" for w in TEXTS[0].split()) + "\n\n")
    out = tmp_path / "out.conll"
    assert main(["tag", str(source), "-o", str(out), "--pipeline", str(pipeline_dir)]) == 0
    record = next(read_conll(out))
    assert [(record.text[s.start:s.end], s.label) for s in record.spans] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]
    docbin = tmp_path / "out.spacy"
    assert main(["tag", str(source), "-o", str(docbin), "--pipeline", str(pipeline_dir)]) == 0
    record = next(read_docbin(docbin, spacy.blank("en").vocab))
    assert len(record.spans) == 3


def test_evaluate_prints_micro_and_per_label(pipeline_dir, tmp_path, capsys):
    data = tmp_path / "gold.conll"
    data.write_text("Angela B-PER\nMerkel I-PER\nmet O\nTim B-PER\nCook I-PER\nin O\nBerlin B-LOC\n. O\n\n")
    assert main(["evaluate", str(pipeline_dir), str(data), "--format", "conll", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "micro" in out and "PER" in out and "words/s" in out
    assert json.loads((tmp_path / "s.json").read_text())["micro"]["f1"] == 1.0


def test_evaluate_config_overrides_reach_the_loaded_pipeline(pipeline_dir, tmp_path, monkeypatch, capsys):
    import ner
    from ner.cli import config_overrides

    assert config_overrides(["components.ner.model.stride=8", "components.ner.threshold=0.4", "nlp.lang=en"]) == {
        "components": {"ner": {"model": {"stride": 8}, "threshold": 0.4}}, "nlp": {"lang": "en"}}
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        config_overrides(["components.ner.model.stride"])
    component = ner.load(pipeline_dir, config=config_overrides(["components.ner.model.stride=8"])).get_pipe("ner")
    assert component.spec.stride == 8 and component.model.encoder.stride == 8  # windowing follows the config
    assert ner.load(pipeline_dir).get_pipe("ner").spec.stride != 8
    loaded = []
    original = ner.load
    monkeypatch.setattr(ner, "load", lambda *a, **k: loaded.append(k) or original(*a, **k))
    data = tmp_path / "gold.conll"
    data.write_text("Angela B-PER\nMerkel I-PER\n\n")
    assert main(["evaluate", str(pipeline_dir), str(data), "--format", "conll",
                 "--config", "components.ner.model.stride=8"]) == 0
    assert loaded[-1]["config"] == {"components": {"ner": {"model": {"stride": 8}}}}
    assert main(["evaluate", str(pipeline_dir), str(data), "--config", "stride"]) == 2
    assert "SECTION.KEY=VALUE" in capsys.readouterr().err


def test_evaluate_several_files_averages_and_maps_labels(pipeline_dir, tmp_path, capsys):
    """Several data arguments are scored one by one and averaged; the pipeline's
    ``label_map`` (dataset label → pipeline label) renames the gold spans first."""
    nlp = spacy.load(pipeline_dir)
    nlp.meta["label_map"] = {"PERSON": "PER"}
    mapped = tmp_path / "mapped"
    nlp.to_disk(mapped)
    perfect, half = tmp_path / "perfect.conll", tmp_path / "half.conll"
    perfect.write_text("Angela B-PERSON\nMerkel I-PERSON\nmet O\nTim B-PERSON\nCook I-PERSON\n. O\n\n")
    half.write_text("Angela B-PERSON\nMerkel I-PERSON\nmet O\nTim O\nCook O\n. O\n\n")  # Tim Cook: a false positive
    assert main(["evaluate", str(mapped), str(perfect), str(half), "--format", "conll", "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    f1s = [summary["results"][str(p)]["micro"]["f1"] for p in (perfect, half)]
    assert f1s[0] == 1.0 and f1s[1] == pytest.approx(2 / 3)
    assert summary["average_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert "average of 2" in capsys.readouterr().out


def test_evaluate_sentences_per_doc_scores_sentences_joined_in_docs(pipeline_dir, tmp_path, monkeypatch):
    """--sentences-per-doc N hands the pipeline N sentences in a row as one Doc and scores
    the same gold entities."""
    import ner.evaluation

    data = tmp_path / "gold.conll"
    data.write_text("Angela B-PER\nMerkel I-PER\nmet O\nTim B-PER\nCook I-PER\n. O\n\n" * 3 + "Berlin B-LOC\n. O\n\n")
    seen = []
    evaluate = ner.evaluation.evaluate
    monkeypatch.setattr(ner.evaluation, "evaluate", lambda nlp, records, **kw: seen.append(records) or evaluate(nlp, records, **kw))
    assert main(["evaluate", str(pipeline_dir), str(data), "--format", "conll", "--sentences-per-doc", "3",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert [len(r.sentences) for r in seen[0]] == [3, 1]
    assert sum(len(r.spans) for r in seen[0]) == 7
    assert json.loads((tmp_path / "s.json").read_text())["micro"]["support"] == 7


def test_unknown_pipeline_is_a_clear_error(capsys):
    assert main(["tag", "--pipeline", "nonexistent"]) == 2
    assert "no pipeline 'nonexistent'" in capsys.readouterr().err


def test_tag_labels_restrict_a_pipeline_and_unknown_ones_are_a_clear_error(pipeline_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(TEXTS[0] + "\n"))
    assert main(["tag", "--pipeline", str(pipeline_dir), "--labels", "PER"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["text"], e["label"]) for e in rows[0]["entities"]] == [("Angela Merkel", "PER"), ("Tim Cook", "PER")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(TEXTS[0] + "\n"))
    assert main(["tag", "--pipeline", str(pipeline_dir), "--labels", "PER,DRUG"]) == 2
    assert "no labels ['DRUG']" in capsys.readouterr().err


def test_load_with_labels_sets_what_a_call_predicts_by_default(pipeline_dir):
    import ner

    nlp = ner.load(pipeline_dir, labels=["LOC"])
    assert [(e.text, e.label_) for e in nlp("Angela Merkel met Tim Cook in Berlin .").ents] == [("Berlin", "LOC")]
