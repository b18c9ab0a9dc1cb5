"""The one internal form: text + entity spans with character offsets (end exclusive).

Every reader converts its format's span convention into this form once, and every writer
converts out of it; nothing else in the suite sees IOB tags or inclusive word indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class FormatError(ValueError):
    """A malformed input line: says which file and which line."""

    def __init__(self, path, line_number: int | None, reason: str):
        self.path = str(path) if path is not None else "<input>"
        self.line_number = line_number
        self.reason = reason
        where = f"{self.path}:{line_number}" if line_number is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    label: str
    score: float | None = field(default=None, compare=False)

    def __post_init__(self):
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad span offsets [{self.start}, {self.end})")


@dataclass
class Record:
    """A text with its entities.

    ``tokens`` holds the (start, end) character offsets of the words when the source is
    pre-tokenised (CoNLL, GLiNER, SeNER, ...), so a Doc can be rebuilt with exactly those
    words; ``sentences`` holds (start, end) character offsets of sentences when known.
    ``labels`` lists the entity types this record is annotated for (None: all of the
    dataset's types), so training can mask the loss for types a dataset does not annotate.
    """

    text: str
    spans: list[Span] = field(default_factory=list)
    id: str | None = None
    tokens: list[tuple[int, int]] | None = None
    sentences: list[tuple[int, int]] | None = None
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        if self.tokens is None:
            raise ValueError("record is not pre-tokenised")
        return [self.text[s:e] for s, e in self.tokens]


def join_records(records: list[Record], record_id: str | None = None) -> Record:
    """Records in a row as one (the sentences of one text, as a document): texts joined by
    "\n", offsets shifted; each part's sentences (the part itself when it has none) stay
    its sentences. Tokens are kept when every part is pre-tokenised; ``labels`` and
    ``meta`` come from the first part."""
    if not records:
        raise ValueError("nothing to join")
    pre_tokenised = all(r.tokens is not None for r in records)
    text, spans, tokens, sentences, position = [], [], [], [], 0
    for record in records:
        text.append(record.text)
        spans += [Span(s.start + position, s.end + position, s.label, s.score) for s in record.spans]
        if pre_tokenised:
            tokens += [(start + position, end + position) for start, end in record.tokens]
        parts = record.sentences or [(0, len(record.text))]
        sentences += [(start + position, end + position) for start, end in parts]
        position += len(record.text) + 1
    first = records[0]
    return Record("\n".join(text), spans, record_id if record_id is not None else first.id,
                  tokens if pre_tokenised else None, sentences, first.labels, dict(first.meta))


def group_records(records, size: int):
    """Every ``size`` records in a row joined into one (``join_records``): sentence-level
    corpora whose sentences keep their text's order become multi-sentence records, so a
    model sees each sentence with its neighbours."""
    if size < 1:
        raise ValueError(f"group size must be at least 1, not {size}")
    group = []
    for record in records:
        group.append(record)
        if len(group) == size:
            yield join_records(group)
            group = []
    if group:
        yield join_records(group)


def join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join words with single spaces; return the text and each word's character offsets."""
    offsets, position = [], 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), offsets


def tags_to_word_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Decode BIO, IOB1 or BIOES/BILOU tags into (start_word, end_word_exclusive, label).

    Lenient the way seqeval's default (non-strict) mode is: an ``I-X`` after ``O`` or
    after another type starts a new entity, which is exactly IOB1's convention.
    """
    spans, start, label = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, kind = tag.partition("-")
        if tag == "O" or not kind:
            prefix, kind = "O", None
        begins = prefix in ("B", "S", "U") or (prefix in ("I", "E", "L") and kind != label)
        if start is not None and (prefix == "O" or begins):
            spans.append((start, i, label))
            start, label = None, None
        if prefix != "O" and start is None:
            start, label = i, kind
        if prefix in ("E", "L", "S", "U") and start is not None:
            spans.append((start, i + 1, label))
            start, label = None, None
    return spans


def word_spans_to_tags(n_words: int, spans, scheme: str = "BIO") -> list[str]:
    """Encode non-overlapping (start_word, end_word_exclusive, label) spans as tags.

    ``scheme`` is "BIO" (IOB2) or "IOB1" (B- only where an entity directly follows one
    of the same type).
    """
    tags = ["O"] * n_words
    previous_end, previous_label = None, None
    for start, end, label in sorted(spans):
        if any(tag != "O" for tag in tags[start:end]):
            raise ValueError("overlapping spans cannot be written as flat tags")
        if scheme == "IOB1":
            first = "B" if (previous_end == start and previous_label == label) else "I"
        elif scheme == "BIO":
            first = "B"
        else:
            raise ValueError(f"unknown tag scheme {scheme!r}")
        tags[start] = f"{first}-{label}"
        for i in range(start + 1, end):
            tags[i] = f"I-{label}"
        previous_end, previous_label = end, label
    return tags


def word_spans_to_char_spans(tokens, spans) -> list[Span]:
    """(start_word, end_word_exclusive, label) → character-offset Spans."""
    return [Span(tokens[s][0], tokens[e - 1][1], label) for s, e, label in spans]


def char_spans_to_word_spans(tokens, spans: list[Span]) -> list[tuple[int, int, str]]:
    """Character-offset Spans → word spans; a span must start and end on word edges."""
    starts = {start: i for i, (start, _) in enumerate(tokens)}
    ends = {end: i + 1 for i, (_, end) in enumerate(tokens)}
    out = []
    for span in spans:
        if span.start not in starts or span.end not in ends:
            raise ValueError(f"span {span} does not fall on word boundaries")
        out.append((starts[span.start], ends[span.end], span.label))
    return out
