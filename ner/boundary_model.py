"""The long-span head: entities of any length, memory linear in the document's length.

Instead of enumerating every span up to a width (O(n·w) candidates, and nothing longer
than w), each word gets three sigmoid scores per label: it *starts* an entity, it *ends*
one, it lies *inside* one. A span is decoded from a start, the first end after it, and an
unbroken run of inside scores between them (SeNER's idea of scoring boundaries and pairing
them locally, with pairing reduced to "the next end inside the same run"); with
``inside="mean"`` the run may dip below the threshold as long as its mean passes. Scores are
per word, so a 50,000-word document costs 50,000 × 3 × labels numbers, and a 500-word
entity is as representable as a one-word one (up to ``max_length`` words).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ner.blocks import predict_in_blocks
from ner.encoders import WordEncoder

START, END, INSIDE = 0, 1, 2
INSIDE_RULES = ("all", "mean")  # how a span's inside words must pass (boundary_candidates)


@dataclass
class BoundaryModelSpec:
    """What ``ner_suite.BoundaryModel.v1`` in a config describes."""

    architecture: ClassVar[str] = "boundary"
    encoder: str = "e5-small"
    max_length: int = 1024  # longest entity decoded, in words
    hidden_size: int = 384
    dropout: float = 0.1
    window: int = 256
    stride: int = 128
    block_words: int = 2048
    # Loss weight of a positive start, end and inside cell: boundaries are rare (about 1 word
    # in 500 per label), and unweighted they are drowned by the negatives.
    positive_weights: tuple[float, float, float] = (10.0, 10.0, 3.0)
    # How the words between a start and its end must score "inside" (see INSIDE_RULES):
    # "all" (every one passes the threshold; v1's rule) or "mean" (their mean passes).
    inside: str = "all"
    # Bidirectional LSTM layers over the word vectors before the boundary convolution, added
    # to them (a residual that starts at zero), so a word's scores see its whole block of
    # words, not just its neighbours: the inside score of a 50-word entity has to stay up.
    context_layers: int = 0

    def build(self, encoder: WordEncoder, labels: list[str]) -> "BoundaryModel":
        return BoundaryModel(encoder, labels, self)


def build_boundary_model(
    encoder: str = "e5-small",
    max_length: int = 1024,
    hidden_size: int = 384,
    dropout: float = 0.1,
    window: int = 256,
    stride: int = 128,
    block_words: int = 2048,
    positive_weights: Sequence[float] = (10.0, 10.0, 3.0),
    inside: str = "all",
    context_layers: int = 0,
) -> BoundaryModelSpec:
    """Registered as ``ner_suite.BoundaryModel.v1`` (entry point ``spacy_architectures``);
    ``inside`` defaults to the rule every v1 config was trained and decoded with."""
    if inside not in INSIDE_RULES:
        raise ValueError(f"inside must be one of {INSIDE_RULES}, not {inside!r}")
    return BoundaryModelSpec(encoder, max_length, hidden_size, dropout, window, stride, block_words,
                             tuple(positive_weights), inside, context_layers)


class BoundaryHead(nn.Module):
    """Word vectors → (batch, n_words, 3, n_labels) logits: start, end, inside. A small
    convolution lets each word see its neighbours' vectors when deciding a boundary; with
    ``context_layers``, a bidirectional LSTM over the whole sequence first."""

    def __init__(self, input_size: int, hidden_size: int, n_labels: int, dropout: float, context_layers: int = 0):
        super().__init__()
        self.n_labels = n_labels
        self.input_size = input_size
        self.sequence = self.mix = None
        if context_layers:
            self.add_context(context_layers)
        self.context = nn.Conv1d(input_size, hidden_size, kernel_size=3, padding=1)
        self.classify = nn.Sequential(
            nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size),
            nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_size, 3 * n_labels),
        )

    def add_context(self, layers: int) -> None:
        """Give the head ``layers`` BiLSTM layers whose output is added to the word vectors
        through a projection that starts at zero: a trained head predicts as before."""
        from ner.zero_shot import WordLSTM

        self.sequence = WordLSTM(self.input_size, layers)
        self.mix = nn.Linear(self.input_size, self.input_size)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, words: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (batch, n_words): the real words, which the LSTM (if any) reads."""
        if self.sequence is not None:
            words = words + self.mix(self.sequence(words, mask))
        hidden = self.context(words.transpose(1, 2)).transpose(1, 2)
        batch, n_words, _ = words.shape
        return self.classify(hidden).view(batch, n_words, 3, self.n_labels)


