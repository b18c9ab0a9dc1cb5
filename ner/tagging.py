"""Tagging records with a pipeline: records in, the same records with entities out, in
input order. Pre-tokenised records (CoNLL) keep their words; plain text is tokenised by
the pipeline's own tokenizer."""
from __future__ import annotations

from ner.evaluation import predict_docs, record_to_doc
from ner.spans import Record, Span


def doc_spans(doc, spans_key: str = "ner") -> list[Span]:
    """The entities of a tagged Doc as character-offset Spans with scores."""
    group = doc.spans.get(spans_key) if spans_key in doc.spans else None
    if group is not None:
        scores = group.attrs.get("scores", [None] * len(group))
        return [Span(s.start_char, s.end_char, s.label_, score) for s, score in zip(group, scores)]
    return [Span(e.start_char, e.end_char, e.label_, e._.score) for e in doc.ents]


def to_doc(nlp, record: Record):
    return record_to_doc(nlp.vocab, record) if record.tokens is not None else nlp.make_doc(record.text)


def tag_records(nlp, records, *, batch_size: int = 16, spans_key: str = "ner"):
    """Yield each record with ``spans`` replaced by the pipeline's entities. Offsets
    refer to the record's own text, also for pre-tokenised records."""
    buffer_size = batch_size * 8
    buffer = []
    for record in records:
        buffer.append(record)
        if len(buffer) >= buffer_size:
            yield from _tag_buffer(nlp, buffer, batch_size, spans_key)
            buffer = []
    if buffer:
        yield from _tag_buffer(nlp, buffer, batch_size, spans_key)


def _tag_buffer(nlp, records, batch_size, spans_key):
    docs = predict_docs(nlp, (to_doc(nlp, r) for r in records), batch_size)
    for record, doc in zip(records, docs):
        spans = doc_spans(doc, spans_key)
        if record.tokens is not None:
            spans = _to_record_offsets(doc, record, spans)
        record.spans = spans
        yield record


def _to_record_offsets(doc, record, spans):
    """Docs built from words use single spaces; map their offsets back onto the
    record's own text through the word boundaries."""
    starts = {token.idx: record.tokens[token.i][0] for token in doc}
    ends = {token.idx + len(token.text): record.tokens[token.i][1] for token in doc}
    return [Span(starts[s.start], ends[s.end], s.label, s.score) for s in spans]
