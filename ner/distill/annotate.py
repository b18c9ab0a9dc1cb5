"""The distillation run: passages in, teacher answers cached, spans out, every outcome counted.

For each passage: look the answer up in the cache, else ask the teacher (retrying what may
succeed later, with exponential back-off and jitter, up to ``retries`` times), store it,
parse it with the task's parser, align the mentions to character offsets. Passages are
worked on by ``concurrency`` threads and written in input order.

Nothing is dropped quietly. Every passage ends as one of:
- parsed / repaired: its answer was read (as it was / after repairs); the record is written
  with its aligned spans;
- empty: no text, written with no spans (so the n-th output is the n-th input);
- rejected: the answer could not be read as mentions;
- failed: the teacher did not answer, after the retries.
Rejected and failed passages, and the mentions that were rejected or could not be aligned,
go to ``<output stem>.rejects.jsonl`` with the reason and the raw answer; the counts go to
the dataset card (``<output stem>.card.json`` and ``.card.md``).

Outputs are written to ``*.partial`` files and renamed at the end, so an interrupted run
leaves no half file under the real name; the cache makes the rerun cheap.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ner.distill.alignment import Alignment, align_mentions
from ner.distill.backends import TeacherError
from ner.distill.cache import AnswerCache, answer_key
from ner.distill.tasks import AnswerRejected, ParsedAnswer, PromptTask
from ner.spans import Record
from ner.writers import record_to_json

STATUSES = ("parsed", "repaired", "empty", "rejected", "failed")


class DistillationAborted(RuntimeError):
    """The teacher failed so many passages in a row that going on would only hammer it."""


@dataclass
class PassageResult:
    record: Record
    status: str
    cached: bool = False
    attempts: int = 0
    answer: str | None = None
    reason: str | None = None
    parsed: ParsedAnswer | None = None
    alignment: Alignment | None = None


@dataclass
class Distiller:
    """Turns one passage into a PassageResult (thread-safe: the cache and teachers are)."""

    teacher: object
    task: PromptTask
    cache: AnswerCache
    labels: list[str] | None = None
    retries: int = 3
    backoff: float = 0.5
    max_tokens: int = 512
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self):
        self.task.check_labels(self.labels)
        self._schema = self.task.response_schema(self.labels)

    def annotate(self, record: Record) -> PassageResult:
        if not record.text.strip():
            return PassageResult(Record(record.text, [], record.id), "empty")
        messages = self.task.messages(record.text, self.labels)
        key = answer_key(self.teacher.model, self.task.id, messages)
        answer, attempts = self.cache.get(key), 0
        cached = answer is not None
        if not cached:
            answer, attempts, error = self._ask(messages)
            if answer is None:
                return PassageResult(Record(record.text, [], record.id), "failed", attempts=attempts, reason=error)
            self.cache.put(key, answer, model=self.teacher.model, prompt=self.task.id)
        result = PassageResult(Record(record.text, [], record.id), "parsed", cached, attempts, answer)
        try:
            result.parsed = self.task.parse(answer, self.labels)
        except AnswerRejected as rejection:
            result.status, result.reason = "rejected", rejection.reason
            return result
        result.status = "repaired" if result.parsed.repairs else "parsed"
        result.alignment = align_mentions(record.text, result.parsed.mentions)
        result.record.spans = result.alignment.spans
        return result

    def _ask(self, messages) -> tuple[str | None, int, str | None]:
        """(answer or None, requests sent, the last error)."""
        for attempt in range(self.retries + 1):
            try:
                answer = self.teacher.complete(messages, schema=self._schema, max_tokens=self.max_tokens)
                return answer, attempt + 1, None
            except TeacherError as error:
                if not error.retryable or attempt == self.retries:
                    return None, attempt + 1, str(error)
                # The server's Retry-After may lengthen the back-off, never shorten it; the
                # jitter keeps workers that failed together from all coming back together.
                delay = max(self.backoff * 2 ** attempt, error.retry_after or 0.0)
                self.sleep(min(delay, 60.0) * (1.0 + 0.25 * random.random()))
        raise AssertionError("unreachable")


def annotate_in_order(distiller: Distiller, records: Iterable[Record], concurrency: int) -> Iterator[PassageResult]:
    """Results in input order, at most ``concurrency`` passages in flight (plus as many
    queued, so a slow passage does not stall the workers)."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="distill")
    pending = deque()
    try:
        for record in records:
            pending.append(pool.submit(distiller.annotate, record))
            if len(pending) >= 2 * concurrency:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- counts


