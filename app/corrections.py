"""What an annotator does to a document's spans: add one over some words, delete one,
relabel one. Pure functions from spans to new spans; the store records each result as a
decision (and undoes it), the page only calls them.

Spans stay flat (no overlaps), so that every reviewed document can be written as CoNLL
tags: a span added over words that other spans cover replaces them, which is what an
annotator who draws over a wrong entity means.
"""
from __future__ import annotations

from ner.spans import Span


def span_over_words(tokens: list[tuple[int, int]], first: int, last: int, label: str) -> Span:
    """The span from word ``first`` to word ``last`` (both included) with ``label``. It
    has no score: the annotator, not the pipeline, put it there."""
    if not 0 <= first <= last < len(tokens):
        raise ValueError(f"words {first}..{last} are not within the document's {len(tokens)} words")
    label = label.strip()
    if not label:
        raise ValueError("a span needs a label")
    return Span(tokens[first][0], tokens[last][1], label)


def add_span(spans: list[Span], new: Span) -> list[Span]:
    kept = [s for s in spans if s.end <= new.start or s.start >= new.end]
    return sorted([*kept, new])


def delete_span(spans: list[Span], span: Span) -> list[Span]:
    if span not in spans:
        raise ValueError(f"no span {span} to delete")
    return [s for s in spans if s != span]


def relabel_span(spans: list[Span], span: Span, label: str) -> list[Span]:
    """``span`` with ``label`` instead; its score is dropped, since the pipeline scored
    the old label, not this one."""
    if span not in spans:
        raise ValueError(f"no span {span} to relabel")
    label = label.strip()
    if not label:
        raise ValueError("a span needs a label")
    return sorted(Span(s.start, s.end, label) if s == span else s for s in spans)

