"""Readers: one per on-disk format, each converting that format's span convention into Records.

Every format counts differently (IOB tags, inclusive or exclusive word indices, character
standoff, discontinuous fragments); each reader resolves its convention here, once, so the
rest of the suite only ever sees ``Record``/``Span`` with character offsets.

Readers are generators and keep memory flat: WikiNEuRal and Pile-NER files hold hundreds
of thousands of sentences, and long-document corpora hold multi-thousand-word records.

A malformed line raises ``FormatError(path, line_number, reason)`` so the user can open
the file at that line. Readers that take ``errors="skip"`` instead log a warning naming
the file and line and drop the smallest unit containing the problem (a sentence, a JSON
line), because one bad line in a 200k-sentence silver corpus should not block training.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ner.spans import (
    FormatError,
    Record,
    Span,
    join_words,
    tags_to_word_spans,
    word_spans_to_char_spans,
)

log = logging.getLogger(__name__)

ERROR_MODES = ("raise", "skip")
TAG_SCHEMES = ("auto", "BIO", "IOB1", "BIOES")
# BILOU's L-/U- are accepted with BIOES because the shared decoder treats them alike.
_TAG_PATTERNS = {
    "auto": re.compile(r"O|[BIESLU]-.+"),
    "BIO": re.compile(r"O|[BI]-.+"),
    "IOB1": re.compile(r"O|[BI]-.+"),
    "BIOES": re.compile(r"O|[BIESLU]-.+"),
}
_JSON_CHUNK = 1 << 20


def _open_lines(path_or_file):
    """A path is opened as UTF-8 text; an open text stream (stdin) is used as it is."""
    if isinstance(path_or_file, (str, os.PathLike)):
        return open(path_or_file, encoding="utf-8")
    return contextlib.nullcontext(path_or_file)


# --------------------------------------------------------------------------- errors


def _check_errors_mode(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be one of {ERROR_MODES}, not {errors!r}")


def _report(error: FormatError, errors: str) -> None:
    """Raise in "raise" mode, log in "skip" mode; the caller then drops the unit. (The
    internal "ignore" mode, for the scheme-detection pass, drops it silently.)"""
    if errors == "raise":
        raise error
    if errors == "skip":
        log.warning("%s (skipped)", error)


def _sorted_unique(spans: Iterable[Span]) -> list[Span]:
    # Sources repeat mentions (GLiNER lists, two GermEval levels); one copy is enough.
    return sorted(set(spans))


# --------------------------------------------------------------------------- CoNLL


@dataclass(frozen=True)
class _Layout:
    """Where the word and the tags sit on a CoNLL line."""

    columns: int | None
    token_column: int
    tag_columns: tuple[int, ...]
    separator: str | None
    comment_prefix: str | None


@dataclass
class _Sentence:
    words: list[str]
    tag_rows: list[list[str]]  # one tag list per tag column (GermEval has two levels)
    line_number: int
    comments: list[str] = field(default_factory=list)


class _DocStart:
    """The event for a ``-DOCSTART-`` line (one shared instance, ``_DOCSTART``)."""


_DOCSTART = _DocStart()


def detect_tag_scheme(sentences: Iterable[list[str]]) -> str:
    """Name the tag scheme of some tag sequences: "BIOES", "IOB1" or "BIO".

    BIOES if an E-/S-/L-/U- tag occurs; IOB1 if an ``I-X`` starts an entity (follows ``O``,
    another type, or the sentence start); BIO otherwise. Stops at the first evidence.
    """
    for tags in sentences:
        previous = None
        for tag in tags:
            prefix, _, kind = tag.partition("-")
            if prefix in ("E", "S", "L", "U"):
                return "BIOES"
            if prefix == "I" and kind != previous:
                return "IOB1"
            previous = kind if prefix in ("B", "I") else None
    return "BIO"


def read_conll(
    path,
    *,
    columns: int | None = None,
    token_column: int = 0,
    tag_column: int | tuple[int, ...] = -1,
    scheme: str = "auto",
    separator: str | None = None,
    documents: bool = True,
    comment_prefix: str | None = None,
    errors: str = "raise",
) -> Iterator[Record]:
    """Read a CoNLL-style file: one word per line, blank line between sentences.

    ``columns``: expected number of columns (None: the count on the first word line).
    ``token_column``/``tag_column``: indices, negative from the end (tag-first files such
    as MIT-movie: ``token_column=1, tag_column=0``); a tuple of tag columns reads several
    annotation levels (GermEval: ``tag_column=(2, 3)``), all kept in ``spans`` and the
    levels after the first also listed in ``meta["inner_spans"]``.
    ``separator``: None splits a line on tabs if it has one, else on runs of spaces.
    ``scheme``: "auto" detects BIO / IOB1 / BIOES from the whole file (a cheap first pass)
    and records it in ``meta["scheme"]`` so writers can write the source's scheme back; an
    explicit scheme also rejects tags outside it. Decoding is the same lenient decoder
    for every scheme (``tags_to_word_spans``).
    ``documents``: when the file starts with ``-DOCSTART-``, one Record per document
    (sentences joined by "\\n"); otherwise one Record per sentence.
    ``comment_prefix``: lines starting with it are comments (GermEval's "#" source lines),
    kept in ``meta["comments"]``; off by default since "#" is a plain token elsewhere.
    """
    _check_errors_mode(errors)
    if scheme not in TAG_SCHEMES:
        raise ValueError(f"scheme must be one of {TAG_SCHEMES}, not {scheme!r}")
    tag_columns = tag_column if isinstance(tag_column, (tuple, list)) else (tag_column,)
    layout = _Layout(columns, token_column, tuple(tag_columns), separator, comment_prefix)
    detected = _detect_file_scheme(path, layout) if scheme == "auto" else scheme
    events = _parse_conll(path, layout, scheme, errors)
    name = Path(path).name
    first = next(events, None)
    if first is None:
        return
    if documents and first is _DOCSTART:
        yield from _group_documents(events, name, detected)
    else:
        yield from _sentence_records(_prepend(first, events), name, detected)


def _prepend(first, rest):
    yield first
    yield from rest


def _detect_file_scheme(path, layout: _Layout) -> str:
    sentences = _parse_conll(path, layout, "auto", errors="ignore")
    return detect_tag_scheme(
        tags for event in sentences if isinstance(event, _Sentence) for tags in event.tag_rows
    )


def _parse_conll(path, layout: _Layout, scheme: str, errors: str):
    """Yield ``_DOCSTART`` and ``_Sentence`` events; malformed sentences per ``errors``."""
    columns = layout.columns
    if columns is not None:
        _check_column_indices(path, None, layout, columns)
    for block in _conll_blocks(path, layout.comment_prefix):
        if block is _DOCSTART:
            yield block
            continue
        lines, comments = block
        try:
            if columns is None:  # the first word line fixes the count for the whole file
                first_count = len(_split_fields(lines[0][1], layout.separator))
                _check_column_indices(path, lines[0][0], layout, first_count)
                columns = first_count
            sentence = _parse_sentence(path, lines, comments, layout, scheme, columns)
        except FormatError as error:
            _report(error, errors)
            continue
        yield sentence


def _conll_blocks(path, comment_prefix: str | None):
    """Yield ``_DOCSTART`` or (numbered lines, comments) per blank-line separated block."""
    lines, comments = [], []
    with _open_lines(path) as file:
        for line_number, line in enumerate(file, 1):
            line = line.rstrip("\r\n")
            is_docstart = line.lstrip().startswith("-DOCSTART-")
            if comment_prefix is not None and line.startswith(comment_prefix):
                comments.append(" ".join(line[len(comment_prefix):].split()))
            elif line.strip() and not is_docstart:
                lines.append((line_number, line))
            elif lines:  # whitespace-only lines end sentences too (WNUT-17 has "\t" lines)
                yield lines, comments
                lines, comments = [], []
            if is_docstart:
                yield _DOCSTART
    if lines:
        yield lines, comments


def _parse_sentence(path, lines, comments, layout: _Layout, scheme: str, columns: int):
    words, tag_rows = [], [[] for _ in layout.tag_columns]
    tag_pattern = _TAG_PATTERNS[scheme]
    for line_number, line in lines:
        fields = _split_fields(line, layout.separator)
        if len(fields) != columns:
            raise FormatError(path, line_number, f"expected {columns} columns, found {len(fields)}")
        word = fields[layout.token_column]
        if not word.strip():
            raise FormatError(path, line_number, "empty token")
        words.append(word)
        for row, column in zip(tag_rows, layout.tag_columns):
            tag = fields[column]
            if not tag_pattern.fullmatch(tag):
                raise FormatError(path, line_number, f"tag {tag!r} is not O or a {scheme} tag")
            row.append(tag)
    return _Sentence(words, tag_rows, lines[0][0], comments)


def _split_fields(line: str, separator: str | None) -> list[str]:
    if separator is not None:
        return line.rstrip(separator).split(separator)
    if "\t" in line:
        # A stray trailing tab (GermEval test line 19728) is not an extra empty column.
        return line.rstrip("\t ").split("\t")
    return line.split()


def _check_column_indices(path, line_number, layout: _Layout, n_columns: int) -> None:
    for column in (layout.token_column, *layout.tag_columns):
        if not -n_columns <= column < n_columns:
            raise FormatError(path, line_number, f"no column {column} in a {n_columns}-column line")


def _sentence_records(events, name: str, scheme: str) -> Iterator[Record]:
    index = 0
    for event in events:
        if isinstance(event, _Sentence):
            yield _build_record([event], f"{name}#{index}", scheme)
            index += 1


def _group_documents(events, name: str, scheme: str) -> Iterator[Record]:
    sentences, index = [], 0
    for event in events:
        if event is _DOCSTART:
            if sentences:
                yield _build_record(sentences, f"{name}#{index}", scheme)
                index += 1
            sentences = []
        else:
            sentences.append(event)
    if sentences:
        yield _build_record(sentences, f"{name}#{index}", scheme)


def _build_record(sentences: list[_Sentence], record_id: str, scheme: str) -> Record:
    text, tokens, sentence_offsets = _join_sentences([s.words for s in sentences])
    spans, inner, first_word = [], [], 0
    for sentence in sentences:
        for level, tags in enumerate(sentence.tag_rows):
            word_spans = [(s + first_word, e + first_word, label) for s, e, label in tags_to_word_spans(tags)]
            level_spans = word_spans_to_char_spans(tokens, word_spans)
            spans.extend(level_spans)
            if level:
                inner.extend((span.start, span.end, span.label) for span in level_spans)
        first_word += len(sentence.words)
    meta = {"line": sentences[0].line_number, "scheme": scheme}
    if len(sentences[0].tag_rows) > 1:
        meta["inner_spans"] = sorted(set(inner))
    comments = [comment for sentence in sentences for comment in sentence.comments]
    if comments:
        meta["comments"] = comments
    return Record(text, _sorted_unique(spans), record_id, tokens, sentence_offsets, meta=meta)


def _join_sentences(sentences: list[list[str]]):
    """Words joined by spaces within a sentence, sentences by "\\n"; return text, word
    offsets and sentence offsets."""
    parts, tokens, sentence_offsets, position = [], [], [], 0
    for words in sentences:
        text, offsets = join_words(words)
        parts.append(text)
        tokens.extend((start + position, end + position) for start, end in offsets)
        sentence_offsets.append((position, position + len(text)))
        position += len(text) + 1
    return "\n".join(parts), tokens, sentence_offsets


# --------------------------------------------------------------------------- word-index JSON formats


def _word_record(path, line_number, sentences, word_spans, record_id, meta=None) -> Record:
    """A Record over words (given per sentence) from (start, end_exclusive, label) spans
    counted in words over the whole record."""
    sentences = [words for words in sentences if words]
    n_words = sum(len(words) for words in sentences)
    if not all(isinstance(word, str) and word.strip() for words in sentences for word in words):
        raise FormatError(path, line_number, "tokens must be non-empty strings")
    for start, end, label in word_spans:
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= n_words):
            raise FormatError(path, line_number, f"span [{start}, {end}) {label!r} outside 0..{n_words}")
    text, tokens, sentence_offsets = _join_sentences(sentences)
    spans = word_spans_to_char_spans(tokens, word_spans)
    return Record(text, _sorted_unique(spans), record_id, tokens, sentence_offsets, meta=meta or {})


def _gliner_record(path, line_number, item, record_id) -> Record:
    """GLiNER's convention: ``[start, end_inclusive, label]`` word indices."""
    try:
        words, entities = item["tokenized_text"], item["ner"]
        word_spans = [(start, end + 1, label) for start, end, label in entities]
    except (KeyError, TypeError, ValueError) as error:
        raise FormatError(path, line_number, f"not a GLiNER item ({error!r})") from None
    return _word_record(path, line_number, [words], word_spans, record_id)


def read_gliner_json(path) -> Iterator[Record]:
    """GLiNER training JSON: one array of ``{"tokenized_text", "ner"}`` objects, read item
    by item so that multi-hundred-megabyte training files stream."""
    name = Path(path).name
    for index, (line_number, item) in enumerate(_iter_json_array(path)):
        yield _gliner_record(path, line_number, item, f"{name}#{index}")


def read_gliner_csv(path) -> Iterator[Record]:
    """GLiNER items as CSV (the textile corpus): columns ``tokenized_text`` and ``ner``
    hold Python-literal lists."""
    name = Path(path).name
    csv.field_size_limit(1 << 30)  # a row is a whole passage: longer than csv's 128 kB default
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        for index, row in enumerate(reader):
            try:
                item = {key: ast.literal_eval(row[key]) for key in ("tokenized_text", "ner")}
            except (KeyError, ValueError, SyntaxError, TypeError) as error:
                raise FormatError(path, reader.line_num, f"bad GLiNER CSV row ({error!r})") from None
            yield _gliner_record(path, reader.line_num, item, f"{name}#{index}")


def read_sener_jsonl(path) -> Iterator[Record]:
    """SeNER JSON lines: ``{"doc_id", "text": [words], "entity": [[start, end_exclusive,
    [words], label], ...]}``; one long document per line, mentions may nest."""
    for line_number, item in _iter_json_lines(path, "raise"):
        try:
            words, entities = item["text"], item["entity"]
            word_spans = [(start, end, label) for start, end, _, label in entities]
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(path, line_number, f"not a SeNER document ({error!r})") from None
        yield _word_record(path, line_number, [words], word_spans, str(item.get("doc_id", line_number)))


def read_scirex_json(path_or_dir) -> Iterator[Record]:
    """SciREX documents: a folder of one-JSON-per-file documents, one such file, or the
    release's JSON lines. ``sentences``/``ner`` are [start, end_exclusive) word spans;
    sections go to ``meta["sections"]`` as character offsets; relations are ignored."""
    path = Path(path_or_dir)
    if path.suffix == ".jsonl":
        for line_number, item in _iter_json_lines(path, "raise"):
            yield _scirex_record(path, line_number, item)
        return
    for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
        with open(file, encoding="utf-8") as handle:
            try:
                item = json.load(handle)
            except json.JSONDecodeError as error:
                raise FormatError(file, error.lineno, error.msg) from None
        yield _scirex_record(file, 1, item)


def _scirex_record(path, line_number, item) -> Record:
    try:
        words, sentences, ner, doc_id = item["words"], item["sentences"], item["ner"], item["doc_id"]
        word_spans = [(start, end, label) for start, end, label in ner]
    except (KeyError, TypeError, ValueError) as error:
        raise FormatError(path, line_number, f"not a SciREX document ({error!r})") from None
    starts, ends = [start for start, _ in sentences], [end for _, end in sentences]
    if starts != [0, *ends[:-1]] or ends[-1:] != [len(words)]:
        raise FormatError(path, line_number, "sentences do not tile the document's words")
    record = _word_record(path, line_number, [words[s:e] for s, e in sentences], word_spans, doc_id)
    tokens = record.tokens
    record.meta["sections"] = [(tokens[s][0], tokens[e - 1][1]) for s, e in item.get("sections", []) if e > s]
    return record


# --------------------------------------------------------------------------- BRAT standoff

_BRAT_IGNORED = ("R", "E", "A", "M", "N", "#", "*")  # relations, events, attributes, notes, ...


def read_brat(ann_path_or_dir) -> Iterator[Record]:
    """BRAT standoff: ``name.txt`` + ``name.ann`` (a pair, or every pair in a folder).

    Only text-bound ``T`` annotations become spans. A discontinuous one (``0 5;9 14``)
    becomes one span from its first start to its last end, and its fragments are kept in
    ``meta["fragments"]`` as ``[start, end, label, [[s, e], ...]]`` so that ``write_brat``
    can write them back.
    """
    path = Path(ann_path_or_dir)
    for ann_path in sorted(path.glob("*.ann")) if path.is_dir() else [path.with_suffix(".ann")]:
        yield _brat_record(ann_path)


def _brat_record(ann_path: Path) -> Record:
    # newline="" keeps "\r\n" as two characters: BRAT offsets count them.
    with open(ann_path.with_suffix(".txt"), encoding="utf-8", newline="") as file:
        text = file.read()
    spans, fragments = [], []
    with open(ann_path, encoding="utf-8", newline="") as file:
        for line_number, line in enumerate(file, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith(_BRAT_IGNORED):
                continue
            if not line.startswith("T"):
                raise FormatError(ann_path, line_number, "unknown BRAT annotation line")
            span, pieces = _parse_brat_textbound(ann_path, line_number, line, text)
            spans.append(span)
            if len(pieces) > 1:
                fragments.append([span.start, span.end, span.label, pieces])
    meta = {"fragments": fragments} if fragments else {}
    return Record(text, _sorted_unique(spans), ann_path.stem, meta=meta)


def _parse_brat_textbound(path, line_number, line, text):
    fields = line.split("\t")
    label, _, offsets = fields[1].partition(" ") if len(fields) >= 2 else ("", "", "")
    try:
        pieces = [[int(n) for n in piece.split()] for piece in offsets.split(";")]
        if not label or any(len(piece) != 2 for piece in pieces):
            raise ValueError
    except ValueError:
        raise FormatError(path, line_number, "expected 'T<n><TAB><label> <start> <end>[;<start> <end>]...'") from None
    start, end = pieces[0][0], pieces[-1][1]
    if not (0 <= start < end <= len(text)) or any(s > e for s, e in pieces):
        raise FormatError(path, line_number, f"offsets {offsets!r} outside the {len(text)}-character text")
    if len(pieces) == 1 and len(fields) >= 3 and fields[2] != text[start:end].replace("\n", " "):
        raise FormatError(path, line_number, f"text {fields[2]!r} does not match offsets ({text[start:end]!r})")
    return Span(start, end, label), pieces


# --------------------------------------------------------------------------- SLIMER (Pile-NER)


def read_slimer(path, **conll_options) -> Iterator[Record]:
    """SLIMER's Pile-NER files: the BIO ``.txt`` (tab-separated, labels may contain spaces)
    through ``read_conll``, or an instruction ``.jsonl`` (one passage + entity type per
    line, mentions as strings).

    Instruction lines have no offsets: every whole-word occurrence of each mention string
    becomes a span (longest mentions first, no overlaps), mentions not found are listed in
    ``meta["unmatched"]``, and ``labels`` is the one type the line is annotated for.
    """
    if Path(path).suffix == ".jsonl":
        yield from _read_slimer_instructions(path)
    else:
        yield from read_conll(path, **{"separator": "\t", **conll_options})


def _read_slimer_instructions(path) -> Iterator[Record]:
    for line_number, item in _iter_json_lines(path, "raise"):
        try:
            text, label, mentions = item["input"], item["tagName"], json.loads(item["output"])
            pair_id, instruction = item["doc_question_pairID"], item["instruction"]
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(path, line_number, f"not a SLIMER instruction line ({error!r})") from None
        spans, unmatched = _find_mentions(text, mentions, label)
        meta = {"instruction": instruction, "mentions": mentions, "unmatched": unmatched}
        yield Record(text, spans, pair_id, labels=[label], meta=meta)


def _find_mentions(text: str, mentions: list[str], label: str):
    """Spans for whole-word occurrences of mention strings; returns (spans, not found)."""
    taken, spans, unmatched = set(), [], []
    for mention in sorted(set(mentions), key=len, reverse=True):
        found = False
        for match in re.finditer(_mention_pattern(mention), text) if mention.strip() else ():
            if taken.isdisjoint(range(*match.span())):
                spans.append(Span(*match.span(), label))
                taken.update(range(*match.span()))
                found = True
        if not found:
            unmatched.append(mention)
    return sorted(spans), unmatched


def _mention_pattern(mention: str) -> str:
    # Word-boundary guards only where the mention itself starts/ends with a word character
    # (".srt" must still match inside "subtitles.srt").
    before = r"(?<!\w)" if re.match(r"\w", mention) else ""
    after = r"(?!\w)" if re.search(r"\w$", mention) else ""
    return before + re.escape(mention) + after


def read_slimer_definitions(path) -> dict[str, dict]:
    """SLIMER's per-type definitions file → ``{type: {"definition", "guidelines"}}``."""
    with open(path, encoding="utf-8") as file:
        raw = json.load(file)
    definitions = {}
    for label, entry in raw.items():
        answer = json.loads(entry["gpt_answer"])
        definitions[label] = {"definition": answer.get("Definition"), "guidelines": answer.get("Guidelines")}
    return definitions


# --------------------------------------------------------------------------- user formats


def read_text(path_or_lines) -> Iterator[Record]:
    """Plain text, one Record per line (a str or PathLike is a path; anything else an
    iterable of lines). Empty lines give Records with empty text, so that the n-th output
    always belongs to the n-th input line; ``id`` is ``"<name>:<line number>"``."""
    if isinstance(path_or_lines, (str, os.PathLike)):
        with open(path_or_lines, encoding="utf-8") as file:
            yield from _line_records(file, Path(path_or_lines).name)
    else:
        yield from _line_records(path_or_lines, "<lines>")


def _line_records(lines, name: str) -> Iterator[Record]:
    for line_number, line in enumerate(lines, 1):
        yield Record(line.rstrip("\r\n"), id=f"{name}:{line_number}", meta={"line": line_number})


def read_jsonl(path, text_field: str = "text", id_field: str = "id", *, entities_field: str = "entities",
               errors: str = "raise") -> Iterator[Record]:
    """JSON lines with a text per object, the suite's own output format included.

    ``text_field`` is required; ``id_field`` is optional (id None when absent);
    ``entities_field`` (optional) holds ``{"start", "end", "label", "score"?, "text"?}``
    character offsets, and a ``text`` that disagrees with the offsets is an error (it
    catches byte-vs-character offsets). Other keys are kept in ``meta``. Blank lines are
    skipped. ``errors="skip"`` logs a bad line and yields nothing for it.
    """
    _check_errors_mode(errors)
    for line_number, item in _iter_json_lines(path, errors):
        try:
            record = _jsonl_record(path, line_number, item, text_field, id_field, entities_field)
        except FormatError as error:
            _report(error, errors)
            continue
        yield record


def _jsonl_record(path, line_number, item, text_field, id_field, entities_field) -> Record:
    if not isinstance(item, dict):
        raise FormatError(path, line_number, "expected a JSON object")
    text = item.get(text_field)
    if not isinstance(text, str):
        raise FormatError(path, line_number, f"missing or non-string field {text_field!r}")
    spans = [_jsonl_span(path, line_number, text, entity) for entity in item.get(entities_field) or []]
    record_id = item.get(id_field)
    meta = {key: value for key, value in item.items() if key not in (text_field, id_field, entities_field)}
    return Record(text, _sorted_unique(spans), None if record_id is None else str(record_id), meta=meta)


def _jsonl_span(path, line_number, text, entity) -> Span:
    try:
        span = Span(entity["start"], entity["end"], entity["label"], entity.get("score"))
    except (KeyError, TypeError, ValueError) as error:
        raise FormatError(path, line_number, f"bad entity {entity!r} ({error!r})") from None
    if span.end > len(text):
        raise FormatError(path, line_number, f"entity {entity!r} ends past the text")
    if entity.get("text") is not None and entity["text"] != text[span.start:span.end]:
        raise FormatError(path, line_number, f"entity text {entity['text']!r} != {text[span.start:span.end]!r}")
    return span


def read_docbin(path, vocab=None, *, spans_key: str | None = None) -> Iterator[Record]:
    """A spaCy DocBin (``.spacy``): one Record per Doc, see ``doc_to_record``."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    doc_bin = DocBin().from_disk(path)
    for doc in doc_bin.get_docs(vocab if vocab is not None else Vocab()):
        yield doc_to_record(doc, spans_key=spans_key)


def doc_to_record(doc, *, spans_key: str | None = None) -> Record:
    """A Doc → Record: entities from ``doc.ents`` (or from ``doc.spans[spans_key]`` when
    that group exists, which may nest); tokens and sentences from the Doc, leaving out
    whitespace tokens (spaCy's way of storing "\\n" and double spaces between words);
    ``id``/``labels``/``meta`` from ``doc.user_data`` as ``write_docbin`` stores them."""
    group = doc.spans[spans_key] if spans_key is not None and spans_key in doc.spans else doc.ents
    spans = [Span(span.start_char, span.end_char, span.label_) for span in group]
    # token.is_space needs a language's lexical attributes; a bare Vocab has none.
    tokens = [(token.idx, token.idx + len(token)) for token in doc if not token.text.isspace()]
    sentences = None
    if doc.has_annotation("SENT_START"):
        sentences = [_trimmed_offsets(sentence) for sentence in doc.sents]
        sentences = [offsets for offsets in sentences if offsets]
    labels = doc.user_data.get("labels")  # msgpack hands lists back as tuples
    return Record(doc.text, _sorted_unique(spans), doc.user_data.get("id"), tokens, sentences,
                  None if labels is None else list(labels), dict(doc.user_data.get("meta") or {}))


def _trimmed_offsets(span):
    words = [token for token in span if not token.text.isspace()]
    return (words[0].idx, words[-1].idx + len(words[-1])) if words else None


# --------------------------------------------------------------------------- JSON streaming


def _iter_json_lines(path, errors: str):
    """Yield (line number, value) for each non-blank line; invalid JSON per ``errors``."""
    with _open_lines(path) as file:
        for line_number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                _report(FormatError(path, line_number, f"invalid JSON: {error.msg} (column {error.colno})"), errors)
                continue
            yield line_number, value


def _iter_json_array(path):
    """Yield (line number, element) for each element of a top-level JSON array, reading
    the file in chunks instead of ``json.load``-ing it whole."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as file:
        buffer, line_number, expect = "", 1, "["
        while True:
            stripped = buffer.lstrip()
            line_number += buffer.count("\n", 0, len(buffer) - len(stripped))
            buffer = stripped
            if not buffer:
                buffer = file.read(_JSON_CHUNK)
                if not buffer:
                    raise FormatError(path, line_number, "unexpected end of file in a JSON array")
            elif expect == "[":
                if buffer[0] != "[":
                    raise FormatError(path, line_number, "expected a JSON array")
                buffer, expect = buffer[1:], "first item"
            elif buffer[0] == "]" and expect != "item":
                return
            elif expect == "separator":
                if buffer[0] != ",":
                    raise FormatError(path, line_number, "expected ',' or ']' after an array item")
                buffer, expect = buffer[1:], "item"
            else:
                try:
                    item, end = decoder.raw_decode(buffer)
                    complete = end < len(buffer)  # a number at the buffer's edge may go on
                except json.JSONDecodeError as error:
                    item, complete = error, False
                if not complete:
                    more = file.read(_JSON_CHUNK)
                    if more:
                        buffer += more
                        continue
                    if isinstance(item, json.JSONDecodeError):
                        raise FormatError(path, line_number + item.lineno - 1, f"invalid JSON: {item.msg}")
                yield line_number, item
                line_number += buffer.count("\n", 0, end)
                buffer, expect = buffer[end:], "separator"


# --------------------------------------------------------------------------- dispatch

READERS = {
    "conll": read_conll,
    "gliner_json": read_gliner_json,
    "gliner_csv": read_gliner_csv,
    "sener": read_sener_jsonl,
    "scirex": read_scirex_json,
    "brat": read_brat,
    "slimer": read_slimer,
    "text": read_text,
    "txt": read_text,
    "jsonl": read_jsonl,
    "docbin": read_docbin,
}
_FORMAT_BY_SUFFIX = {
    ".conll": "conll", ".bio": "conll", ".iob": "conll", ".iob2": "conll", ".tsv": "conll",
    ".conllu": "conll", ".train": "conll", ".testa": "conll", ".testb": "conll",
    ".json": "gliner_json", ".csv": "gliner_csv", ".ann": "brat", ".txt": "text",
    ".jsonl": "jsonl", ".spacy": "docbin", ".docbin": "docbin",
}


def guess_format(path) -> str:
    """The reader name for a path: a folder of .ann files is BRAT, of .json files SciREX;
    otherwise by extension (.txt is plain text: pass format="conll" for CoNLL .txt files)."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.ann")):
            return "brat"
        if any(path.glob("*.json")):
            return "scirex"
    elif path.suffix.lower() in _FORMAT_BY_SUFFIX:
        return _FORMAT_BY_SUFFIX[path.suffix.lower()]
    raise ValueError(f"cannot tell the format of {path}; pass format= one of {sorted(READERS)}")


def read_records(path, format: str | None = None, **options) -> Iterator[Record]:
    """Read any supported format, named explicitly or guessed from the path."""
    format = format or guess_format(path)
    if format not in READERS:
        raise ValueError(f"unknown format {format!r}; known: {sorted(READERS)}")
    return READERS[format](path, **options)
