"""``ner tag`` under bad input: every record is tagged or rejected with its line and
reason (read = tagged + rejected, always), output order, limits, worker processes, and
resuming a run killed at any point without a duplicated or a lost record."""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ner.cli import main
from ner.tag_job import JobError, Limits, TagJob, numbered_lines, parse_line, run_local

PATTERNS = [{"label": "PER", "pattern": "Angela Merkel"}, {"label": "PER", "pattern": "Tim Cook"},
            {"label": "LOC", "pattern": "Berlin"}, {"label": "LOC", "pattern": "Paris"}]


@pytest.fixture(scope="module")
def ruler_dir(tmp_path_factory):
    """A pipeline whose entities are known in advance (an entity ruler): offsets can
    be checked exactly, and it loads and tags fast."""
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(PATTERNS)
    path = tmp_path_factory.mktemp("pipeline") / "ruler"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def blank_dir(tmp_path_factory):
    """A pipeline with no components: it tags nothing, fast, for the job's own logic."""
    path = tmp_path_factory.mktemp("pipeline") / "blank"
    spacy.blank("en").to_disk(path)
    return path


def rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


def summary_counts(stderr: str) -> tuple[int, int, int]:
    found = re.findall(r"ner tag: read ([\d,]+) = tagged ([\d,]+) \+ rejected ([\d,]+)", stderr)
    return tuple(int(n.replace(",", "")) for n in found[-1])


# --------------------------------------------------------------------------- the bad records

BAD_LINES = [
    (json.dumps({"id": "ok", "text": "Angela Merkel met Tim Cook in Berlin ."}).encode(), None),
    (b'{"id": "b", "text": "unterminated', "invalid JSON"),
    (json.dumps({"id": "c", "body": "no text field"}).encode(), "missing or non-string field 'text'"),
    (b'{"id": "d", "text": "caf\xe9 in Latin-1"}', "invalid UTF-8 at byte"),
    (json.dumps({"id": "e", "text": "NUL\x00byte"}).encode(), "NUL character"),
    (json.dumps({"id": "f", "text": "x" * 5_000_001}).encode(), "over --max-chars 1,000,000"),
    (json.dumps({"id": "g", "text": "a token " + "y" * 10_000}).encode(), "a token of 10,000 characters"),
    (json.dumps({"id": "h", "text": ""}).encode(), None),
    (json.dumps({"id": "rtl", "text": "مرحبا Angela Merkel في Berlin"}, ensure_ascii=False).encode(), None),
    (json.dumps({"id": "emoji", "text": "😀 Angela Merkel 👍🏽 met Tim Cook in Berlin 🇩🇪"}).encode(), None),
    (b"", None),  # a blank line is not a record
    (b"[1, 2]", "not a JSON object"),
    (b'{"id": "s", "text": "lone \\ud800 surrogate"}', "unpaired surrogate"),
]