class BoundaryModel(nn.Module):
    def __init__(self, encoder: WordEncoder, labels: list[str], spec: BoundaryModelSpec):
        super().__init__()
        self.encoder = encoder
        self.labels = list(labels)
        self.spec = spec
        self.head = BoundaryHead(encoder.hidden_size, spec.hidden_size, len(labels), spec.dropout, spec.context_layers)

    def forward(self, batch: list[list[str]]):
        encoded = self.encoder(batch)
        # A head without context layers takes the vectors alone (an ONNX backend exports it so).
        inputs = (encoded.vectors, encoded.mask) if self.spec.context_layers else (encoded.vectors,)
        return self.head(*inputs), encoded.mask, encoded.n_windows

    @torch.no_grad()
    def probabilities(self, batch: list[list[str]]):
        """One (n_words, 3, n_labels) array of start/end/inside probabilities per sequence."""
        logits, _, n_windows = self(batch)
        probs = torch.sigmoid(logits.float())
        return [probs[i, : len(words)].cpu().numpy() for i, words in enumerate(batch)], n_windows

    @torch.no_grad()
    def predict(self, batch: list[list[str]]):
        return predict_in_blocks(self.probabilities, batch, self.spec.block_words, margin=64)

    def decode(self, probs: np.ndarray, threshold: float, decoding: str = "flat", labels=None):
        return decode_boundaries(probs, self.labels, threshold, self.spec.max_length, decoding, labels,
                                 inside=self.spec.inside)

    def loss(self, batch: list[list[str]], batch_spans, label_mask=None) -> torch.Tensor:
        logits, mask, _ = self(batch)
        targets = boundary_targets(batch_spans, logits.shape[1], self.labels)
        weights = mask[:, :, None, None].float().expand_as(logits)
        if label_mask is not None:
            weights = weights * label_mask[:, None, None, :].float()
        positive = torch.tensor(self.spec.positive_weights, dtype=logits.dtype, device=logits.device)[:, None]
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, targets, weight=weights, pos_weight=positive, reduction="sum")
        return loss / weights.sum().clamp(min=1.0) * logits.shape[-1] * 3

    def learnable(self, start: int, end: int) -> bool:
        return end - start <= self.spec.max_length


def boundary_targets(batch_spans, n_words: int, labels: list[str]) -> torch.Tensor:
    """Word spans [(start, end_exclusive, label)] → 0/1 targets (batch, n_words, 3, n_labels)."""
    index = {label: i for i, label in enumerate(labels)}
    target = torch.zeros(len(batch_spans), max(n_words, 1), 3, len(labels))
    for b, spans in enumerate(batch_spans):
        for start, end, label in spans:
            if label in index and 0 <= start < end <= n_words:
                target[b, start, START, index[label]] = 1.0
                target[b, end - 1, END, index[label]] = 1.0
                target[b, start:end, INSIDE, index[label]] = 1.0
    return target


def boundary_candidates(probs: np.ndarray, labels: list[str], threshold, max_length: int, allowed=None,
                        inside: str = "all"):
    """[(score, start, end_exclusive, label)]: for every word whose start score passes the
    threshold (one number, or one per label), the span to the first word at or after it
    whose end score passes, provided the words from start to end score inside: with ``inside="all"`` every one of them
    passes the threshold; with ``"mean"`` their mean inside score does, so a 100-word
    entity survives a few words that dip below it, while a start paired across outside
    words (its own end missed) is still refused: those words pull the mean down.
    Linear in the number of words."""
    n_words = probs.shape[0]
    cuts = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(labels),))
    found = []
    for j, label in enumerate(labels):
        if allowed is not None and label not in allowed:
            continue
        cut = cuts[j]
        start_p, end_p, inside_p = probs[:, START, j], probs[:, END, j], probs[:, INSIDE, j]
        starts = np.nonzero(start_p >= cut)[0]
        if not len(starts):
            continue
        next_end = _next_true(end_p >= cut)
        next_break = _next_true(inside_p < cut)
        inside_sum = np.concatenate([[0.0], np.cumsum(inside_p, dtype=np.float64)])
        for s in starts:
            e = next_end[s]
            if e >= n_words or e - s + 1 > max_length or (inside == "all" and next_break[s] < e):
                continue
            mean_inside = (inside_sum[e + 1] - inside_sum[s]) / (e - s + 1)
            if inside == "mean" and mean_inside < cut:
                continue
            score = float((start_p[s] * end_p[e] * mean_inside) ** (1 / 3))
            found.append((score, int(s), int(e + 1), label))
    return found


def _next_true(flags: np.ndarray) -> np.ndarray:
    """For each position, the first position at or after it where ``flags`` is true
    (len(flags) when there is none)."""
    n = len(flags)
    index = np.where(flags, np.arange(n), n)
    return np.minimum.accumulate(index[::-1])[::-1]


def decode_boundaries(probs, labels, threshold=0.5, max_length=1024, decoding="flat", allowed=None, inside="all"):
    """Candidates resolved like span decoding: flat (no overlaps) or nested (no crossing),
    highest score first."""
    candidates = sorted(boundary_candidates(probs, labels, threshold, max_length, allowed, inside), reverse=True)
    kept = []
    if decoding == "flat":
        taken = np.zeros(probs.shape[0] + 1, dtype=bool)
        for score, start, end, label in candidates:
            if not taken[start:end].any():
                taken[start:end] = True
                kept.append((start, end, label, score))
    else:
        for score, start, end, label in candidates:
            if not any((s < start < e < end) or (start < s < end < e) or (s == start and e == end) for s, e, _, _ in kept):
                kept.append((start, end, label, score))
    return sorted(kept)
