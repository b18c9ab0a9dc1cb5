"""Tagging records with a pipeline: records in, the same records with entities out, in
input order. Pre-tokenised records (CoNLL) keep their words; plain text is tokenised by
the pipeline's own tokenizer.

Two ways to run: ``tag_records`` in this process, and ``ProcessTagger`` over N worker
processes for CPUs with more cores than one torch process uses well. ``tag_or_reject``
is what both use under the ``ner tag`` command: a record that makes the pipeline fail is
handed back with the reason instead of stopping the run.
"""
from __future__ import annotations

import collections
import contextlib
import os
import weakref

from ner.evaluation import predict_docs, record_to_doc
from ner.loading import PipelineError
from ner.spans import Record, Span

# Records are grouped by length so a batch is padded to similar lengths, and a batch
# holds at most this many characters per record slot: a few long documents then run
# in small batches instead of padding fifteen short ones up to their length.
CHARS_PER_SLOT = 2_000
# How many batches' worth of records are sorted by length together.
SORT_BUFFER_BATCHES = 8


def doc_spans(doc, spans_key: str = "ner") -> list[Span]:
    """The entities of a tagged Doc as character-offset Spans with scores."""
    group = doc.spans.get(spans_key) if spans_key in doc.spans else None
    if group is not None:
        scores = group.attrs.get("scores", [None] * len(group))
        return [Span(s.start_char, s.end_char, s.label_, score) for s, score in zip(group, scores)]
    # Another library's entity component sets no score extension.
    return [Span(e.start_char, e.end_char, e.label_, getattr(e._, "score", None)) for e in doc.ents]


def to_doc(nlp, record: Record):
    if record.tokens is not None:
        return record_to_doc(nlp.vocab, record)
    # The tokenizer itself, not nlp.make_doc: make_doc refuses texts past nlp.max_length
    # (1,000,000 characters, a guard for spaCy's parser); ner tag has its own --max-chars.
    return nlp.tokenizer(record.text)


def tag_records(nlp, records, *, batch_size: int = 16, spans_key: str = "ner"):
    """Yield each record with ``spans`` replaced by the pipeline's entities. Offsets
    refer to the record's own text, also for pre-tokenised records. Memory stays flat
    in the number of records: they are read, tagged and yielded a buffer at a time."""
    for buffer in _buffers(records, batch_size * SORT_BUFFER_BATCHES):
        for record, spans in zip(buffer, _tag_buffer(nlp, buffer, batch_size, spans_key)):
            record.spans = spans
            yield record


def tag_or_reject(nlp, records: list[Record], *, batch_size: int = 16, spans_key: str = "ner") -> list:
    """For each record, its entities as a list of Spans, or a string saying why the
    pipeline could not tag it. A batch that fails is retried one record at a time, so
    one bad record costs only itself."""
    results = []
    for buffer in _buffers(records, batch_size * SORT_BUFFER_BATCHES):
        try:
            results.extend(_tag_buffer(nlp, buffer, batch_size, spans_key))
        except Exception:  # find the record at fault; the others are tagged alone
            for record in buffer:
                try:
                    results.extend(_tag_buffer(nlp, [record], 1, spans_key))
                except Exception as error:
                    results.append(f"the pipeline failed on it: {type(error).__name__}: {error}"[:500])
    return results


def _buffers(records, size: int):
    buffer = []
    for record in records:
        buffer.append(record)
        if len(buffer) >= size:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def _tag_buffer(nlp, records: list[Record], batch_size: int, spans_key: str) -> list[list[Span]]:
    """Entities of each record, in the records' order."""
    spans: list = [None] * len(records)
    for batch in _length_batches(records, batch_size):
        with _strings_zone(nlp, len(batch)):
            docs = predict_docs(nlp, (to_doc(nlp, records[i]) for i in batch), len(batch))
            for i, doc in zip(batch, docs):
                found = doc_spans(doc, spans_key)
                spans[i] = _to_record_offsets(doc, records[i], found) if records[i].tokens is not None else found
    return spans


# Records tagged per pipeline, for _strings_zone.
_records_seen: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# The words of the first records a pipeline tags stay in its vocabulary for good.
WARM_RECORDS = 2_000


def _strings_zone(nlp, n_records: int):
    """spaCy's ``memory_zone``, which frees the strings and lexemes that Docs made in it
    add to the vocabulary: without it the vocabulary grows with every new word (a
    number, a name, a URL) of a million-document input. The zone also drops the
    tokenizer's cache, so the first ``WARM_RECORDS`` records are tagged outside it:
    their frequent words then stay cached, and the zone costs little after them."""
    seen = _records_seen.get(nlp, 0)
    _records_seen[nlp] = seen + n_records
    if seen < WARM_RECORDS or not hasattr(nlp, "memory_zone"):
        return contextlib.nullcontext()
    return nlp.memory_zone()