@pytest.mark.parametrize("pipeline", ["ruler_dir", "pipeline_dir"])
def test_every_bad_record_is_rejected_with_its_line_and_reason(pipeline, request, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    pipeline_path = request.getfixturevalue(pipeline)
    assert main(["tag", str(source), "-o", str(out), "--errors", str(errors), "--pipeline", str(pipeline_path)]) == 0

    rejected = {row["line"]: row for row in rows(errors)}
    expected = {n: reason for n, (_, reason) in enumerate(BAD_LINES, 1) if reason}
    assert set(rejected) == set(expected)
    for line, reason in expected.items():
        assert reason in rejected[line]["reason"] and rejected[line]["source"] == str(source)
    # The rejected record itself is kept, byte for byte when it is not UTF-8.
    assert base64.b64decode(rejected[4]["record_base64"]) == BAD_LINES[3][0]
    assert json.loads(rejected[6]["record"])["text"] == "x" * 5_000_001

    tagged = rows(out)
    assert [r["id"] for r in tagged] == ["ok", "h", "rtl", "emoji"]
    assert tagged[1]["entities"] == []
    assert summary_counts(capsys.readouterr().err) == (12, 4, 8)
    if pipeline == "ruler_dir":  # known entities: offsets are characters, whatever the script
        assert [(e["start"], e["end"], e["label"]) for e in tagged[2]["entities"]] == [(6, 19, "PER"), (23, 29, "LOC")]
        assert [(e["start"], e["end"], e["text"]) for e in tagged[3]["entities"]] == \
               [(2, 15, "Angela Merkel"), (23, 31, "Tim Cook"), (35, 41, "Berlin")]


def test_txt_lines_keep_their_numbers_and_bad_ones_go_to_stderr(ruler_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(b"Angela Merkel met Tim Cook in Berlin .\n\nbad \xff byte\nNUL \x00 here\nParis .")
    out = tmp_path / "out.jsonl"
    assert main(["tag", str(source), "-o", str(out), "--pipeline", str(ruler_dir)]) == 0
    assert [r["id"] for r in rows(out)] == ["in.txt:1", "in.txt:2", "in.txt:5"]
    assert [e["text"] for e in rows(out)[2]["entities"]] == ["Paris"]
    err = capsys.readouterr().err
    assert f"rejected {source}:3: invalid UTF-8 at byte 4" in err and f"rejected {source}:4:" in err
    assert summary_counts(err) == (5, 3, 2)


def test_limits_are_options(ruler_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("Paris .\n" + "Berlin " * 20 + "\nabcdefghijkl\n")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    assert main(["tag", str(source), "-o", str(out), "--errors", str(errors), "--pipeline", str(ruler_dir),
                 "--max-chars", "100", "--max-token-chars", "10"]) == 0
    assert [r["line"] for r in rows(errors)] == [2, 3]
    assert main(["tag", str(source), "-o", str(out), "--errors", str(errors), "--pipeline", str(ruler_dir),
                 "--max-chars", "0", "--max-token-chars", "0"]) == 0
    assert len(rows(out)) == 3 and rows(errors) == []


def test_a_line_longer_than_any_record_is_not_read_whole():
    limits = Limits(max_chars=10, max_token_chars=0)
    lines = list(numbered_lines(_Reads(b"short\n" + b"z" * 5_000_000 + b"\nafter\n"), limits.max_line_bytes))
    assert [(n, data) for n, data, _ in lines] == [(1, b"short"), (2, None), (3, b"after")]
    entry = parse_line("in.txt", 2, None, lines[1][2], format="txt", limits=limits)
    assert "5,000,001 bytes" in entry.reason and entry.error_json()["bytes"] == 5_000_001


class _Reads:
    """A stream that fails the test if asked for more than a block at once."""

    def __init__(self, data):
        self.data, self.position = data, 0

    def read(self, size):
        assert 0 < size <= 1 << 20
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        return chunk


def test_a_record_that_breaks_the_pipeline_costs_only_itself(pipeline_dir, tmp_path, monkeypatch):
    from ner import tagging

    real = tagging.to_doc

    def to_doc(nlp, record):
        if "poison" in record.text:
            raise RuntimeError("boom")
        return real(nlp, record)

    monkeypatch.setattr(tagging, "to_doc", to_doc)
    source = tmp_path / "in.txt"
    source.write_text("Paris .\npoison pill\nBerlin .\n")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    assert main(["tag", str(source), "-o", str(out), "--errors", str(errors), "--pipeline", str(pipeline_dir)]) == 0
    assert [r["text"] for r in rows(out)] == ["Paris .", "Berlin ."]
    assert rows(errors)[0]["line"] == 2 and "RuntimeError: boom" in rows(errors)[0]["reason"]


# --------------------------------------------------------------------------- fuzzing: read = tagged + rejected

GOOD_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
LINE = st.one_of(
    GOOD_TEXT.map(lambda t: ("record", t)),
    GOOD_TEXT.map(lambda t: ("no text", t)),
    st.binary(max_size=40).map(lambda b: ("garbage", b)),
    st.text(max_size=20).map(lambda t: ("escaped", t)),  # may hold lone surrogates
    st.sampled_from(["nul", "long", "long token", "blank", "latin-1"]).map(lambda k: (k, None)),
)


def render(kind, value, number: int) -> bytes:
    if kind == "record":
        return json.dumps({"id": f"L{number}", "text": value}, ensure_ascii=number % 2 == 0).encode()
    if kind == "no text":
        return json.dumps({"id": f"L{number}", "body": value}).encode()
    if kind == "garbage":
        return b"{" + value.replace(b"\n", b" ").replace(b"\r", b" ")
    if kind == "escaped":
        return json.dumps({"id": f"L{number}", "text": value}).encode()  # \\udXXX escapes survive
    return {"nul": b'{"text": "a\\u0000b"}', "long": json.dumps({"text": "w " * 80}).encode(),
            "long token": json.dumps({"text": "t" * 30}).encode(), "blank": b"   ",
            "latin-1": b'{"text": "\xe9t\xe9"}'}[kind]


def expected_records(lines: list[bytes]) -> list[int]:
    """Line numbers of the lines that are records: all but blank ones."""
    numbers = []
    for number, line in enumerate(lines, 1):
        try:
            blank = not line.decode("utf-8").strip()
        except UnicodeDecodeError:
            blank = False
        if not blank:
            numbers.append(number)
    return numbers


@pytest.fixture(scope="module")
def blank_nlp(blank_dir):
    return spacy.load(blank_dir)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=40), st.sampled_from([1, 3, 16]))
def test_fuzz_read_equals_tagged_plus_rejected(blank_dir, blank_nlp, lines, batch_size):
    lines = [render(kind, value, n) for n, (kind, value) in enumerate(lines, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        source, out, errors = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl"), Path(tmp, "errors.jsonl")
        source.write_bytes(b"\n".join(lines) + b"\n")
        job = TagJob(input=str(source), output=str(out), errors=str(errors), pipeline=str(blank_dir),
                     input_format="jsonl", batch_size=batch_size, limits=Limits(max_chars=100, max_token_chars=20))
        counts = run_local(job, nlp=blank_nlp).counts
        tagged, rejected = rows(out), rows(errors)
    records = expected_records(lines)
    assert counts.read == counts.tagged + counts.rejected == len(records)
    assert (len(tagged), len(rejected)) == (counts.tagged, counts.rejected)
    # Every record is in exactly one of the two files, and the output keeps input order.
    tagged_lines = [int(r["id"][1:]) for r in tagged]
    assert tagged_lines == sorted(tagged_lines)
    assert sorted(tagged_lines + [r["line"] for r in rejected]) == records


@pytest.fixture
def loaded_once(monkeypatch):
    """``ner.load`` that loads each pipeline once for the whole test: loading is not
    what a fuzz test of the command is about, and costs a second or more each time."""
    import ner.loading

    cache, real = {}, ner.loading.load

    def load(path, **options):
        if str(path) not in cache:
            cache[str(path)] = real(path, **options)
        return cache[str(path)]

    monkeypatch.setattr(ner.loading, "load", load)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(LINE, min_size=1, max_size=12))
def test_fuzz_ner_tag_command(pipeline_dir, loaded_once, lines):
    lines = [render(kind, value, n) for n, (kind, value) in enumerate(lines, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        source, out, errors = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl"), Path(tmp, "errors.jsonl")
        source.write_bytes(b"\n".join(lines))
        assert main(["tag", str(source), "-o", str(out), "--errors", str(errors), "--pipeline", str(pipeline_dir),
                     "--max-chars", "100", "--max-token-chars", "20", "--batch-size", "2"]) == 0
        tagged, rejected = rows(out), rows(errors)
    assert len(tagged) + len(rejected) == len(expected_records(lines))
    for row in tagged:
        for entity in row["entities"]:
            assert row["text"][entity["start"]:entity["end"]] == entity["text"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(LINE, max_size=30))
def test_fuzz_read_jsonl_skips_exactly_the_bad_lines(caplog, lines):
    """The library reader in errors="skip" mode: every non-blank line is either a
    Record or one logged warning naming its line (UTF-8 input: the library reader
    reads text, so bytes that are not UTF-8 are ``ner tag``'s own reader's business)."""
    from ner.readers import read_jsonl

    lines = [render(kind, value, n) for n, (kind, value) in enumerate(lines, 1)]
    lines = [line for line in lines if _is_utf8(line)]
    caplog.clear()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "in.jsonl")
        source.write_bytes(b"\n".join(lines) + b"\n")
        with caplog.at_level("WARNING", logger="ner.readers"):
            records = list(read_jsonl(source, errors="skip"))
    skipped = [r.getMessage() for r in caplog.records if r.name == "ner.readers"]
    assert len(records) + len(skipped) == len(expected_records(lines))
    assert all(message.startswith(f"{source}:") for message in skipped)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 64), st.integers(1, 50))
def test_fuzz_numbered_lines_splits_like_bytes_split(data, block_size, max_bytes):
    lines = list(numbered_lines(_BlockReader(data), max_bytes, block_size))
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()  # a final line break ends the last line; it does not start a new one
    assert [n for n, _, _ in lines] == list(range(1, len(pieces) + 1))
    for i, ((_, got, size), piece) in enumerate(zip(lines, pieces)):
        expected_size = len(piece) + (1 if i < len(pieces) - 1 or data.endswith(b"\n") else 0)
        assert size == expected_size
        assert got == (piece.rstrip(b"\r") if expected_size <= max_bytes else None)


class _BlockReader:
    def __init__(self, data):
        self.data, self.position = data, 0

    def read(self, size):
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        return chunk


# --------------------------------------------------------------------------- resume


def write_input(path, n):
    words = ["Angela Merkel", "met", "Tim Cook", "in", "Berlin", "and", "Paris", "."]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(words[: 2 + i % 7])}) + "\n" for i in range(n)))