@dataclass
class DistillCounts:
    passages: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)
    repairs: Counter = field(default_factory=Counter)
    mentions: Counter = field(default_factory=Counter)
    spans: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    def add(self, result: PassageResult) -> None:
        self.passages["total"] += 1
        self.passages[result.status] += 1
        self.passages["from_cache"] += result.cached
        self.passages["asked"] += result.attempts > 0
        self.requests["sent"] += result.attempts
        self.requests["retries"] += max(0, result.attempts - 1)
        if result.reason:
            self.reasons[result.reason[:120]] += 1
        if result.parsed is not None:
            self.repairs.update(result.parsed.repairs)
            self.mentions["rejected"] += len(result.parsed.rejected)
            self.reasons.update(reason for _, reason in result.parsed.rejected)
        if result.alignment is not None:
            alignment = result.alignment
            self.mentions["exact"] += len(alignment.exact)
            self.mentions["tolerant"] += len(alignment.tolerant)
            self.mentions["unalignable"] += len(alignment.unalignable)
            self.spans["written"] += len(alignment.spans)
            self.spans["overlapping_skipped"] += alignment.overlapping
            self.labels.update(span.label for span in alignment.spans)

    def as_dict(self) -> dict:
        passages = {name: self.passages[name] for name in ("total", *STATUSES, "from_cache", "asked")}
        answered = passages["parsed"] + passages["repaired"] + passages["rejected"]
        mentions = {name: self.mentions[name] for name in ("exact", "tolerant", "unalignable", "rejected")}
        mentions["returned"] = sum(mentions.values())
        non_empty = passages["total"] - passages["empty"]
        return {
            "passages": passages,
            "requests": {name: self.requests[name] for name in ("sent", "retries")},
            "answers": {"parsed": passages["parsed"], "repaired": passages["repaired"],
                        "rejected": passages["rejected"]},
            "repairs": dict(self.repairs.most_common()),
            "mentions": mentions,
            "spans": {name: self.spans[name] for name in ("written", "overlapping_skipped")},
            "failure_rates": {
                "passages_failed": _rate(passages["failed"], non_empty),
                "answers_rejected": _rate(passages["rejected"], answered),
                "answers_repaired": _rate(passages["repaired"], answered),
                "mentions_unalignable": _rate(mentions["unalignable"], mentions["returned"]),
                "mentions_rejected": _rate(mentions["rejected"], mentions["returned"]),
            },
            "label_histogram": dict(self.labels.most_common()),
            "reasons": dict(self.reasons.most_common(20)),
        }


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


# --------------------------------------------------------------------------- the run


