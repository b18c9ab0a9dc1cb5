"""The zero-shot training mixture: LLM-annotated open-type passages and human datasets
under natural-language label names, cut into segments, each trained against its own list
of labels (its positives plus sampled negatives).

A recipe (``training/zero-shot.toml``) lists its sources as ``[[data.train]]`` tables:

    dataset = "conll2003_en"   # a name from data/datasets.toml
    split = "train"
    cap = 400                  # at most this many records (first ones, in file order)
    labels = { PER = "person", ORG = "organization", LOC = "location", MISC = "miscellaneous" }

A source with ``labels`` is *closed*: it annotates exactly those types, so every segment
is asked all of them (absent ones are true negatives) and no others (a type it does not
annotate could be present unmarked). A source without ``labels`` is *open* (Pile-NER,
GLiNER data): its types are lower-cased and stripped, each segment is asked its own types
plus negatives sampled from the open types of the whole mixture (GLiNER's recipe), never a
type that is one of its own. ``negatives = false`` turns sampling off for a source.

Held-out datasets (``[[data.heldout]]``) are never trained on: naming one in both lists is
an error. Labels per segment are capped (``max_labels``) and must fit one label group of
the model (``fits``), so a segment is always encoded in one pass.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from ner.spans import Record
from ner.training.batches import length_batches, make_segments, safe_cuts


@dataclass
class Source:
    dataset: str
    split: str
    labels: dict[str, str] | None = None  # original → natural name; None: an open-type source
    cap: int | None = None
    negatives: bool = True
    weight: float = 1.0  # segments drawn per epoch = weight × the source's segments (≤ 1: a sample)

    @property
    def name(self) -> str:
        return f"{self.dataset}:{self.split}"


@dataclass
class Example:
    words: list[str]
    spans: list[tuple[int, int, str]]  # word offsets, end exclusive, natural label names
    annotated: list[str] | None  # a closed source's types (natural names); None: open
    source: str
    negatives: bool = True
    key: str = field(default="", repr=False)  # stable identity (for dev carving)


def read_sources(tables: list[dict]) -> list[Source]:
    sources = []
    for table in tables:
        unknown = set(table) - {"dataset", "split", "labels", "cap", "negatives", "weight"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in data source {table}")
        sources.append(Source(table["dataset"], table.get("split", "train"), table.get("labels"), table.get("cap"),
                              table.get("negatives", True), table.get("weight", 1.0)))
    return sources


def check_held_out(train: list[Source], heldout: list[Source]) -> None:
    """A held-out dataset must not be trained on (any split, any language variant)."""
    trained = {s.dataset.split("/")[0] for s in train}
    overlap = sorted(trained & {s.dataset.split("/")[0] for s in heldout})
    if overlap:
        raise ValueError(f"datasets both trained on and held out: {overlap}")


def natural_name(label: str) -> str:
    return " ".join(label.strip().lower().split())


def map_record_labels(record: Record, source: Source) -> list[tuple[int, int, str]] | None:
    """The record's char spans with natural names; spans of types a closed source's map
    leaves out are dropped (those types are then neither asked nor targets)."""
    spans = []
    for span in record.spans:
        if source.labels is None:
            label = natural_name(span.label)
        elif span.label in source.labels:
            label = source.labels[span.label]
        else:
            continue
        spans.append(type(span)(span.start, span.end, label))
    return spans


def load_examples(source: Source, count_pieces, segment_subwords: int, limit: int | None = None) -> list[Example]:
    """One source's records as segments of at most ``segment_subwords`` subwords."""
    from ner.datasets import load_dataset

    examples = []
    cap = min(c for c in (source.cap, limit) if c is not None) if (source.cap or limit) else None
    annotated = sorted(set(source.labels.values())) if source.labels is not None else None
    for index, record in enumerate(load_dataset(source.dataset, source.split)):
        if cap is not None and index >= cap:
            break
        if record.tokens is None:
            raise ValueError(f"{source.name}: record {record.id} is not pre-tokenised")
        record.spans = map_record_labels(record, source)
        record.labels = None
        segments = [piece for segment in make_segments(record, count_pieces, segment_subwords)
                    for piece in cut_long_segment(segment, count_pieces, segment_subwords)]
        for n, (words, spans) in enumerate(segments):
            if words:
                examples.append(Example(words, spans, annotated, source.name, source.negatives,
                                        key=f"{source.name}#{record.id or index}#{n}"))
    return examples


