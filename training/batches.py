"""Training examples as document segments: consecutive sentences of one document packed
up to a subword budget, so each word is trained with its neighbours as context at the
cost of sentence-level training (no word is encoded twice)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from ner.spans import Record, char_spans_to_word_spans


@dataclass
class Segment:
    words: list[str]
    spans: list[tuple[int, int, str]]  # word offsets, end exclusive
    labels: list[str] | None  # types annotated in its dataset (None: all)
    teacher_probs: object = None  # knowledge distillation: the teacher's span probabilities (fp16 array)
    teacher_vectors: object = None  # ... and its word vectors, when the recipe transfers them


def sentence_word_ranges(record: Record) -> list[tuple[int, int]]:
    """Sentences as word-index ranges; the whole record when sentences are unknown."""
    if not record.sentences:
        return [(0, len(record.tokens))]
    starts = [s for s, _ in record.tokens]
    ranges, i = [], 0
    for _, sentence_end in record.sentences:
        j = i
        while j < len(starts) and starts[j] < sentence_end:
            j += 1
        if j > i:
            ranges.append((i, j))
        i = j
    if i < len(starts):
        ranges.append((i, len(starts)))
    return ranges


def safe_cuts(n_words: int, spans, pieces: list[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges of about ``budget`` subwords each, cut only where no gold entity
    crosses, so a document with no sentence boundaries (long web pages) still trains in
    pieces and no entity is cut in two."""
    crossing = [0] * (n_words + 1)
    for start, end, _ in spans:
        for i in range(start + 1, end):
            crossing[i] = 1
    ranges, start, size = [], 0, 0
    for i in range(n_words):
        if size >= budget and not crossing[i]:
            ranges.append((start, i))
            start, size = i, 0
        size += pieces[i]
    if start < n_words:
        ranges.append((start, n_words))
    return ranges


def make_segments(record: Record, count_pieces, budget: int) -> list[Segment]:
    """Pack whole sentences into segments of at most ``budget`` subwords. A sentence
    longer than the budget (a SeNER web page is one "sentence" of up to 10,000 words), or
    a record without sentences, is cut where no entity crosses, so a segment's training
    memory stays bounded by the budget."""
    words = record.words
    spans = char_spans_to_word_spans(record.tokens, record.spans)
    pieces = [count_pieces(w) for w in words]
    segments, current, size = [], None, 0
    ranges = []
    for first, last in sentence_word_ranges(record):
        if sum(pieces[first:last]) <= budget:
            ranges.append((first, last))
            continue
        inside = [(s - first, e - first, l) for s, e, l in spans if first <= s and e <= last]
        ranges += [(first + a, first + b) for a, b in safe_cuts(last - first, inside, pieces[first:last], budget)]
    for start, end in ranges:
        cost = sum(pieces[start:end])
        if current is not None and size + cost <= budget:
            current = (current[0], end)
            size += cost
        else:
            if current is not None:
                segments.append(current)
            current, size = (start, end), cost
    if current is not None:
        segments.append(current)
    out = []
    for start, end in segments:
        inside = [(s - start, e - start, l) for s, e, l in spans if start <= s and e <= end]
        out.append(Segment(words[start:end], inside, record.labels))
    return out


def length_batches(segments: list, batch_words: int, rng: random.Random, cost=lambda segment: len(segment.words)):
    """Batches of similar-length segments, about ``batch_words`` words (padding
    included) each, in random order; ``cost`` is a segment's length in words."""
    order = sorted(range(len(segments)), key=lambda i: (cost(segments[i]), rng.random()))
    batches, current, longest = [], [], 0
    for i in order:
        n = cost(segments[i])
        if current and max(longest, n) * (len(current) + 1) > batch_words:
            batches.append(current)
            current, longest = [], 0
        current.append(segments[i])
        longest = max(longest, n)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches
