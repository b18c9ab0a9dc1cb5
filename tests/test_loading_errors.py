"""A damaged pipeline directory is a clear error naming the file, never a stack trace
from deep inside torch, tokenizers or msgpack; checksums catch what loads silently."""
import shutil

import pytest
import torch
import spacy

import ner
from ner.cli import main
from ner.loading import CHECKSUMS, PipelineError, pipeline_path, verify_checksums, write_checksums


@pytest.fixture
def copy(pipeline_dir, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(pipeline_dir, path)
    return path


def truncate(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])
def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checksums_list_every_file_and_verify(copy):
    listing = write_checksums(copy)
    names = [line.split("  ", 1)[1] for line in listing.read_text().splitlines()]
    assert "ner/model.safetensors" in names and "ner/encoder/tokenizer.json" in names and "config.cfg" in names
    assert CHECKSUMS not in names
    assert verify_checksums(copy)
    assert ner.load(copy).pipe_names == ["ner"]


@pytest.mark.parametrize("name, damage, message", [
    ("ner/model.safetensors", flip_last_byte, "ner/model.safetensors is damaged or was changed"),
    ("ner/encoder/tokenizer.json", truncate, "ner/encoder/tokenizer.json is damaged or was changed"),
    ("ner/encoder/config.json", lambda p: p.unlink(), "ner/encoder/config.json is missing (listed in checksums.sha256)"),
])
def test_a_checksum_mismatch_names_the_file(copy, name, damage, message):
    write_checksums(copy)
    damage(copy / name)
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        ner.load(copy)
    assert not [entry for entry in error.traceback if "site-packages" in str(entry.path)]  # nothing from deep inside


def test_a_flipped_weight_byte_loads_silently_without_checksums(copy):
    """Why checksums: the safetensors header is intact, so only a checksum sees it."""
    flip_last_byte(copy / "ner" / "model.safetensors")
    ner.load(copy)


@pytest.mark.parametrize("name, damage, message", [
    ("ner/model.safetensors", lambda p: truncate(p, 1000), "ner/model.safetensors"),
    ("ner/encoder/tokenizer.json", truncate, "ner/encoder/tokenizer.json is not valid JSON"),
    ("ner/encoder/tokenizer.json", lambda p: p.unlink(), "ner/encoder/tokenizer.json is missing"),
    ("ner/encoder/config.json", truncate, "ner/encoder/config.json is not valid JSON"),
    ("ner/encoder/config.json", lambda p: p.unlink(), "ner/encoder/config.json is missing"),
    ("ner/cfg.json", lambda p: p.write_text("{"), "ner/cfg.json"),
    ("config.cfg", lambda p: truncate(p, 300), "config.cfg cannot be parsed"),
    ("meta.json", truncate, "meta.json is not valid JSON"),
    ("meta.json", lambda p: p.unlink(), "meta.json is missing"),
    ("tokenizer", truncate, "tokenizer is damaged"),
    ("vocab/strings.json", lambda p: truncate(p, 3), "vocab/strings.json is not valid JSON"),
])
def test_damage_without_checksums_names_the_file(copy, name, damage, message):
    damage(copy / name)
    with pytest.raises(PipelineError, match=message) as error:
        ner.load(copy)
    assert str(copy) in str(error.value)
    assert not [entry for entry in error.traceback if "site-packages" in str(entry.path)]
    assert error.value.__suppress_context__  # the loader's own exception is not chained on


def test_ner_tag_on_a_damaged_pipeline_fails_before_reading_input(copy, tmp_path, capsys):
    write_checksums(copy)
    flip_last_byte(copy / "ner" / "model.safetensors")
    source = tmp_path / "in.txt"
    source.write_text("Paris .\n")
    assert main(["tag", str(source), "-o", str(tmp_path / "out.jsonl"), "--pipeline", str(copy)]) == 2
    assert "ner/model.safetensors is damaged" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_the_shipped_en_pipeline_carries_checksums_that_hold():
    assert verify_checksums(pipeline_path("en"))


def test_a_spacy_pipeline_without_a_config_is_named(tmp_path):
    spacy.blank("en").to_disk(tmp_path / "p")
    (tmp_path / "p" / "config.cfg").unlink()
    with pytest.raises(PipelineError, match="config.cfg is missing"):
        ner.load(tmp_path / "p")


def test_a_device_runs_the_same_spans(pipeline_dir):
    text = "Angela Merkel met Tim Cook in Berlin on Tuesday ."

    def scores(nlp):
        doc = nlp(text)
        spans = doc.spans["ner"]
        return [(s.start, s.end, s.label_, round(float(x), 5)) for s, x in zip(spans, spans.attrs["scores"])]

    on_cpu = ner.load(pipeline_dir, device="cpu")
    assert next(on_cpu.get_pipe("ner").model.parameters()).device.type == "cpu"
    assert scores(on_cpu) == scores(ner.load(pipeline_dir))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_a_clear_error(pipeline_dir, capsys):
    with pytest.raises(PipelineError, match="no CUDA device here"):
        ner.load(pipeline_dir, device="cuda")
    with pytest.raises(PipelineError, match="device 'gpu please'"):
        ner.load(pipeline_dir, device="gpu please")
    assert main(["evaluate", str(pipeline_dir), "conll2003_en:test", "--device", "cuda"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_ner_tag_on_a_device_this_machine_lacks_fails_before_reading_input(pipeline_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("Paris .\n")
    out = tmp_path / "out.jsonl"
    assert main(["tag", str(source), "-o", str(out), "--pipeline", str(pipeline_dir), "--device", "cuda"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()
    assert main(["tag", str(source), "-o", str(out), "--pipeline", str(pipeline_dir), "--device", "cpu"]) == 0
    assert out.read_text().count("\n") == 1
    assert main(["tag", str(source), "--engine", "ray", "--device", "cuda"]) == 2
    assert "--device is for --engine local" in capsys.readouterr().err


def test_a_cpu_only_backend_refuses_another_device(pipeline_dir):
    with pytest.raises(PipelineError, match="'torch-int8', which runs on the CPU only"):
        ner.load(pipeline_dir, backend="torch-int8", device="meta")