def output_paths(output) -> dict[str, Path]:
    """Where a run writes: the records, the rejects, and the card (JSON and Markdown)."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix else output
    return {"records": output, "rejects": Path(f"{stem}.rejects.jsonl"),
            "card_json": Path(f"{stem}.card.json"), "card_md": Path(f"{stem}.card.md")}


def distill(records: Iterable[Record], output, distiller: Distiller, *, teacher_name: str,
            concurrency: int = 4, input_name: str = "", progress=None, abort_after: int = 20) -> dict:
    """Annotate ``records`` into ``output`` (JSONL); write the rejects and the dataset card;
    return the card. ``progress`` wraps the result iterator (e.g. tqdm). Raises
    DistillationAborted after ``abort_after`` failed passages in a row."""
    paths = output_paths(output)
    paths["records"].parent.mkdir(parents=True, exist_ok=True)
    partial = {name: Path(f"{path}.partial") for name, path in paths.items() if name in ("records", "rejects")}
    counts, started, failed_in_a_row = DistillCounts(), time.perf_counter(), 0
    provenance = {"teacher": distiller.teacher.model, "prompt": distiller.task.id}
    if distiller.labels:
        provenance["labels"] = list(distiller.labels)
    results = annotate_in_order(distiller, _with_ids(records, input_name), concurrency)
    try:
        with open(partial["records"], "w", encoding="utf-8", newline="\n") as out, \
                open(partial["rejects"], "w", encoding="utf-8", newline="\n") as rejects:
            for result in progress(results) if progress else results:
                counts.add(result)
                failed_in_a_row = failed_in_a_row + 1 if result.status == "failed" else 0
                if failed_in_a_row >= abort_after:
                    raise DistillationAborted(f"{failed_in_a_row} passages in a row failed; last: {result.reason}")
                if result.status in ("parsed", "repaired", "empty"):
                    out.write(json.dumps({**_record_json(result.record), **provenance}, ensure_ascii=False) + "\n")
                problem = _problem(result)
                if problem:
                    # default=repr: a Python-literal answer can hold sets or bytes
                    rejects.write(json.dumps(problem, ensure_ascii=False, default=repr) + "\n")
    except BaseException:
        results.close()
        raise
    for name, path in partial.items():
        os.replace(path, paths[name])
    card = {
        "teacher": teacher_name, "model": distiller.teacher.model, "prompt": distiller.task.id,
        "labels": distiller.labels, "input": input_name, "output": str(paths["records"]),
        "rejects": str(paths["rejects"]), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2), "concurrency": concurrency,
        **counts.as_dict(),
    }
    paths["card_json"].write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["card_md"].write_text(card_markdown(card), encoding="utf-8")
    return card


def _with_ids(records: Iterable[Record], input_name: str) -> Iterator[Record]:
    for number, record in enumerate(records, 1):
        if record.id is None:
            record.id = f"{input_name}:{number}"
        yield record


def _record_json(record: Record) -> dict:
    item = record_to_json(record)
    for entity in item["entities"]:
        del entity["score"]  # a teacher's answer has no calibrated score
    return item


def _problem(result: PassageResult) -> dict | None:
    """The rejects-file line of a passage that was not used, or not all of it; else None."""
    rejected = result.parsed.rejected if result.parsed is not None else []
    unalignable = result.alignment.unalignable if result.alignment is not None else []
    if result.status not in ("rejected", "failed") and not rejected and not unalignable:
        return None
    problem = {"id": result.record.id, "status": result.status, "reason": result.reason}
    if rejected:
        problem["rejected_mentions"] = [[item, reason] for item, reason in rejected]
    if unalignable:
        problem["unalignable"] = [list(pair) for pair in unalignable]
    return {**problem, "answer": result.answer, "text": result.record.text}


def card_markdown(card: dict) -> str:
    """The dataset card as Markdown: provenance, counts, failure rates, label histogram."""
    lines = [f"# Distilled dataset: `{Path(card['output']).name}`", "",
             f"- teacher: `{card['teacher']}` (model `{card['model']}`)",
             f"- prompt: `{card['prompt']}`" + (f", labels: {', '.join(card['labels'])}" if card["labels"] else ""),
             f"- input: `{card['input']}`",
             f"- written: {card['created']}, in {card['seconds']} s with concurrency {card['concurrency']}",
             f"- rejects (with reasons and raw answers): `{Path(card['rejects']).name}`", "",
             "| counts | |", "|---|---|"]
    for group in ("passages", "requests", "answers", "repairs", "mentions", "spans"):
        lines += [f"| {group}: {name} | {value:,} |" for name, value in card[group].items()]
    lines += ["", "| failure rate | |", "|---|---|"]
    lines += [f"| {name} | {100 * value:.2f}% |" for name, value in card["failure_rates"].items()]
    lines += ["", "| label | spans |", "|---|---|"]
    lines += [f"| {label} | {count:,} |" for label, count in list(card["label_histogram"].items())[:50]]
    if len(card["label_histogram"]) > 50:
        lines.append(f"| ({len(card['label_histogram']) - 50} more labels in the JSON card) | |")
    if card["reasons"]:
        lines += ["", "| reason (rejected or failed) | count |", "|---|---|"]
        lines += [f"| {reason.replace('|', '/')} | {count:,} |" for reason, count in card["reasons"].items()]
    return "\n".join(lines) + "\n"