def cut_long_segment(segment, count_pieces, budget: int) -> list[tuple[list[str], list]]:
    """A segment longer than ``budget`` subwords (one long "sentence": a Pile-NER passage
    is one) cut where no entity crosses, so that every segment fits one window beside a
    full label prompt and both trainers see the same, untruncated text."""
    pieces = [count_pieces(word) for word in segment.words]
    if sum(pieces) <= budget:
        return [(segment.words, segment.spans)]
    # safe_cuts closes a range once it has reached the budget: aim a little lower
    ranges = safe_cuts(len(segment.words), segment.spans, pieces, max(budget - max(pieces), 1))
    return [(segment.words[start:end], [(s - start, e - start, label) for s, e, label in segment.spans
                                        if start <= s and e <= end]) for start, end in ranges]


def carve_dev(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, dev): an example is dev when the SHA-1 of its key falls in ``fraction``,
    so the split is the same in every run and for every system trained on the mixture."""
    train, dev = [], []
    for example in examples:
        bucket = int(hashlib.sha1(example.key.encode("utf-8")).hexdigest(), 16) % 10_000
        (dev if bucket < fraction * 10_000 else train).append(example)
    return train, dev


class LabelSampler:
    """Which labels each example is asked about: a closed source's types, or an open
    example's own types plus negatives drawn from the mixture's open types (by the square
    root of their frequency, so rare types appear but do not dominate)."""

    def __init__(self, examples: list[Example], *, max_labels: int = 25, negatives_per_positive: float = 1.0,
                 min_negatives: int = 3, max_negatives: int = 15, fits=None):
        counts = Counter(label for e in examples if e.annotated is None for _, _, label in e.spans)
        self.pool = sorted(label for label, n in counts.items() if n >= 2)
        self.weights = [counts[label] ** 0.5 for label in self.pool]
        self.max_labels = max_labels
        self.negatives_per_positive = negatives_per_positive
        self.min_negatives = min_negatives
        self.max_negatives = max_negatives
        self.fits = fits or (lambda labels: True)

    def labels_for(self, example: Example, rng: random.Random) -> list[str]:
        if example.annotated is not None:
            labels = list(example.annotated)
        else:
            positives = sorted({label for _, _, label in example.spans})
            rng.shuffle(positives)
            labels = positives[: self.max_labels]
            if example.negatives and self.pool:
                wanted = min(self.max_negatives, max(self.min_negatives, round(self.negatives_per_positive * len(labels))))
                wanted = min(wanted, self.max_labels - len(labels))
                own = {_singular(label) for label in positives}
                candidates = [(label, w) for label, w in zip(self.pool, self.weights) if _singular(label) not in own]
                # weighted sampling without replacement (Efraimidis–Spirakis keys)
                keyed = sorted(candidates, key=lambda pair: -rng.random() ** (1.0 / pair[1]))
                negatives = [label for label, _ in keyed[:wanted]]
                labels += negatives
        while len(labels) > 1 and not self.fits(labels):
            labels.pop()  # negatives go first: they were appended last
        rng.shuffle(labels)
        return labels


def _singular(label: str) -> str:
    # "person"/"persons", "company"/"companies": a negative must not be a positive in disguise
    return label[:-3] + "y" if label.endswith("ies") else label[:-1] if label.endswith("s") else label


@dataclass
class Item:
    """One training sequence: words, gold spans, the labels asked."""

    words: list[str]
    spans: list[tuple[int, int, str]]
    labels: list[str]


def epoch_plan(examples: list[Example], sampler: LabelSampler, weights: dict[str, float], batch_words: int,
               seed: int, epoch: int) -> list[list[Item]]:
    """The batches of one epoch, fixed by (seed, epoch): which examples (a source of
    weight w < 1 contributes a w-sample, w > 1 repeats), which labels each is asked, how
    they are batched (similar lengths, about ``batch_words`` words with padding and prompt
    labels counted as words), in which order. Two trainers given the same arguments see
    exactly the same data (``training/zero_shot_peer.py`` relies on it)."""
    rng = random.Random(f"{seed}:{epoch}")
    chosen = []
    by_source: dict[str, list[Example]] = {}
    for example in examples:
        by_source.setdefault(example.source, []).append(example)
    for source, group in sorted(by_source.items()):
        weight = weights.get(source, 1.0)
        whole, part = int(weight), weight - int(weight)
        chosen += group * whole + rng.sample(group, round(part * len(group)))
    items = [Item(e.words, e.spans, sampler.labels_for(e, rng)) for e in chosen]
    return length_batches(items, batch_words, rng, cost=lambda item: len(item.words) + 2 * len(item.labels))


def dev_items(examples: list[Example], sampler: LabelSampler, seed: int) -> list[Item]:
    """Dev examples with a fixed label list each (the same for every system and epoch)."""
    rng = random.Random(f"{seed}:dev")
    return [Item(e.words, e.spans, sampler.labels_for(e, rng)) for e in examples]