class LongRunningPipeline:
    """A pipeline for a job of any length: ``nlp`` is reloaded from ``path`` once spaCy's
    vocabulary has taken in ``RELOAD_AFTER_LEXEMES`` new words.

    ``memory_zone`` frees the words a batch added, but their keys stay in the hash
    tables of the vocabulary and the string store (about 20 bytes a distinct word, and
    the tables double as they fill): 200 MB of text with a million new numbers a minute
    grows by hundreds of MB. Reloading, as spaCy's authors advise for long runs, starts
    from clean tables; ``len(nlp.vocab)`` counts every word ever added, so it says when.
    """

    RELOAD_AFTER_LEXEMES = 1_000_000

    def __init__(self, path, nlp=None, *, labels: list[str] | None = None, device: str | None = None):
        import ner

        self.path = path
        self.labels = labels
        self.device = device
        self._nlp = nlp if nlp is not None else ner.load(path, labels=labels, device=device)
        self._loaded_with = len(self._nlp.vocab)

    @property
    def nlp(self):
        if len(self._nlp.vocab) - self._loaded_with > self.RELOAD_AFTER_LEXEMES:
            import gc

            import ner

            self._nlp = None
            gc.collect()  # free the old copy before loading the new: one copy at a time
            self._nlp = ner.load(self.path, labels=self.labels, device=self.device)
            self._loaded_with = len(self._nlp.vocab)
        return self._nlp


def _length_batches(records: list[Record], batch_size: int) -> list[list[int]]:
    """Indices of ``records`` in batches of similar length: at most ``batch_size``
    records, and at most ``batch_size * CHARS_PER_SLOT`` characters once padded to the
    longest; a record longer than that is a batch of its own."""
    budget = batch_size * CHARS_PER_SLOT
    order = sorted(range(len(records)), key=lambda i: len(records[i].text))
    batches, batch = [], []
    for i in order:
        padded = (len(batch) + 1) * len(records[i].text)
        if batch and (len(batch) >= batch_size or padded > budget):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def _to_record_offsets(doc, record, spans):
    """Docs built from words use single spaces; map their offsets back onto the
    record's own text through the word boundaries."""
    starts = {token.idx: record.tokens[token.i][0] for token in doc}
    ends = {token.idx + len(token.text): record.tokens[token.i][1] for token in doc}
    return [Span(starts[s.start], ends[s.end], s.label, s.score) for s in spans]


# --------------------------------------------------------------------------- worker processes


class WorkerDied(RuntimeError):
    """A worker process ended without a result (killed, out of memory)."""


class ProcessTagger:
    """``n_process`` worker processes that each load the pipeline once and tag lists of
    records with ``tag_or_reject``; results come back in the order the lists went in.

    Workers are spawned, not forked: a fork copies torch's thread pools in a state the
    child cannot use, which is the known hang of ``nlp.pipe(n_process=...)`` with
    transformer pipelines. Each worker runs torch on one thread, so N workers use N
    cores instead of fighting over them. At most two lists per worker are in flight, so
    memory stays flat however long the input is. Use it as a context manager.
    """

    def __init__(self, pipeline, *, n_process: int, batch_size: int = 16, spans_key: str = "ner",
                 labels: list[str] | None = None, device: str | None = None):
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing

        self.n_process = n_process
        with _one_thread_per_process():
            self.pool = ProcessPoolExecutor(
                n_process, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(str(pipeline), batch_size, spans_key, labels, device),
            )
            # Load the pipeline in every worker now: a damaged pipeline fails here, before
            # any input is read, and the load does not count as tagging time.
            self._results([self.pool.submit(_load_pipeline) for _ in range(n_process)])

    def tag_chunks(self, chunks):
        """For each list of records, in order, what ``tag_or_reject`` gives for it."""
        pending = collections.deque()
        try:
            for chunk in chunks:
                pending.append(self.pool.submit(_tag_chunk, chunk))
                if len(pending) >= 2 * self.n_process:
                    yield self._results([pending.popleft()])[0]
            while pending:
                yield self._results([pending.popleft()])[0]
        finally:
            for future in pending:
                future.cancel()

    def _results(self, futures):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return [future.result() for future in futures]
        except BrokenProcessPool:
            raise WorkerDied(
                "a tagging worker process died (out of memory, or killed); "
                "with -o FILE the records tagged so far are kept: rerun with --resume to go on"
            ) from None
        except PipelineError as error:  # raised in a worker: its traceback is the worker's
            raise PipelineError(str(error)) from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@contextlib.contextmanager
def _one_thread_per_process():
    """Spawned workers inherit the environment: OpenMP and MKL read it at start-up,
    before any code of ours could call ``torch.set_num_threads``."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_worker: dict = {}


def _start_worker(pipeline: str, batch_size: int, spans_key: str, labels: list[str] | None = None,
                  device: str | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    # The pipeline is loaded by a task, not here: an exception in an initializer only
    # breaks the pool, while one in a task reaches the parent with its message.
    _worker.update(pipeline=pipeline, batch_size=batch_size, spans_key=spans_key, labels=labels, device=device,
                   loaded=None)


def _load_pipeline() -> None:
    if _worker["loaded"] is None:
        _worker["loaded"] = LongRunningPipeline(_worker["pipeline"], labels=_worker["labels"], device=_worker["device"])


def _tag_chunk(records: list[Record]) -> list:
    _load_pipeline()
    return tag_or_reject(_worker["loaded"].nlp, records, batch_size=_worker["batch_size"],
                         spans_key=_worker["spans_key"])
