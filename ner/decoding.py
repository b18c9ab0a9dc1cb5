"""From span probabilities to entities: flat (no overlaps) or nested (no crossing)."""
from __future__ import annotations

import numpy as np


def candidate_spans(probs: np.ndarray, labels: list[str], threshold):
    """probs (n_words, max_width, n_labels) → [(score, start, end_exclusive, label)] for
    each span's best label among those that pass the threshold: one number, or one per
    label (``label_thresholds``)."""
    passing = np.where(probs >= np.asarray(threshold, dtype=probs.dtype), probs, -1.0)
    best = passing.argmax(-1)
    score = passing.max(-1)
    starts, widths = np.nonzero(score >= 0)
    return [
        (float(score[s, w]), int(s), int(s + w + 1), labels[best[s, w]])
        for s, w in zip(starts, widths)
    ]


def decode_flat(probs, labels, threshold=0.5):
    """Highest-scoring spans first; a span overlapping one already kept is dropped."""
    taken = np.zeros(probs.shape[0] + 1, dtype=bool)
    kept = []
    for score, start, end, label in sorted(candidate_spans(probs, labels, threshold), reverse=True):
        if not taken[start:end].any():
            taken[start:end] = True
            kept.append((start, end, label, score))
    return sorted(kept)


def decode_nested(probs, labels, threshold=0.5):
    """Highest-scoring spans first; a span may sit inside or around a kept one, but may
    not cross one."""
    kept = []
    for score, start, end, label in sorted(candidate_spans(probs, labels, threshold), reverse=True):
        crosses = any(
            (s < start < e < end) or (start < s < end < e) or (s == start and e == end)
            for s, e, _, _ in kept
        )
        if not crosses:
            kept.append((start, end, label, score))
    return sorted(kept)


DECODERS = {"flat": decode_flat, "nested": decode_nested}


def label_thresholds(labels, threshold: float, per_label: dict | None = None):
    """The decoding threshold of each of ``labels``: ``per_label``'s where it names the
    label, else ``threshold``. A single number when no label has its own."""
    per_label = per_label or {}
    unknown = set(per_label) - set(labels)
    if unknown:
        raise ValueError(f"thresholds for unknown labels {sorted(unknown)}; this pipeline has {list(labels)}")
    for label, value in {"threshold": threshold, **per_label}.items():
        if not float(value) >= 0.0:  # 0: every span passes; above 1: none does
            raise ValueError(f"a decoding threshold is a number from 0 up; {label}: {value!r}")
    if not per_label:
        return float(threshold)
    return np.array([float(per_label.get(label, threshold)) for label in labels], dtype=np.float32)


VARIANT_MARK = "@"


def corpus_variant(label: str, dataset: str) -> str:
    """The name of ``label`` as one corpus annotates it: ``"Disease@ncbi_disease"``. A
    pipeline trained on corpora whose guidelines differ for one type keeps a variant per
    corpus; a variant decodes under its base name ("Disease") and only when asked for."""
    return f"{label}{VARIANT_MARK}{dataset}"


def base_labels(labels) -> dict[str, str]:
    """Each corpus variant among ``labels`` whose base label is there too → that base."""
    labels = set(labels)
    return {label: label.split(VARIANT_MARK)[0] for label in labels
            if VARIANT_MARK in label and label.split(VARIANT_MARK)[0] in labels}


def dataset_labels(labels: list[str], dataset: str, known) -> list[str]:
    """A dataset's labels as a pipeline that knows ``known`` should decode them: each one's
    variant for this corpus where the pipeline has it (``wikiann/de``'s own, else its
    family's, ``wikiann``)."""
    known = set(known)
    names = [dataset] + ([dataset.split("/")[0]] if "/" in dataset else [])

    def choose(label):
        return next((corpus_variant(label, n) for n in names if corpus_variant(label, n) in known), label)

    return [choose(label) for label in labels]


def keep_labels(probs: np.ndarray, labels, allowed) -> np.ndarray:
    """``probs`` with every label outside ``allowed`` scored zero (``allowed`` None: all).
    Pipelines trained on several label schemes decode one scheme at a time this way."""
    if allowed is None:
        return probs
    unknown = set(allowed) - set(labels)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}; this pipeline has {list(labels)}")
    mask = np.array([label in allowed for label in labels], dtype=probs.dtype)
    return probs * mask
