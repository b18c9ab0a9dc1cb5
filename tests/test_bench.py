"""``ner bench`` and ``ner export onnx`` end to end on a tiny pipeline saved to disk.

The pipeline is left untrained: the commands' plumbing is under test here (accuracy per
backend is tests/test_kernels_encoder.py's business), and its random span scores still
give every backend the same decisions to agree on.
"""
import json

import numpy as np
import pytest
import spacy
import torch

from ner.cli import main


SENTENCES = [
    [("Angela", "B-PER"), ("Merkel", "I-PER"), ("met", "O"), ("Tim", "B-PER"), ("Cook", "I-PER"), ("in", "O"),
     ("Berlin", "B-LOC"), (".", "O")],
    [("Apple", "B-ORG"), ("and", "O"), ("Google", "B-ORG"), ("visited", "O"), ("Paris", "B-LOC"), (".", "O")],
    [("the", "O"), ("New", "B-ORG"), ("York", "I-ORG"), ("Times", "I-ORG"), ("said", "O"), ("Barack", "B-PER"),
     ("Obama", "I-PER"), ("visited", "O"), ("France", "B-LOC")],
]


@pytest.fixture(scope="module")
def conll_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.conll"
    documents = [SENTENCES, SENTENCES[::-1], SENTENCES[1:]]
    path.write_text("".join("-DOCSTART- O\n\n" + "".join("".join(f"{w} {t}\n" for w, t in s) + "\n" for s in doc)
                            for doc in documents))
    return path