def test_an_interrupted_run_resumes_without_duplicates_or_losses(blank_dir, tmp_path, monkeypatch):
    from ner import tag_job

    source = tmp_path / "in.jsonl"
    write_input(source, 300)
    source.open("a").write("not json\n")
    reference = tmp_path / "reference.jsonl"
    run_local(TagJob(input=str(source), output=str(reference), errors=str(tmp_path / "ref-errors.jsonl"),
                     pipeline=str(blank_dir), input_format="jsonl", batch_size=2))

    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    job = TagJob(input=str(source), output=str(out), errors=str(errors), pipeline=str(blank_dir),
                 input_format="jsonl", batch_size=2)
    monkeypatch.setattr(tag_job, "CHECKPOINT_SECONDS", 0.0)
    appended = []
    real_append = tag_job.JobFiles.append

    def append_then_die(self, *args):
        real_append(self, *args)
        appended.append(1)
        if len(appended) == 5:
            self._out.write(b'{"half": "written')  # bytes past the checkpoint, as a kill leaves them
            raise KeyboardInterrupt

    monkeypatch.setattr(tag_job.JobFiles, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_local(job)
    monkeypatch.setattr(tag_job.JobFiles, "append", real_append)
    assert not out.exists() and Path(str(out) + ".partial").exists()  # never looks complete

    with pytest.raises(JobError, match="pass --resume"):
        run_local(job)
    job.resume = True
    summary = run_local(job)
    assert out.read_bytes() == reference.read_bytes()
    assert rows(errors) == rows(tmp_path / "ref-errors.jsonl")
    assert (summary.counts.read, summary.counts.tagged, summary.counts.rejected) == (301, 300, 1)
    assert not Path(str(out) + ".partial").exists() and not Path(str(out) + ".progress.json").exists()
    assert run_local(job).complete_already


def test_a_resume_of_a_different_job_is_refused(blank_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    write_input(source, 5)
    out = tmp_path / "out.jsonl"
    Path(str(out) + ".progress.json").write_text(json.dumps({"job": {"input": "elsewhere"}, "done": {},
                                                              "counts": {}, "bytes": {}}))
    job = TagJob(input=str(source), output=str(out), pipeline=str(blank_dir), input_format="jsonl", resume=True)
    with pytest.raises(JobError, match="different job"):
        run_local(job)


def test_kill_9_in_the_middle_then_resume(ruler_dir, tmp_path):
    """A real ``kill -9`` of ``ner tag --n-process 2`` (the parent and its spawned
    workers) right after its first checkpoint, then ``--resume``: the output equals an
    uninterrupted run's, record for record. (The ruler pipeline's entities do not depend
    on batching or threads, so the comparison can be exact.)"""
    source = tmp_path / "in.jsonl"
    write_input(source, 20_000)  # seconds of work after the first checkpoint, on any machine
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    args = [str(source), "-o", str(out), "--errors", str(errors), "--pipeline", str(ruler_dir)]
    process = subprocess.Popen([sys.executable, "-m", "ner.cli", "tag", *args, "--n-process", "2", "--batch-size", "2"],
                               start_new_session=True, stderr=subprocess.PIPE)
    progress = Path(str(out) + ".progress.json")
    deadline = time.monotonic() + 600  # generous: the machine may be busy
    while process.poll() is None and not progress.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.killpg(process.pid, signal.SIGKILL)  # the parent and its worker processes
    process.wait()
    process.stderr.close()
    assert not out.exists() and Path(str(out) + ".partial").exists()
    done = json.loads(progress.read_text())["counts"]["read"]
    assert 16 <= done < 20_000

    assert main(["tag", *args, "--resume", "--batch-size", "64"]) == 0
    resumed = rows(out)
    assert [r["id"] for r in resumed] == [f"d{i}" for i in range(20_000)]
    reference = tmp_path / "reference.jsonl"
    assert main(["tag", str(source), "-o", str(reference), "--pipeline", str(ruler_dir), "--batch-size", "64"]) == 0
    assert out.read_bytes() == reference.read_bytes()


# --------------------------------------------------------------------------- formats and engines


def test_docbin_output_goes_through_the_job(ruler_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("Angela Merkel met Tim Cook in Berlin .\nParis .\n")
    docbin = tmp_path / "out.spacy"
    assert main(["tag", str(source), "-o", str(docbin), "--pipeline", str(ruler_dir)]) == 0
    from ner.readers import read_docbin

    records = list(read_docbin(docbin, spacy.blank("en").vocab))
    assert [len(r.spans) for r in records] == [3, 1]
    assert main(["tag", str(source), "-o", str(docbin), "--pipeline", str(ruler_dir), "--resume"]) == 2
