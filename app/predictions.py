"""Running a pipeline for the demo, through its public API only: ``nlp.pipe`` with
per-call options, entities read from ``doc.ents`` and their ``_.score``.

Two kinds of components take options per call: the suite's span classifier (factory
``span_ner``: a threshold) and the zero-shot component (named ``zero_shot``: the labels to
look for, and a threshold).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from spacy.tokens import Span as SpacySpan

from ner.spans import Span

ZERO_SHOT = "zero_shot"
SPAN_NER = "span_ner"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Tagged:
    tokens: list[tuple[int, int]]  # character offsets of the words (whitespace left out)
    spans: list[Span]


def _factory(nlp, name: str) -> str:
    return nlp.get_pipe_meta(name).factory


def is_zero_shot(nlp) -> bool:
    return any(name == ZERO_SHOT or _factory(nlp, name) == ZERO_SHOT for name in nlp.pipe_names)


def _scoring_components(nlp) -> list[str]:
    return [name for name in nlp.pipe_names
            if name == ZERO_SHOT or _factory(nlp, name) in (SPAN_NER, ZERO_SHOT)]


def default_threshold(nlp) -> float:
    """The threshold the pipeline was saved with (the slider starts there)."""
    for name in _scoring_components(nlp):
        threshold = getattr(nlp.get_pipe(name), "cfg", {}).get("threshold")
        if threshold is not None:
            return float(threshold)
    return DEFAULT_THRESHOLD


def pipeline_labels(nlp) -> list[str]:
    """The labels a pipeline predicts (empty for a zero-shot one: the user names them)."""
    labels = []
    for name in _scoring_components(nlp):
        labels.extend(getattr(nlp.get_pipe(name), "labels", ()) or ())
    return list(dict.fromkeys(labels))


def parse_labels(typed: str) -> list[str]:
    """ "person, city ,, drug" → ["person", "city", "drug"] (order kept, repeats dropped)."""
    return list(dict.fromkeys(label.strip() for label in typed.replace("\n", ",").split(",") if label.strip()))


def tagging_options(nlp, threshold: float, labels: list[str] | None = None) -> dict:
    """``component_cfg`` for ``nlp.pipe``: the threshold for every scoring component,
    and the labels for the zero-shot one."""
    options = {}
    for name in _scoring_components(nlp):
        options[name] = {"threshold": threshold}
        if name == ZERO_SHOT or _factory(nlp, name) == ZERO_SHOT:
            options[name]["labels"] = list(labels or [])
    return options


def settings_key(pipeline: str, options: dict) -> str:
    """Names the settings a prediction was made with; a document predicted with other
    settings is tagged again when it comes up (unless the annotator has touched it)."""
    return json.dumps({"pipeline": pipeline, "options": options}, sort_keys=True)


def words(nlp, text: str) -> list[tuple[int, int]]:
    return _tokens(nlp.make_doc(text))


def _tokens(doc) -> list[tuple[int, int]]:
    return [(token.idx, token.idx + len(token.text)) for token in doc if not token.is_space]


def tag(nlp, texts: list[str], options: dict, *, batch_size: int = 16) -> list[Tagged]:
    has_score = SpacySpan.has_extension("score")
    tagged = []
    for doc in nlp.pipe(texts, batch_size=batch_size, component_cfg=options):
        spans = [Span(ent.start_char, ent.end_char, ent.label_, _score(ent) if has_score else None)
                 for ent in doc.ents]
        tagged.append(Tagged(_tokens(doc), spans))
    return tagged


def _score(ent) -> float | None:
    # Components may store numpy or torch scalars; the store writes JSON.
    return None if ent._.score is None else float(ent._.score)
