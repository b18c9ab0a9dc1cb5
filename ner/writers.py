"""Writers: Records out to the formats the suite reads back (and others' tools read).

Each writer is the inverse of a reader in ``ner.readers``: write → read gives the same
text, spans and tokens back, which is what the round-trip tests check. Writers stream:
they take any iterable of Records and hold one at a time (except the DocBin, which spaCy
serialises as one blob).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Iterable

from ner.spans import Record, Span, char_spans_to_word_spans, word_spans_to_tags


@contextlib.contextmanager
def _text_output(path_or_file):
    """Yield a writable text stream: the given one, or the named file opened as UTF-8."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8", newline="\n") as file:
            yield file
    else:
        yield path_or_file


def _whitespace_tokens(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in re.finditer(r"\S+", text)]


# --------------------------------------------------------------------------- JSON lines


def record_to_json(record: Record) -> dict:
    """The suite's JSON-lines object: ``{"id", "text", "entities": [{"start", "end",
    "label", "score", "text"}]}`` with character offsets, end exclusive."""
    entities = [
        {"start": s.start, "end": s.end, "label": s.label, "score": s.score, "text": record.text[s.start:s.end]}
        for s in record.spans
    ]
    return {"id": record.id, "text": record.text, "entities": entities}


def write_jsonl(records: Iterable[Record], file) -> int:
    """Write one JSON object per record (see ``record_to_json``); return the count."""
    count = 0
    with _text_output(file) as out:
        for record in records:
            out.write(json.dumps(record_to_json(record), ensure_ascii=False) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------- CoNLL


def write_conll(records: Iterable[Record], file, scheme: str = "BIO", *, documents: bool = False) -> int:
    """Write ``word<TAB>tag`` lines, a blank line after each sentence; return the count.

    Words come from ``record.tokens`` (whitespace tokenisation when absent) and sentences
    from ``record.sentences`` (the whole record when absent). ``documents=True`` starts
    each record with a ``-DOCSTART-`` line so that ``read_conll`` gives back one Record
    per record rather than one per sentence. Spans must fall on word edges and must not
    overlap (flat tags cannot express nesting); otherwise ValueError.
    """
    count = 0
    with _text_output(file) as out:
        for record in records:
            if documents:
                out.write("-DOCSTART-\tO\n\n")
            out.write(_conll_block(record, scheme))
            count += 1
    return count


def _conll_block(record: Record, scheme: str) -> str:
    tokens = record.tokens if record.tokens is not None else _whitespace_tokens(record.text)
    try:
        tags = word_spans_to_tags(len(tokens), char_spans_to_word_spans(tokens, record.spans), scheme)
    except ValueError as error:
        raise ValueError(f"record {record.id!r}: {error}") from None
    sentences = record.sentences or [(0, len(record.text))]
    lines, sentence_index = [], 0
    for (start, end), tag in zip(tokens, tags):
        word = record.text[start:end]
        if re.search(r"[\t\n\r]", word):
            raise ValueError(f"record {record.id!r}: word {word!r} holds a tab or newline")
        while sentence_index + 1 < len(sentences) and start >= sentences[sentence_index + 1][0]:
            sentence_index += 1
            lines.append("")
        lines.append(f"{word}\t{tag}")
    return "\n".join(lines) + "\n\n" if lines else ""


# --------------------------------------------------------------------------- spaCy DocBin


def record_to_doc(record: Record, nlp_or_vocab, *, spans_key: str = "sc"):
    """A Record → spaCy Doc with the record's exact text.

    Words are ``record.tokens`` (else ``nlp.make_doc`` when given a pipeline, else
    whitespace); text between words that is not one space becomes a whitespace token, as
    spaCy stores it. All spans go to ``doc.spans[spans_key]`` (nesting allowed) and the
    longest non-overlapping ones to ``doc.ents``. ``id``, ``labels`` and ``meta`` go to
    ``doc.user_data``. A span that does not fall on word edges raises ValueError.
    """
    from spacy.tokens import Doc
    from spacy.util import filter_spans

    vocab = getattr(nlp_or_vocab, "vocab", nlp_or_vocab)
    if record.tokens is None and hasattr(nlp_or_vocab, "make_doc"):
        doc = nlp_or_vocab.make_doc(record.text)
    else:
        tokens = record.tokens if record.tokens is not None else _whitespace_tokens(record.text)
        words, spaces, sent_starts = _doc_words(record.text, tokens, record.sentences)
        doc = Doc(vocab, words=words, spaces=spaces, sent_starts=sent_starts)
    spans = []
    for span in record.spans:
        doc_span = doc.char_span(span.start, span.end, label=span.label)
        if doc_span is None:
            raise ValueError(f"record {record.id!r}: span {span} does not fall on token edges")
        spans.append(doc_span)
    doc.spans[spans_key] = spans
    doc.ents = filter_spans(spans)
    doc.user_data.update({"id": record.id, "labels": record.labels, "meta": record.meta})
    return doc


def _doc_words(text: str, tokens, sentences):
    """Words, trailing-space flags and sentence starts that rebuild ``text`` exactly."""
    sentence_starts = {start for start, _ in sentences or []}
    words, spaces, starts, position = [], [], [], 0
    for start, end in [*tokens, (len(text), len(text))]:
        gap = text[position:start]
        if gap == " " and words:
            spaces[-1] = True
        elif gap:
            words.append(gap)  # "\n" between sentences, double spaces, untokenised text
            spaces.append(False)
            starts.append(False if sentences else None)
        if start < end:
            words.append(text[start:end])
            spaces.append(False)
            starts.append((start in sentence_starts) if sentences else None)
        position = end
    if sentences and starts:
        starts[0] = True
    return words, spaces, starts


def write_docbin(records: Iterable[Record], path, nlp_or_vocab, *, spans_key: str = "sc") -> int:
    """Write Records as a spaCy DocBin (``.spacy``), see ``record_to_doc``; return the count."""
    from spacy.tokens import DocBin

    doc_bin = DocBin(store_user_data=True)
    for record in records:
        doc_bin.add(record_to_doc(record, nlp_or_vocab, spans_key=spans_key))
    doc_bin.to_disk(path)
    return len(doc_bin)


# --------------------------------------------------------------------------- BRAT


def write_brat(record: Record, txt_path, ann_path) -> None:
    """Write one record as BRAT standoff: the text verbatim and one ``T`` line per span.

    Spans listed in ``meta["fragments"]`` (as ``read_brat`` keeps discontinuous ones) are
    written with their fragments. BRAT labels cannot hold whitespace: ValueError.
    """
    fragments = {(start, end, label): pieces for start, end, label, pieces in record.meta.get("fragments", [])}
    with open(txt_path, "w", encoding="utf-8", newline="") as file:
        file.write(record.text)
    with open(ann_path, "w", encoding="utf-8", newline="\n") as file:
        for number, span in enumerate(record.spans, 1):
            file.write(_brat_line(record.text, number, span, fragments.get((span.start, span.end, span.label))))


def _brat_line(text: str, number: int, span: Span, pieces) -> str:
    if not span.label or re.search(r"\s", span.label):
        raise ValueError(f"BRAT labels cannot be empty or contain whitespace: {span.label!r}")
    pieces = pieces or [[span.start, span.end]]
    offsets = ";".join(f"{start} {end}" for start, end in pieces)
    # BRAT's text column joins fragments with a space and must stay on one line.
    covered = " ".join(text[start:end] for start, end in pieces).replace("\r", " ").replace("\n", " ")
    return f"T{number}\t{span.label} {offsets}\t{covered}\n"


def write_brat_dir(records: Iterable[Record], directory) -> int:
    """Write each record as ``<id>.txt``/``<id>.ann`` in ``directory`` (index when id is None)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, record in enumerate(records, 1):
        stem = re.sub(r"[^\w.-]", "_", record.id) if record.id else str(count)
        write_brat(record, directory / f"{stem}.txt", directory / f"{stem}.ann")
    return count


# --------------------------------------------------------------------------- dispatch

_FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".conll": "conll", ".bio": "conll", ".tsv": "conll", ".spacy": "docbin"}


def write_records(records: Iterable[Record], path_or_file, format: str | None = None, **options) -> int:
    """Write Records as "jsonl", "conll", "docbin" (needs ``nlp_or_vocab=``) or "brat" (a
    folder); the format defaults to the path's extension. Returns the record count."""
    if format is None:
        suffix = Path(path_or_file).suffix if isinstance(path_or_file, (str, os.PathLike)) else ""
        format = _FORMAT_BY_SUFFIX.get(suffix)
    if format == "jsonl":
        return write_jsonl(records, path_or_file, **options)
    if format == "conll":
        return write_conll(records, path_or_file, **options)
    if format == "docbin":
        return write_docbin(records, path_or_file, **options)
    if format == "brat":
        return write_brat_dir(records, path_or_file)
    raise ValueError(f"unknown output format {format!r} for {path_or_file!r}; use jsonl, conll, docbin or brat")
