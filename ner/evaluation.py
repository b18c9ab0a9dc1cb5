"""Strict entity-level evaluation: an entity counts only when start, end and label all
match (seqeval's micro P/R/F1 over the same spans). Records are turned into pre-tokenised
Docs and run through ``nlp.pipeline`` component by component, so the words the model sees
are exactly the dataset's words."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ner.spans import Record, char_spans_to_word_spans


@dataclass
class Scores:
    true_positives: Counter = field(default_factory=Counter)
    predicted: Counter = field(default_factory=Counter)
    gold: Counter = field(default_factory=Counter)
    by_length: dict = field(default_factory=dict)  # bucket name → Scores, when asked for

    def add(self, gold_spans, predicted_spans) -> None:
        gold_set, predicted_set = set(gold_spans), set(predicted_spans)
        for _, _, label in gold_set:
            self.gold[label] += 1
        for _, _, label in predicted_set:
            self.predicted[label] += 1
        for _, _, label in gold_set & predicted_set:
            self.true_positives[label] += 1

    @staticmethod
    def _prf(tp, predicted, gold):
        precision = tp / predicted if predicted else 0.0
        recall = tp / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": gold}

    @property
    def micro(self) -> dict:
        return self._prf(sum(self.true_positives.values()), sum(self.predicted.values()), sum(self.gold.values()))

    @property
    def per_label(self) -> dict:
        labels = sorted(set(self.gold) | set(self.predicted))
        return {l: self._prf(self.true_positives[l], self.predicted[l], self.gold[l]) for l in labels}

    def table(self) -> str:
        rows = [f"{'label':<20} {'P':>7} {'R':>7} {'F1':>7} {'support':>8}"]
        for label, s in [*self.per_label.items(), ("micro", self.micro)]:
            rows.append(f"{label:<20} {100*s['precision']:7.2f} {100*s['recall']:7.2f} {100*s['f1']:7.2f} {s['support']:8d}")
        return "\n".join(rows)


def record_to_doc(vocab, record: Record):
    """A pre-tokenised Doc whose tokens are exactly the record's words."""
    from spacy.tokens import Doc

    words = record.words
    spaces = [
        end < (record.tokens[i + 1][0] if i + 1 < len(record.tokens) else end)
        for i, (_, end) in enumerate(record.tokens)
    ]
    return Doc(vocab, words=words, spaces=spaces)


def predict_docs(nlp, docs, batch_size: int = 16, labels=None):
    """Run pre-tokenised Docs through ``nlp.pipeline``; ``labels`` restricts the span
    components to those labels."""
    from ner.components import SpanNER

    for _, component in nlp.pipeline:
        if isinstance(component, SpanNER):
            docs = component.pipe(docs, batch_size=batch_size, labels=labels)
        elif hasattr(component, "pipe"):
            docs = component.pipe(docs, batch_size=batch_size)
        else:
            docs = map(component, docs)
    return docs


LENGTH_BUCKETS = ((1, 3), (4, 12), (13, 50), (51, None))


def bucket_name(bucket) -> str:
    low, high = bucket
    return f"{low}-{high}" if high is not None else f">{low - 1}"


def add_by_length(scores: Scores, gold, predicted, buckets=LENGTH_BUCKETS) -> None:
    """Score gold and predicted spans again within each entity-length bucket (in words):
    recall counts the bucket's gold spans, precision its predicted spans."""
    for bucket in buckets:
        low, high = bucket
        inside = lambda span: low <= span[1] - span[0] and (high is None or span[1] - span[0] <= high)
        scores.by_length.setdefault(bucket_name(bucket), Scores()).add(
            [s for s in gold if inside(s)], [s for s in predicted if inside(s)])


def evaluate(nlp, records, *, batch_size: int = 16, progress=None, labels=None, by_length=False) -> Scores:
    """Run ``nlp`` over pre-tokenised records and score against their gold spans
    (predicting only ``labels`` when given; also per entity-length bucket if asked)."""
    records = list(records)
    docs = [record_to_doc(nlp.vocab, r) for r in records]
    scores = Scores()
    predicted_docs = predict_docs(nlp, docs, batch_size, labels)
    if progress is not None:
        predicted_docs = progress(predicted_docs, total=len(docs))
    for record, doc in zip(records, predicted_docs):
        gold = char_spans_to_word_spans(record.tokens, record.spans)
        predicted = [(e.start, e.end, e.label_) for e in doc.ents]
        scores.add(gold, predicted)
        if by_length:
            add_by_length(scores, gold, predicted)
    return scores


def dev_items(records) -> list[tuple]:
    """``(words, gold word spans, annotated labels or None)`` of pre-tokenised records: what
    threshold choice decodes (a record whose ``labels`` are set, the types its dataset
    annotates, is decoded over those only)."""
    return [(r.words, char_spans_to_word_spans(r.tokens, r.spans), getattr(r, "labels", None)) for r in records]


def item_probabilities(model, items, *, batch_size: int = 8):
    """``(item, probabilities)`` for every ``dev_items`` item, shortest first, in batches
    of similar length."""
    items = sorted(items, key=lambda item: len(item[0]))
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        with torch.inference_mode():
            probs, _, _ = model.predict([words for words, _, _ in chunk])
        yield from zip(chunk, probs)


def threshold_scores(component, records, thresholds, *, batch_size: int = 8) -> dict[float, Scores]:
    """Scores of a span component at several decoding thresholds from a single prediction
    pass over pre-tokenised records (for choosing the threshold on dev data)."""
    return model_threshold_scores(component.model, dev_items(records), thresholds, component.cfg["decoding"],
                                  batch_size=batch_size)


def model_threshold_scores(model, items, thresholds, decoding: str = "flat", *, batch_size: int = 8) -> dict[float, Scores]:
    """``threshold_scores`` for a bare span model (no spaCy) over ``dev_items`` items."""
    scores = {t: Scores() for t in thresholds}
    for (_, gold, allowed), doc_probs in item_probabilities(model, items, batch_size=batch_size):
        gold = [tuple(span) for span in gold]
        for t in thresholds:
            found = model.decode(doc_probs, t, decoding, allowed)
            scores[t].add(gold, [(s, e, l) for s, e, l, _ in found])
    return scores


def best_threshold(component, records, thresholds=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6)) -> tuple[float, Scores]:
    scores = threshold_scores(component, records, thresholds)
    best = max(thresholds, key=lambda t: scores[t].micro["f1"])
    return best, scores[best]
