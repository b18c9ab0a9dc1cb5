"""``ner tag --engine ray`` on a local Ray cluster gives byte for byte what the local
engine gives: the same output in input order, the same rejections, the same counts."""
import io
import json
import re

import pytest

ray = pytest.importorskip("ray")

from ner.cli import main  # noqa: E402


def input_lines():
    words = ["Angela Merkel", "met", "Tim Cook", "in", "Berlin", "😀", "Paris", "."]
    lines = [json.dumps({"id": f"d{i}", "text": " ".join(words[: 1 + i % 8])}, ensure_ascii=i % 2 == 0).encode()
             for i in range(60)]
    lines[7] = b'{"id": "broken'
    lines[20] = b'{"id": "latin-1", "text": "caf\xe9"}'
    lines[33] = json.dumps({"id": "long", "text": "z" * 200}).encode()
    lines[41] = b""
    return lines


def test_ray_engine_gives_what_the_local_engine_gives(pipeline_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(input_lines()) + b"\n")
    common = [str(source), "--pipeline", str(pipeline_dir), "--batch-size", "2", "--max-token-chars", "100"]
    assert main(["tag", *common, "-o", str(tmp_path / "local.jsonl"), "--errors", str(tmp_path / "local-errors.jsonl")]) == 0
    local_summary = capsys.readouterr().err
    assert main(["tag", *common, "-o", str(tmp_path / "ray.jsonl"), "--errors", str(tmp_path / "ray-errors.jsonl"),
                 "--engine", "ray", "--workers", "2"]) == 0
    ray_summary = capsys.readouterr().err

    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "ray-errors.jsonl").read_bytes() == (tmp_path / "local-errors.jsonl").read_bytes()
    counts = re.compile(r"read ([\d,]+) = tagged ([\d,]+) \+ rejected ([\d,]+)")
    assert counts.search(ray_summary).groups() == counts.search(local_summary).groups() == ("59", "56", "3")
    assert not ray.is_initialized()  # the local cluster it started is shut down again


def test_ray_line_source_skips_what_a_resumed_job_has_done(tmp_path):
    from ner.ray_tagging import LineSource

    path = tmp_path / "in.txt"
    path.write_bytes(b"one\ntwo\n" + b"x" * 50 + b"\nfour")
    running = ray.is_initialized()
    try:
        source = LineSource([str(path)], max_line_bytes=20, after={"elsewhere": 9, "in.txt": 2})
        rows = [row for block in source._read_stream(io.BytesIO(path.read_bytes()), "in.txt")
                for row in block.to_pylist()]
    finally:
        if not running:
            ray.shutdown()  # a datasource starts Ray to list its files
    assert [(r["line"], r["data"], r["size"]) for r in rows] == [(3, None, 51), (4, b"four", 4)]


def test_ray_engine_refuses_what_it_cannot_do(pipeline_dir, tmp_path, capsys):
    source = tmp_path / "in.conll"
    source.write_text("Paris O\n\n")
    assert main(["tag", str(source), "--pipeline", str(pipeline_dir), "--engine", "ray", "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "--engine ray reads txt or jsonl" in capsys.readouterr().err
