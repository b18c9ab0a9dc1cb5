"""Teacher answers are strings; the suite needs character offsets. This module finds them.

Every occurrence of a mention becomes a span, the way Pile-NER's mention lists were turned
into annotations: the teacher names "Berlin" once, the passage says it twice, both are
entities. An occurrence must sit on word edges ("US" is not found inside "USA").

A mention is looked for verbatim first; failing that, ignoring case and whitespace (the
teacher wrote "new york" for "New York", "COVID-19" for the tokenised "COVID - 19");
failing that, it is unalignable, and the caller counts and lists it. Longer mentions are
placed first and an occurrence that overlaps one already placed is skipped and counted,
so the spans never cross (the same rule as ``ner.readers.read_slimer``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ner.spans import Span

Mention = tuple[str, str]  # (mention text, type)


@dataclass
class Alignment:
    """``spans``: the placed spans, sorted; ``exact``/``tolerant``/``unalignable``: the
    mentions by how they were found; ``overlapping``: occurrences skipped because a longer
    mention already covers part of them."""

    spans: list[Span] = field(default_factory=list)
    exact: list[Mention] = field(default_factory=list)
    tolerant: list[Mention] = field(default_factory=list)
    unalignable: list[Mention] = field(default_factory=list)
    overlapping: int = 0


def align_mentions(text: str, mentions: list[Mention]) -> Alignment:
    """Place (mention, type) pairs in ``text`` as character-offset spans."""
    alignment = Alignment()
    taken: list[tuple[int, int]] = []
    for mention, label in sorted(mentions, key=lambda pair: -len(pair[0])):
        occurrences = find_exact(text, mention)
        found_in = alignment.exact
        if not occurrences:
            occurrences = find_tolerant(text, mention)
            found_in = alignment.tolerant
        if not occurrences:
            alignment.unalignable.append((mention, label))
            continue
        found_in.append((mention, label))
        for start, end in occurrences:
            if any(start < other_end and other_start < end for other_start, other_end in taken):
                alignment.overlapping += 1
                continue
            taken.append((start, end))
            alignment.spans.append(Span(start, end, label))
    alignment.spans.sort()
    return alignment


def find_exact(text: str, mention: str) -> list[tuple[int, int]]:
    """(start, end) of each verbatim whole-word occurrence of ``mention``."""
    found, position = [], text.find(mention)
    while position >= 0 and mention:
        end = position + len(mention)
        if _on_word_edges(text, position, end):
            found.append((position, end))
        position = text.find(mention, position + 1)
    return found


def find_tolerant(text: str, mention: str) -> list[tuple[int, int]]:
    """(start, end) of each whole-word occurrence ignoring case and whitespace: words of
    the mention may be split by any run of whitespace, punctuation may gain or lose it."""
    pieces = [(match.group(), match.start(), match.end()) for match in re.finditer(r"\w+|[^\w\s]", mention)]
    if not pieces:
        return []
    pattern = re.escape(pieces[0][0])
    for (_, _, previous_end), (piece, start, _) in zip(pieces, pieces[1:]):
        spaced = start > previous_end
        both_words = _is_word_char(mention[previous_end - 1]) and _is_word_char(piece[0])
        pattern += (r"\s+" if spaced and both_words else r"\s*") + re.escape(piece)
    return [match.span() for match in re.finditer(pattern, text, re.IGNORECASE)
            if _on_word_edges(text, *match.span())]


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _on_word_edges(text: str, start: int, end: int) -> bool:
    starts_inside_word = start > 0 and _is_word_char(text[start - 1]) and _is_word_char(text[start])
    ends_inside_word = end < len(text) and _is_word_char(text[end]) and _is_word_char(text[end - 1])
    return not starts_inside_word and not ends_inside_word
