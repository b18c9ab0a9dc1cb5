"""The supervised span classifier: every span of up to ``max_width`` words gets a
sigmoid score per label from its start word, its end word and its width (a GLiNER-like
span representation). Sigmoid scores let a dataset that annotates only some types train
only those types (``label_mask``), and let decoding be flat or nested."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ner.blocks import predict_in_blocks
from ner.decoding import DECODERS, keep_labels
from ner.encoders import WordEncoder


@dataclass
class SpanModelSpec:
    """What ``ner_suite.SpanModel.v1`` in a config describes: everything but the labels
    and the weights, which come from training data or from a saved pipeline."""

    architecture: ClassVar[str] = "span"
    encoder: str = "e5-small"
    max_width: int = 10
    hidden_size: int = 384
    dropout: float = 0.1
    window: int = 256
    stride: int = 128
    block_words: int = 2048  # documents longer than this are scored in blocks (ner.blocks)

    def build(self, encoder: WordEncoder, labels: list[str]) -> "SpanModel":
        return SpanModel(encoder, labels, self)


def build_span_model(
    encoder: str = "e5-small",
    max_width: int = 10,
    hidden_size: int = 384,
    dropout: float = 0.1,
    window: int = 256,
    stride: int = 128,
    block_words: int = 2048,
) -> SpanModelSpec:
    """Registered as ``ner_suite.SpanModel.v1`` (entry point ``spacy_architectures``)."""
    return SpanModelSpec(encoder, max_width, hidden_size, dropout, window, stride, block_words)


class SpanHead(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, n_labels: int, max_width: int, dropout: float):
        super().__init__()
        self.max_width = max_width
        self.start = nn.Linear(input_size, hidden_size)
        self.end = nn.Linear(input_size, hidden_size, bias=False)
        self.width = nn.Embedding(max_width, hidden_size)
        self.classify = nn.Sequential(
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, n_labels),
        )

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """(batch, n_words, input) → logits (batch, n_words, max_width, n_labels) for the
        span starting at word i of width w+1; spans past the end are garbage and masked."""
        batch, n_words, _ = words.shape
        start = self.start(words)
        end = self.end(words)
        # end index i + w, clamped; clamped entries are masked by span_mask
        index = torch.arange(n_words, device=words.device)[:, None] + torch.arange(self.max_width, device=words.device)
        end = end[:, index.clamp(max=n_words - 1)]
        hidden = start[:, :, None, :] + end + self.width.weight[None, None]
        return self.classify(hidden)


def span_mask(word_mask: torch.Tensor, max_width: int) -> torch.Tensor:
    """(batch, n_words) → (batch, n_words, max_width): the span lies inside the sequence."""
    lengths = word_mask.sum(-1)
    n_words = word_mask.shape[1]
    ends = torch.arange(n_words, device=word_mask.device)[:, None] + torch.arange(max_width, device=word_mask.device)
    return ends[None] < lengths[:, None, None]


class SpanModel(nn.Module):
    def __init__(self, encoder: WordEncoder, labels: list[str], spec: SpanModelSpec):
        super().__init__()
        self.encoder = encoder
        self.labels = list(labels)
        self.spec = spec
        self.head = SpanHead(encoder.hidden_size, spec.hidden_size, len(labels), spec.max_width, spec.dropout)

    @torch.no_grad()
    def add_labels(self, labels: dict[str, str]) -> None:
        """New labels (name → the existing label whose classifier row each starts from):
        a trained model grows corpus variants of its types without forgetting them."""
        out = self.head.classify[-1]
        rows = [self.labels.index(source) for source in labels.values()]
        grown = nn.Linear(out.in_features, out.out_features + len(rows)).to(out.weight.device)
        grown.weight.copy_(torch.cat([out.weight, out.weight[rows]]))
        grown.bias.copy_(torch.cat([out.bias, out.bias[rows]]))
        self.head.classify[-1] = grown
        self.labels += list(labels)

    def forward(self, batch: list[list[str]]):
        """Logits (batch, n_words, max_width, n_labels), span mask, and windows used."""
        encoded = self.encoder(batch)
        logits = self.head(encoded.vectors)
        return logits, span_mask(encoded.mask, self.spec.max_width), encoded.n_windows

    @torch.no_grad()
    def probabilities(self, batch: list[list[str]]):
        """Sigmoid probabilities as numpy arrays, one (n_words, max_width, n_labels) per
        sequence, and the number of windows each sequence needed."""
        logits, mask, n_windows = self(batch)
        probs = torch.sigmoid(logits.float()) * mask[..., None]
        return [probs[i, : len(words)].cpu().numpy() for i, words in enumerate(batch)], n_windows

    @torch.no_grad()
    def predict(self, batch: list[list[str]]):
        """Like ``probabilities``, for sequences of any length: long ones are scored in
        blocks whose margins cover the widest span. Also returns the blocks used."""
        margin = max(self.spec.max_width, 64)
        return predict_in_blocks(self.probabilities, batch, self.spec.block_words, margin)

    def decode(self, probs, threshold: float, decoding: str = "flat", labels=None):
        """[(start, end_exclusive, label, score)] of one sequence's probabilities."""
        return DECODERS[decoding](keep_labels(probs, self.labels, labels), self.labels, threshold)

    def loss(self, batch: list[list[str]], batch_spans, label_mask=None) -> torch.Tensor:
        logits, mask, _ = self(batch)
        targets = span_targets(batch_spans, logits.shape[1], self.spec.max_width, self.labels)
        if label_mask is not None:
            label_mask = label_mask.to(logits.device)
        return span_loss(logits, targets.to(logits.device), mask, label_mask)

    def learnable(self, start: int, end: int) -> bool:
        return end - start <= self.spec.max_width


def span_targets(batch_spans, n_words: int, max_width: int, labels: list[str]):
    """Word spans [(start, end_exclusive, label)] per sequence → a 0/1 target tensor
    (batch, n_words, max_width, n_labels). Spans wider than max_width are left out
    (and counted by the caller)."""
    index = {label: i for i, label in enumerate(labels)}
    target = torch.zeros(len(batch_spans), max(n_words, 1), max_width, len(labels))
    for b, spans in enumerate(batch_spans):
        for start, end, label in spans:
            width = end - start
            if 0 < width <= max_width and label in index:
                target[b, start, width - 1, index[label]] = 1.0
    return target


def span_loss(logits, targets, mask, label_mask=None):
    """Binary cross-entropy over every valid (span, label) pair, summed and divided by
    the number of valid spans' label cells that count. ``label_mask`` (batch, n_labels)
    is 1 where a sequence's dataset annotates that label."""
    weights = mask[..., None].float().expand_as(logits)
    if label_mask is not None:
        weights = weights * label_mask[:, None, None, :].float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")
    return loss / weights.sum().clamp(min=1.0) * logits.shape[-1]