def test_bench_runs_every_backend_and_the_peer_on_the_same_words(pipeline_dir, conll_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    backends = "torch,torch-int8,onnxruntime-int8,ner-kernels,ner-kernels-int8"
    assert main(["bench", str(pipeline_dir), "--data", str(conll_file), "--rounds", "2", "--threads", "1",
                 "--backends", backends, "--peers", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    results = {r["name"]: r for r in report["results"]}
    assert list(results)[:5] == backends.split(",") and any(name.startswith("spacy") for name in results)
    assert report["setup"]["records"] == 3 and report["setup"]["words"] == 3 * 23 - 8
    for r in results.values():
        assert r["words"] == report["setup"]["words"] and 0 < r["cpu_seconds"] and len(r["rounds_wall"]) == 2
        assert 0.0 <= r["f1"] <= 1.0
    # fp32 kernels take the same decisions as PyTorch
    assert results["ner-kernels"]["f1"] == results["torch"]["f1"]
    table = capsys.readouterr().out
    assert "words/s" in table and "x spaCy" in table and "ner-kernels-int8" in table


def test_bench_prunes_every_backend_alike(pipeline_dir, conll_file, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", str(pipeline_dir), "--data", str(conll_file), "--unit", "sentences", "--rounds", "1",
                 "--backends", "torch,ner-kernels", "--block-sparsity", "0.5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["records"] == 8 and report["setup"]["block_sparsity"] == 0.5
    torch_result, kernels_result = report["results"]
    assert "pruned 50%" in torch_result["note"] and kernels_result["f1"] == torch_result["f1"]


def test_bench_runs_the_pipelines_on_the_device_asked_for(pipeline_dir, conll_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(pipeline_dir), "--data", str(conll_file), "--rounds", "1", "--threads", "1",
                 "--backends", "torch,ner-kernels", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["device"] == "cpu" and "pipelines on cpu" in capsys.readouterr().out
    torch_result, kernels_result = report["results"]
    assert kernels_result["f1"] == torch_result["f1"]


def test_bench_fixes_a_kernels_block_width_per_candidate(pipeline_dir, conll_file, tmp_path):
    from ner.benchmark import parse_backend

    out = tmp_path / "bench.json"
    backends = "ner-kernels-int8:block_k=16,ner-kernels-int8"
    assert main(["bench", str(pipeline_dir), "--data", str(conll_file), "--rounds", "1", "--threads", "1",
                 "--backends", backends, "--json", str(out)]) == 0
    narrow, default = json.loads(out.read_text())["results"]
    assert narrow["name"] == "ner-kernels-int8:block_k=16" and default["name"] == "ner-kernels-int8"
    assert narrow["f1"] == default["f1"]  # the same integers summed in another order
    assert parse_backend("ner-kernels:block_k=64") == ("ner-kernels", {"block_k": 64})
    assert parse_backend("torch:stride=224") == ("torch", {"stride": 224})
    with pytest.raises(ValueError, match="block_k=N"):
        parse_backend("ner-kernels-int8:threads=2")


def test_bench_windows_documents_per_candidate(pipeline_dir, conll_file, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", str(pipeline_dir), "--data", str(conll_file), "--rounds", "1", "--threads", "1",
                 "--backends", "torch,torch:window=8:stride=4", "--json", str(out)]) == 0
    default, narrow = json.loads(out.read_text())["results"]
    assert narrow["name"] == "torch:window=8:stride=4" and default["name"] == "torch"
    import ner

    nlp = ner.load(pipeline_dir)
    nlp.get_pipe("ner").set_windows(window=8, stride=4)  # what the candidate's options do
    doc = nlp("Angela Merkel met Tim Cook in Berlin . " * 3)
    assert doc._.ner_windows["window"] == 8 and doc._.ner_windows["stride"] == 4 and doc._.ner_windows["windows"] > 3


def test_export_onnx_graphs_match_pytorch(pipeline_dir, tmp_path):
    import onnxruntime

    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(pipeline_dir), "-o", str(out)]) == 0
    for name in ("encoder.onnx", "encoder.int8.onnx", "head.onnx", "head.int8.onnx", "export.json", "tokenizer"):
        assert (out / name).exists(), name
    description = json.loads((out / "export.json").read_text())
    assert description["labels"] == ["PER", "ORG", "LOC"] and description["window"] == 12

    model = spacy.load(pipeline_dir).get_pipe("ner").model.eval()
    ids = torch.randint(4, 25, (3, 12))  # the tiny vocabulary has 25 entries
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = model.encoder.transformer(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        words = torch.randn(2, 9, 32)
        expected_logits = model.head(words).numpy()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    encoder = onnxruntime.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    real = mask.numpy().astype(bool)
    assert np.abs(encoder.run(None, feeds)[0] - expected)[real].max() <= 1e-4
    int8 = onnxruntime.InferenceSession(str(out / "encoder.int8.onnx"), providers=["CPUExecutionProvider"])
    error = np.linalg.norm((int8.run(None, feeds)[0] - expected)[real]) / np.linalg.norm(expected[real])
    assert error < 0.1
    head = onnxruntime.InferenceSession(str(out / "head.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(head.run(None, {"word_vectors": words.numpy()})[0] - expected_logits).max() <= 1e-5


def test_bench_runs_several_pipelines_side_by_side(pipeline_dir, conll_file, tmp_path):
    import shutil

    student = shutil.copytree(pipeline_dir, tmp_path / "student")
    out = tmp_path / "bench.json"
    assert main(["bench", str(pipeline_dir), str(student), "--data", str(conll_file), "--rounds", "1",
                 "--threads", "1", "--backends", "torch,ner-kernels", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["pipelines"] == [str(pipeline_dir), str(student)]
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == [f"{p} {b}" for p in (pipeline_dir, student) for b in ("torch", "ner-kernels")]
    assert results[f"{student} torch"]["f1"] == results[f"{pipeline_dir} torch"]["f1"]  # same weights, same words


def test_bench_calibrates_the_static_int8_backend_on_other_text(pipeline_dir, conll_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(pipeline_dir), "--data", str(conll_file), "--rounds", "1",
            "--backends", "ner-kernels-int8,ner-kernels-int8-static"]
    assert main(args) == 2  # no calibration text: refused, saying why
    assert "--calibrate" in capsys.readouterr().err
    assert main(args + ["--calibrate", str(conll_file), "--calibrate-limit", "5", "--calibrate-percentile", "99.9",
                        "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    dynamic, static = report["results"]
    assert static["name"] == "ner-kernels-int8-static" and "p99.9 of 5 sentences" in static["note"]
    assert report["setup"]["calibrate_percentile"] == 99.9 and 0.0 <= static["f1"] <= 1.0


def test_kernel_microbench_measures_every_operation_on_both_implementations():
    from ner.kernels.build import load_library
    from ner.kernels.microbench import SHAPES, measure

    if load_library() is None:
        pytest.skip("the C kernels cannot be built here")
    results = measure(rows=64, repeats=1, window=32)
    # fp32, int8, int8 7-bit weights in two block widths each, torch; 3 attentions
    assert len(results) == 7 * len(SHAPES) + 3
    assert all(value > 0 for value in results.values())
    assert sum("kernels int8" in name for name in results) == 4 * len(SHAPES) + 1
    assert sum("64-wide blocks" in name for name in results) == 3 * len(SHAPES)
