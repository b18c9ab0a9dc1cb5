"""What ``ner tag`` runs: a tagging job over an input of any size that loses nothing.

Every input record ends up in exactly one place: the output (tagged) or the errors file
(rejected, with its line number and the reason), so read = tagged + rejected always.
Reading is byte-level and line by line: one line of invalid UTF-8 or invalid JSON is one
rejected record, not the end of the run, and a line is never held in memory past a cap.

The output is written to ``OUTPUT.partial`` and renamed to ``OUTPUT`` when the job is
done, so a file under the final name is always complete. Every second or so, between
two chunks of records, the partial files are synced and ``OUTPUT.progress.json``
records how far the input was read and how many bytes of output belong to it;
``--resume`` truncates the partial files to those sizes and reads on from there, so a
run killed at any instant (even ``kill -9``) continues without a duplicated or a lost
record.

Engines: in this process, in N local worker processes (``ner.tagging``), or on Ray
(``ner.ray_tagging``); all three share the reading, the limits and the output files.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ner.spans import FormatError, Record

LINE_FORMATS = ("txt", "jsonl")
CHECKPOINT_SECONDS = 1.0


class JobError(ValueError):
    """A job that cannot start or go on as asked (a resume that does not fit, ...)."""


@dataclass(frozen=True)
class Limits:
    """Caps on one record; 0 turns a cap off. A record over a cap is rejected, never
    truncated, so the user knows which records were not tagged."""

    # 1,000,000 characters is about 170,000 words: minutes of CPU with a transformer
    # encoder, and a memory peak the encoder's word blocks keep bounded.
    max_chars: int = 1_000_000
    # A "word" of thousands of characters (base64, a run of one letter) becomes
    # thousands of subwords: a 10,000-character token costs as much as a
    # 2,000-word document and finds no entity.
    max_token_chars: int = 1_000

    @property
    def max_line_bytes(self) -> int | None:
        # A JSON line spends up to 12 bytes per character (a \\uXXXX surrogate pair);
        # past this a line is over max_chars whatever it holds, and is not read whole.
        return max(12 * self.max_chars + 4096, 1 << 20) if self.max_chars else None


@dataclass
class Entry:
    """One input record on its way through a job: tagged when ``reason`` is None."""

    source: str
    line: int  # the input line it starts on, 1-based
    position: int  # how far the input was read with it (a line, or a CoNLL record number)
    record: Record | None = None
    raw: str | bytes | None = None  # the input as read, for the errors file
    reason: str | None = None
    size: int = 0  # bytes of a line too long to keep

    def reject(self, reason: str) -> "Entry":
        self.reason = reason
        return self

    def error_json(self) -> dict:
        row = {"source": self.source, "line": self.line, "reason": self.reason}
        if isinstance(self.raw, bytes):
            row["record_base64"] = base64.b64encode(self.raw).decode("ascii")
        elif self.raw is not None:
            row["record"] = self.raw
        elif self.record is not None:
            row["record"] = {"id": self.record.id, "text": self.record.text}
        else:
            row["record"] = None  # a line too long to keep: its line number finds it
            row["bytes"] = self.size
        return row


# --------------------------------------------------------------------------- reading


def read_entries(source, *, format: str, text_field: str = "text", limits: Limits = Limits(),
                 after: int = 0) -> Iterator[Entry]:
    """Entries of a path or stream, in input order, skipping those at or before
    position ``after`` (a resumed job's progress)."""
    name = source_name(source)
    if format in LINE_FORMATS:
        # read_text's ids: "<file name>:<line>", "<lines>:<line>" for a stream.
        id_prefix = Path(source).name if isinstance(source, (str, os.PathLike)) else "<lines>"
        with _binary(source) as stream:
            for line_number, data, size in numbered_lines(stream, limits.max_line_bytes):
                if line_number <= after:
                    continue
                entry = parse_line(name, line_number, data, size, format=format, text_field=text_field,
                                   limits=limits, id_prefix=id_prefix)
                if entry is not None:
                    yield entry
    elif format == "conll":
        yield from _conll_entries(source, name, limits, after)
    else:
        raise JobError(f"ner tag reads txt, jsonl or conll, not {format!r}")


def numbered_lines(stream, max_bytes: int | None, block_size: int = 1 << 20) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, the line's bytes without its line break, its size in bytes) for
    each line of a binary stream read in blocks (any object with ``read(n)``, a Ray
    file included). The bytes are None for a line longer than ``max_bytes``, which is
    skipped through instead of being held whole."""
    # read1 hands over what a pipe has now, so a slow producer's lines are tagged as
    # they come instead of once a whole block has arrived.
    read = getattr(stream, "read1", stream.read)
    line_number, pending, skipped = 0, b"", None  # skipped: bytes so far of a line too long
    while True:
        block = read(block_size)
        if not block:
            break
        start = 0
        while True:
            end = block.find(b"\n", start)
            piece = block[start:] if end < 0 else block[start:end + 1]
            if skipped is not None:
                skipped += len(piece)
            else:
                pending = pending + piece if pending else piece
                if max_bytes and len(pending) > max_bytes:
                    skipped, pending = len(pending), b""
            if end < 0:
                break
            line_number += 1
            if skipped is not None:
                yield line_number, None, skipped
            else:
                yield line_number, pending.rstrip(b"\r\n"), len(pending)
            pending, skipped, start = b"", None, end + 1
    if skipped is not None:
        yield line_number + 1, None, skipped
    elif pending:
        yield line_number + 1, pending.rstrip(b"\r\n"), len(pending)


def parse_line(source: str, line_number: int, data: bytes | None, size: int, *, format: str,
               text_field: str = "text", limits: Limits = Limits(), id_prefix: str | None = None) -> Entry | None:
    """One input line as an Entry, rejected with the reason when it cannot be tagged;
    None for a blank JSON line (not a record). Plain-text records get the id
    ``<id_prefix>:<line>`` (the file name by default)."""
    entry = Entry(source, line_number, line_number)
    if data is None:
        entry.size = size
        return entry.reject(f"line of {size:,} bytes is longer than any record under "
                            f"--max-chars {limits.max_chars:,} can be; not read")
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError as error:
        entry.raw = data
        return entry.reject(f"invalid UTF-8 at byte {error.start} of the line")
    entry.raw = line
    if format == "txt":
        entry.raw = None  # the record's text is the line
        prefix = id_prefix if id_prefix is not None else Path(source).name
        entry.record = Record(line, id=f"{prefix}:{line_number}", meta={"line": line_number})
    else:
        if not line.strip():
            return None
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            return entry.reject(f"invalid JSON: {error.msg} (column {error.colno})")
        if not isinstance(item, dict):
            return entry.reject("not a JSON object")
        text = item.get(text_field)
        if not isinstance(text, str):
            return entry.reject(f"missing or non-string field {text_field!r}")
        record_id = item.get("id")
        entry.record = Record(text, id=None if record_id is None else str(record_id))
    reason = screen(entry.record, limits)
    return entry.reject(reason) if reason else entry


def screen(record: Record, limits: Limits) -> str | None:
    """Why a well-formed record is still not to be tagged, or None."""
    text = record.text
    if limits.max_chars and len(text) > limits.max_chars:
        return f"text has {len(text):,} characters, over --max-chars {limits.max_chars:,}"
    if "\x00" in text:
        return f"text holds a NUL character at offset {text.index(chr(0))} (binary data?)"
    for value in (text, record.id or ""):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate from a \ud800-style escape
            return f"holds an unpaired surrogate {value[error.start]!r} at offset {error.start}: not writable as UTF-8"
    if limits.max_token_chars and len(text) > limits.max_token_chars:
        longest = max(text.split(), key=len, default="")
        if len(longest) > limits.max_token_chars:
            return (f"a token of {len(longest):,} characters at offset {text.find(longest)}, "
                    f"over --max-token-chars {limits.max_token_chars:,}")
    return None


def _conll_entries(source, name, limits, after):
    """CoNLL records span many lines, so a structural error (a line with the wrong
    columns) cannot be cut out as one record: it stops the job with its file and line."""
    from ner.readers import read_records

    # Tags in a CoNLL input are ignored; the widest scheme accepts them all, and needs no
    # detection pass (stdin can be read once only).
    records = read_records(str(source) if isinstance(source, os.PathLike) else source, format="conll", scheme="BIOES")
    position = 0
    try:
        for record in records:
            position += 1
            if position <= after:
                continue
            entry = Entry(name, record.meta.get("line", position), position, record=record)
            reason = screen(record, limits)
            yield entry.reject(reason) if reason else entry
    except UnicodeDecodeError as error:
        raise FormatError(name, None, f"invalid UTF-8 in a CoNLL file (byte {error.start} of a block); "
                                      f"CoNLL input must be valid UTF-8 throughout") from None


def source_name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "<stdin>"


def _binary(source):
    """A binary stream of the input, to close after use (a path) or not (stdin)."""
    if isinstance(source, (str, os.PathLike)):
        return open(source, "rb")
    if hasattr(source, "buffer"):
        return contextlib.nullcontext(source.buffer)
    if isinstance(source, io.TextIOBase):  # an in-memory text stream (tests, notebooks)
        return contextlib.nullcontext(io.BytesIO(source.read().encode("utf-8", "surrogateescape")))
    return contextlib.nullcontext(source)


# --------------------------------------------------------------------------- output files


@dataclass
class Counts:
    read: int = 0
    tagged: int = 0
    rejected: int = 0
    words: int = 0  # whitespace-separated words of the tagged records

    def add(self, other: "Counts") -> None:
        self.read += other.read
        self.tagged += other.tagged
        self.rejected += other.rejected
        self.words += other.words


@dataclass
class Progress:
    """What a resumed job starts from: the last position done per input, the counts so far."""

    done: dict[str, int] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    resumed: bool = False


class JobFiles:
    """The output and errors files of a job, written so that a partial run never looks
    complete and a killed run can be resumed (see the module docstring).

    ``output`` "-" is stdout (no resume); ``errors`` None sends rejections to stderr.
    ``job`` describes the job (input, pipeline, options): a resume with a different
    job is refused rather than mixing two jobs' records in one file. ``resumable``
    False (a DocBin, written whole at the end) keeps no progress file.
    """

    def __init__(self, output: str, errors: str | None, *, job: dict, resume: bool = False, resumable: bool = True):
        self.output, self.errors, self.job, self.resume = output, errors, job, resume
        self.to_stdout = output == "-"
        self.progress_path = None if self.to_stdout or not resumable else Path(output + ".progress.json")
        self._out = self._err = None
        self._done, self._counts = {}, Counts()
        self.checkpoint_seconds, self._last_checkpoint = CHECKPOINT_SECONDS, float("-inf")

    # ------------------------------------------------------------------ start

    def start(self) -> Progress | None:
        """Open the files; the progress to go on from, or None when ``--resume`` finds
        the job already complete."""
        if self.to_stdout and self.resume:
            raise JobError("--resume needs -o FILE: a job writing to stdout cannot be resumed")
        saved = self._saved_progress()
        if saved is not None and not self.resume:
            raise JobError(f"{self.progress_path} holds an interrupted run of this output: "
                             f"pass --resume to continue it, or delete it to start again")
        if saved is not None and saved.get("job") != self.job:
            raise JobError(f"{self.progress_path} is the progress of a different job "
                             f"({_job_difference(saved.get('job') or {}, self.job)}); delete it to start again")
        if saved is not None and saved.get("finished"):
            self._rename_partials()  # killed while giving the files their final names
            return None
        if saved is None and self.resume and not self.to_stdout and Path(self.output).exists():
            return None
        progress, sizes = Progress(), {"output": 0, "errors": 0}
        if saved is not None:
            progress = Progress(saved["done"], Counts(**saved["counts"]), resumed=True)
            sizes = saved["bytes"]
        self._out = _StdStream(sys.stdout) if self.to_stdout else _PartialFile(self.output, sizes["output"])
        if self.errors:
            self._err = _PartialFile(self.errors, sizes["errors"])
        self._done, self._counts = dict(progress.done), Counts(**asdict(progress.counts))
        return progress

    def _saved_progress(self) -> dict | None:
        if self.progress_path is None or not self.progress_path.is_file():
            return None
        try:
            return json.loads(self.progress_path.read_text(encoding="utf-8"))
        except ValueError:
            raise JobError(f"{self.progress_path} is damaged; delete it (and {self.output}.partial) "
                             f"to start the job again") from None

    # ------------------------------------------------------------------ append

    def append(self, output: bytes, errors: list[dict], done: dict[str, int], counts: Counts) -> None:
        """Write one chunk's output and rejections (``Entry.error_json`` rows), then
        record the progress they make."""
        self._out.write(output)
        self._write_errors(errors)
        self._done.update(done)
        self._counts.add(counts)
        # A sync costs ~10 ms: once a second at most, so a fast pipeline is not slowed
        # down by it; a resume then redoes at most a second of work.
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self._checkpoint()

    def _checkpoint(self, finished: bool = False) -> None:
        self._last_checkpoint = time.monotonic()
        if self.progress_path is None:
            self._out.sync()
            return
        # Data first, then the progress that vouches for it: a kill between the two
        # leaves bytes past the recorded sizes, which a resume cuts off.
        self._out.sync()
        if self._err is not None:
            self._err.sync()
        _write_atomically(self.progress_path, json.dumps({
            "job": self.job, "done": self._done, "counts": asdict(self._counts), "finished": finished,
            "bytes": {"output": self._out.tell(), "errors": self._err.tell() if self._err else 0},
        }))

    def _write_errors(self, errors: list[dict]) -> None:
        if self._err is not None:
            self._err.write(b"".join((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8", "replace")
                                     for row in errors))
        else:
            for row in errors:
                print(f"ner tag: rejected {row['source']}:{row['line']}: {row['reason']}", file=sys.stderr)

    # ------------------------------------------------------------------ finish

    def finish(self, final_output: bytes = b"") -> Counts:
        """Close the files and give them their final names; return the job's counts."""
        if final_output:
            self._out.write(final_output)
        self._checkpoint(finished=True)
        for stream in (self._out, self._err):
            if stream is not None:
                stream.close()
        self._rename_partials()
        return self._counts

    def _rename_partials(self) -> None:
        for name in (self.output, self.errors):
            if name and name != "-" and Path(name + ".partial").exists():
                os.replace(name + ".partial", name)
        if self.progress_path is not None:
            self.progress_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Leave the partial files as they are (an interrupted job)."""
        for stream in (self._out, self._err):
            if stream is not None:
                stream.close()

    @property
    def counts(self) -> Counts:
        return self._counts


class _PartialFile:
    def __init__(self, path: str, size: int):
        self.partial = Path(path + ".partial")
        mode = "r+b" if size and self.partial.exists() else "wb"
        self.handle = open(self.partial, mode)
        if size:
            if self.partial.stat().st_size < size:
                raise JobError(f"{self.partial} is shorter than its progress file says; "
                                 f"delete it and {path}.progress.json to start again")
            self.handle.truncate(size)  # drop what was written after the last checkpoint
            self.handle.seek(size)

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def tell(self) -> int:
        return self.handle.tell()

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


class _StdStream:
    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        if not data:
            return
        if hasattr(self.stream, "buffer"):
            self.stream.flush()
            self.stream.buffer.write(data)
            self.stream.buffer.flush()
        else:
            self.stream.write(data.decode("utf-8"))

    def tell(self) -> int:
        return 0

    def sync(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _job_difference(saved: dict, job: dict) -> str:
    changed = sorted(key for key in set(saved) | set(job) if saved.get(key) != job.get(key))
    return ", ".join(f"{key}: {saved.get(key)!r} then, {job.get(key)!r} now" for key in changed) or "unknown"


# --------------------------------------------------------------------------- formatting


def format_tagged(record: Record, output_format: str) -> bytes:
    """One tagged record in the output format, as UTF-8 bytes."""
    from ner.writers import write_records

    buffer = io.StringIO()
    write_records([record], buffer, format=output_format)
    return buffer.getvalue().encode("utf-8")


def count_words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------- the local engine


@dataclass
class TagJob:
    """Everything ``ner tag`` was asked to do."""

    input: str = "-"
    output: str = "-"
    errors: str | None = None
    pipeline: str = "en"
    input_format: str = "txt"
    output_format: str = "jsonl"
    text_field: str = "text"
    batch_size: int = 16
    n_process: int = 1
    resume: bool = False
    limits: Limits = field(default_factory=Limits)
    labels: list[str] | None = None  # the entity types asked for (zero-shot), or a subset of the pipeline's
    device: str | None = None  # where the pipeline's models run (a torch device); None: the CPU

    def description(self, engine: str = "local") -> dict:
        """What must not change between a run and its resumption."""
        source = Path(self.input)
        return {
            "engine": engine, "input": str(source.resolve()) if self.input != "-" else "-",
            "input_bytes": source.stat().st_size if self.input != "-" and source.is_file() else None,
            "pipeline": str(self.pipeline), "input_format": self.input_format, "output_format": self.output_format,
            "text_field": self.text_field, "limits": asdict(self.limits), "errors": self.errors,
            "labels": self.labels,
        }

    def files(self, engine: str = "local") -> JobFiles:
        return JobFiles(self.output, self.errors, job=self.description(engine), resume=self.resume,
                        resumable=self.output_format != "docbin")

    @property
    def chunk_size(self) -> int:
        return self.batch_size * 8


@dataclass
class Summary:
    """The counts of a job, and the words per second of this run (the counts of a
    resumed job include its earlier runs)."""

    counts: Counts
    seconds: float = 0.0
    words_this_run: int = 0
    resumed: bool = False
    errors: str | None = None
    complete_already: bool = False

    def line(self) -> str:
        if self.complete_already:
            return "ner tag: the output is complete already; nothing to resume"
        c = self.counts
        where = f" (see {self.errors})" if self.errors and c.rejected else ""
        speed = f" ({self.words_this_run / self.seconds:,.0f} words/s)" if self.seconds > 0 else ""
        resumed = "; resumed: the counts include the earlier runs" if self.resumed else ""
        return (f"ner tag: read {c.read:,} = tagged {c.tagged:,} + rejected {c.rejected:,}{where}; "
                f"{self.words_this_run:,} words tagged in {self.seconds:.1f} s{speed}{resumed}")


def run_local(job: TagJob, *, nlp=None, progress_bar=None) -> Summary:
    """Run ``job`` in this process (``n_process`` 1) or in ``n_process`` workers.
    ``nlp``: the job's pipeline, already loaded (``n_process`` 1 only)."""
    from ner.loading import check_device, check_pipeline

    if job.output_format == "docbin" and job.output == "-":
        raise JobError("--output-format docbin needs -o FILE")
    if job.output_format == "docbin" and job.resume:
        raise JobError("a DocBin is written whole at the end and cannot be resumed: use jsonl output")
    if job.resume and job.input == "-":
        raise JobError("--resume needs an input file: stdin cannot be read again")
    pipeline = check_pipeline(job.pipeline)
    if job.device:
        check_device(job.device)
    files = job.files()
    progress = files.start()
    if progress is None:
        return Summary(files.counts, complete_already=True)
    try:
        with _local_tagger(job, pipeline, nlp) as tag_chunks:
            started = time.perf_counter()  # after loading: words/s is the tagging rate
            source = sys.stdin if job.input == "-" else job.input
            name = source_name(source if source is sys.stdin else Path(source).resolve())
            entries = read_entries(source, format=job.input_format, text_field=job.text_field,
                                   limits=job.limits, after=progress.done.get(name, 0))
            docbin = [] if job.output_format == "docbin" else None
            for chunk, results in tag_chunks(_chunks(entries, job.chunk_size)):
                output, errors, counts = settle_chunk(chunk, results, job.output_format, docbin)
                files.append(output, [e.error_json() for e in errors], {name: chunk[-1].position}, counts)
                if progress_bar is not None:
                    progress_bar.update(len(chunk))
            final = _docbin_bytes(pipeline, docbin, files) if docbin is not None else b""
            seconds = time.perf_counter() - started
    except BaseException:
        files.close()
        raise
    counts = files.finish(final)
    return Summary(counts, seconds, counts.words - progress.counts.words, progress.resumed, job.errors)


def _chunks(entries, size: int):
    chunk = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _local_tagger(job: TagJob, pipeline: Path, nlp=None):
    """A function from chunks of entries to (chunk, what tag_or_reject gave for its
    records), in order, with the pipeline loaded here or in worker processes."""
    from ner.tagging import LongRunningPipeline, ProcessTagger, tag_or_reject

    if job.n_process <= 1:
        loaded = LongRunningPipeline(pipeline, nlp, labels=job.labels, device=job.device)
        yield lambda chunks: ((chunk, tag_or_reject(loaded.nlp, _records(chunk), batch_size=job.batch_size))
                              for chunk in chunks)
        return
    with ProcessTagger(pipeline, n_process=job.n_process, batch_size=job.batch_size, labels=job.labels,
                       device=job.device) as tagger:
        sent = collections.deque()  # chunks handed to the workers; results come back in order

        def tag_chunks(chunks):
            def to_workers():
                for chunk in chunks:
                    sent.append(chunk)
                    yield _records(chunk)

            for results in tagger.tag_chunks(to_workers()):
                yield sent.popleft(), results

        yield tag_chunks


def _records(chunk: list[Entry]) -> list[Record]:
    return [entry.record for entry in chunk if entry.reason is None]


def settle_chunk(chunk: list[Entry], results: list, output_format: str, docbin: list | None):
    """Merge a chunk with its tagging results: the output bytes, the rejected entries,
    and the counts. A record that cannot be written in the output format is rejected
    too, so nothing falls between the two files."""
    results = iter(results)
    output, errors, counts = [], [], Counts(read=len(chunk))
    for entry in chunk:
        if entry.reason is None:
            result = next(results)
            if isinstance(result, str):
                entry.reject(result)
            else:
                entry.record.spans = result
                if docbin is not None:
                    docbin.append(entry)
                    continue
                try:
                    output.append(format_tagged(entry.record, output_format))
                except (ValueError, UnicodeEncodeError) as error:
                    entry.reject(f"cannot be written as {output_format}: {error}")
        if entry.reason is not None:
            errors.append(entry)
            continue
        counts.tagged += 1
        counts.words += count_words(entry.record.text)
        entry.raw = None  # the output holds it now
    counts.rejected = len(errors)
    if docbin is not None:  # counted when the DocBin is written
        counts.read -= len([e for e in chunk if e.reason is None])
    return b"".join(output), errors, counts


def _docbin_bytes(pipeline: Path, entries: list[Entry], files: JobFiles) -> bytes:
    """The DocBin of every tagged record (spaCy serialises a DocBin whole); records
    whose spans do not fit the tokenizer's tokens are rejected."""
    import spacy
    from spacy.tokens import DocBin

    from ner.writers import record_to_doc

    # The pipeline's tokenizer and vocab without its components: the Docs must be
    # tokenised as the pipeline tokenises, and the model is not needed again.
    names = spacy.util.load_config(pipeline / "config.cfg")["nlp"]["pipeline"]
    nlp = spacy.load(pipeline, exclude=list(names))
    doc_bin, rejected, counts = DocBin(store_user_data=True), [], Counts()
    for entry in entries:
        counts.read += 1
        try:
            doc_bin.add(record_to_doc(entry.record, nlp))
        except ValueError as error:
            rejected.append(entry.reject(f"cannot be written as docbin: {error}"))
            continue
        counts.tagged += 1
        counts.words += count_words(entry.record.text)
    counts.rejected = len(rejected)
    files.append(b"", [e.error_json() for e in rejected], {}, counts)
    return doc_bin.to_bytes()
