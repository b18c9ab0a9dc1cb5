"""The numbers behind the page's two charts for a file: how many entities of each label,
and how the pipeline's scores spread, per label. Rejected documents are left out; spans
the annotator added have no score, so they count in the first chart only."""
from __future__ import annotations

from collections import Counter

from ner.app.store import REJECTED, Document

BINS = 10


def _spans(documents: list[Document]):
    return [span for document in documents if document.status != REJECTED for span in document.spans]


def label_counts(documents: list[Document]) -> dict[str, int]:
    """{label: entities}, the most frequent first."""
    return dict(Counter(span.label for span in _spans(documents)).most_common())


def bin_names(bins: int = BINS) -> list[str]:
    """Each bin named by its lower edge: "0.0", "0.1", ... (short labels on a chart axis)."""
    return [f"{i / bins:.1f}" for i in range(bins)]


def score_histogram(documents: list[Document], bins: int = BINS) -> dict[str, list[int]]:
    """{label: entity counts per score bin}; bin i holds scores in [i/bins, (i+1)/bins),
    the last bin 1.0 as well."""
    histogram: dict[str, list[int]] = {}
    for span in _spans(documents):
        if span.score is None:
            continue
        index = min(max(int(span.score * bins), 0), bins - 1)
        histogram.setdefault(span.label, [0] * bins)[index] += 1
    return dict(sorted(histogram.items()))
