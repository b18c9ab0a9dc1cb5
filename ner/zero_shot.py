"""The label-conditioned (zero-shot) span model: entity types are given as words at run
time, not learnt as output rows.

A uni-encoder in GLiNER's manner: the label names and the text go through one
transformer as ``[CLS] <<ENT>> person <<ENT>> disease <<SEP>> text... [SEP]``; each label
is the mean of its ``<<ENT>>`` marker's vector and its name pieces' mean vector (or the
marker's alone, as in GLiNER), each word the vector of its first subword. Every
span of up to ``max_width`` words gets a vector, and its score for a label is the dot
product of the span's vector with the label's projected vector, through a sigmoid, so
decoding is flat or nested as for the supervised span model.

Long texts and many labels:
- the text is windowed (``ner.windows``) and the label prompt is prepended to every window,
  so labels are never truncated and no text is dropped; a label's vector is its mean
  over the windows;
- labels are split into groups of at most ``labels_per_group`` labels and
  ``prompt_subwords`` subwords (``label_groups``); each group is run on its own and the
  groups' score columns are concatenated, so 100+ labels never overflow the context and a
  label's scores depend only on the labels of its own group.

Two span representations share the head (``SPAN_REPRESENTATIONS``): ``endpoints`` (this
suite's: start ⊕ end ⊕ width embedding, then an MLP; with a learnt score bias that starts
at a low prior so training does not spend its first steps unlearning 0.5 everywhere) and
``markerV0`` (GLiNER's start/end MLPs and output MLP), which is what lets a checkpoint
saved by the ``gliner`` library run here unchanged (``ner.gliner_checkpoint``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ner.blocks import predict_in_blocks
from ner.decoding import DECODERS
from ner.encoders import WordEncoder
from ner.span_model import span_mask
from ner.windows import assign_positions, plan_windows

# The fewest subwords of text a window must keep after its label prompt.
MIN_TEXT_SUBWORDS = 16
LABEL_VECTORS = ("marker", "marker_and_name")


@dataclass
class ZeroShotSpec:
    """What ``ner_suite.ZeroShotModel.v1`` in a config describes: everything but the
    weights. Labels are not part of the model; they come with each call."""

    architecture: ClassVar[str] = "zero_shot"
    encoder: str = "e5-small"
    max_width: int = 12
    hidden_size: int = 384
    dropout: float = 0.1
    window: int = 256  # subwords per encoder row: special tokens + label prompt + text
    stride: int = 128
    block_words: int = 2048  # documents longer than this are scored in blocks (ner.blocks)
    span_representation: str = "endpoints"  # a key of SPAN_REPRESENTATIONS
    rnn_layers: int = 0  # bidirectional LSTM layers over the word vectors (GLiNER: 1)
    projection_ratio: int = 1  # inner width of the projection MLPs, in hidden sizes (GLiNER: 4)
    score_bias: bool = True  # a learnt bias added to every span × label score
    prior_probability: float = 0.01  # where that bias starts: sigmoid(bias) = prior
    labels_per_group: int = 25
    prompt_subwords: int = 128  # the most subwords one group's prompt may take in a window
    lowercase_prompts: bool = True  # "Person" and "person" ask the same; ents keep the caller's string
    label_vector: str = "marker_and_name"  # or "marker" (GLiNER's): see PromptEncoder.prompt
    ent_token: str = "<<ENT>>"
    sep_token: str = "<<SEP>>"

    def __post_init__(self):
        if self.label_vector not in LABEL_VECTORS:
            raise ValueError(f"label_vector must be one of {LABEL_VECTORS}, got {self.label_vector!r}")
        if self.span_representation not in SPAN_REPRESENTATIONS:
            raise ValueError(f"span_representation must be one of {sorted(SPAN_REPRESENTATIONS)}, "
                             f"got {self.span_representation!r}")

    def build(self, encoder: "PromptEncoder") -> "ZeroShotModel":
        return ZeroShotModel(encoder, self)


def build_zero_shot_model(
    encoder: str = "e5-small",
    max_width: int = 12,
    hidden_size: int = 384,
    dropout: float = 0.1,
    window: int = 256,
    stride: int = 128,
    block_words: int = 2048,
    span_representation: str = "endpoints",
    rnn_layers: int = 0,
    projection_ratio: int = 1,
    score_bias: bool = True,
    prior_probability: float = 0.01,
    labels_per_group: int = 25,
    prompt_subwords: int = 128,
    lowercase_prompts: bool = True,
    label_vector: str = "marker_and_name",
    ent_token: str = "<<ENT>>",
    sep_token: str = "<<SEP>>",
) -> ZeroShotSpec:
    """Registered as ``ner_suite.ZeroShotModel.v1`` (entry point ``spacy_architectures``)."""
    return ZeroShotSpec(
        encoder=encoder, max_width=max_width, hidden_size=hidden_size, dropout=dropout, window=window, stride=stride,
        block_words=block_words, span_representation=span_representation, rnn_layers=rnn_layers,
        projection_ratio=projection_ratio, score_bias=score_bias, prior_probability=prior_probability,
        labels_per_group=labels_per_group, prompt_subwords=prompt_subwords, lowercase_prompts=lowercase_prompts,
        label_vector=label_vector, ent_token=ent_token, sep_token=sep_token)


# --------------------------------------------------------------------------- prompt tokens


def add_prompt_tokens(transformer, tokenizer, spec: ZeroShotSpec) -> None:
    """Give the tokenizer the label marker and separator tokens (when it lacks them) and
    the transformer embedding rows for them: the marker starts as the mean embedding of
    the pieces of "type", the separator as the tokenizer's own separator, so neither
    starts as noise."""
    missing = [token for token in (spec.ent_token, spec.sep_token) if _token_id(tokenizer, token) is None]
    if not missing:
        return
    with torch.no_grad():
        embeddings = transformer.get_input_embeddings().weight
        type_pieces = tokenizer(["type"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
        starts = {spec.ent_token: embeddings[type_pieces].mean(0) if type_pieces else embeddings.mean(0)}
        separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        starts[spec.sep_token] = embeddings[separator].clone() if separator is not None else embeddings.mean(0)
    tokenizer.add_tokens(missing, special_tokens=True)
    transformer.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        embeddings = transformer.get_input_embeddings().weight
        for token in missing:
            embeddings[_token_id(tokenizer, token)] = starts[token]


def _token_id(tokenizer, token: str) -> int | None:
    index = tokenizer.convert_tokens_to_ids(token)
    if index is None or (index == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return index


# --------------------------------------------------------------------------- label groups


def label_groups(labels: list[str], count_pieces, per_group: int, prompt_subwords: int) -> list[list[str]]:
    """Labels, in order, cut into groups of at most ``per_group`` labels whose prompt
    (one marker per label, the label's pieces, one separator) takes at most
    ``prompt_subwords`` subwords. A label too long for a prompt on its own is an error."""
    groups, current, size = [], [], 1  # the separator
    for label in labels:
        cost = 1 + count_pieces(label)
        if 1 + cost > prompt_subwords:
            raise ValueError(f"label {label!r} takes {cost} subwords; a label prompt may take {prompt_subwords - 1}")
        if current and (len(current) >= per_group or size + cost > prompt_subwords):
            groups.append(current)
            current, size = [], 1
        current.append(label)
        size += cost
    if current:
        groups.append(current)
    return groups


# --------------------------------------------------------------------------- encoder


@dataclass
class PromptedWords:
    vectors: torch.Tensor  # (batch, max_words, hidden): one per word
    mask: torch.Tensor  # (batch, max_words) bool
    labels: torch.Tensor  # (batch, max_labels, hidden): one per label of the sequence's prompt
    label_mask: torch.Tensor  # (batch, max_labels) bool
    n_windows: list[int]


class PromptEncoder(WordEncoder):
    """A ``WordEncoder`` whose every window starts with a label prompt: each sequence
    comes with its own labels (at most one group's worth)."""

    def __init__(self, transformer, tokenizer, spec: ZeroShotSpec):
        super().__init__(transformer, tokenizer, spec.window, spec.stride)
        self.lowercase_prompts = spec.lowercase_prompts
        self.label_vector = spec.label_vector
        self.ent_id = _token_id(tokenizer, spec.ent_token)
        self.sep_id = _token_id(tokenizer, spec.sep_token)
        if self.ent_id is None or self.sep_id is None:
            raise ValueError(f"the tokenizer lacks {spec.ent_token!r} or {spec.sep_token!r}: call add_prompt_tokens first")

    def prompt_text(self, label: str) -> str:
        return label.lower() if self.lowercase_prompts else label

    def label_pieces(self, label: str) -> int:
        return len(self.word_pieces(self.prompt_text(label)))

    def prompt(self, labels: list[str]) -> tuple[list[int], torch.Tensor]:
        """Subword ids of ``<<ENT>> label <<ENT>> label ... <<SEP>>`` and the pooling
        matrix (n_labels, prompt length) that turns the prompt's output vectors into one
        vector per label: its marker's (``label_vector="marker"``), or the mean of its
        marker's and of its name pieces' mean (``"marker_and_name"``)."""
        ids, spans = [], []
        for label in labels:
            marker = len(ids)
            ids.append(self.ent_id)
            ids.extend(self.word_pieces(self.prompt_text(label)))
            spans.append((marker, len(ids)))
        ids.append(self.sep_id)
        pooling = torch.zeros(len(labels), len(ids))
        for i, (marker, end) in enumerate(spans):
            if self.label_vector == "marker" or end == marker + 1:
                pooling[i, marker] = 1.0
            else:
                pooling[i, marker] = 0.5
                pooling[i, marker + 1 : end] = 0.5 / (end - marker - 1)
        return ids, pooling

    def forward(self, batch: list[list[str]], prompts: list[list[str]], max_windows_per_pass: int = 64) -> PromptedWords:
        device = next(self.parameters()).device
        specials = self._special_ids()
        rows, plans = [], []
        for words, labels in zip(batch, prompts):
            prompt, pooling = self.prompt(labels)
            inner = self.window - len(specials[0]) - len(specials[1]) - len(prompt)
            if inner < MIN_TEXT_SUBWORDS:
                raise ValueError(f"a label prompt of {len(prompt)} subwords leaves {inner} of the {self.window}-subword "
                                 f"window for text; ask fewer labels per group")
            ids, first = [], []
            for word in words:
                first.append(len(ids))
                ids.extend(self.word_pieces(word))
            windows = plan_windows(max(len(ids), 1), inner, min(self.stride, inner))
            plans.append((ids, first, windows, len(rows), len(prompt), pooling))
            for window in windows:
                rows.append(specials[0] + prompt + ids[window.start : window.end] + specials[1])
        outputs = self._encode_rows(rows, device, max_windows_per_pass)
        start = len(specials[0])
        max_words = max((len(words) for words in batch), default=0)
        max_labels = max((len(labels) for labels in prompts), default=0)
        vectors = outputs.new_zeros(len(batch), max(max_words, 1), outputs.shape[-1])
        mask = torch.zeros(len(batch), max(max_words, 1), dtype=torch.bool, device=device)
        label_vectors = outputs.new_zeros(len(batch), max(max_labels, 1), outputs.shape[-1])
        label_mask = torch.zeros(len(batch), max(max_labels, 1), dtype=torch.bool, device=device)
        for b, (ids, first, windows, row0, prompt_length, pooling) in enumerate(plans):
            if len(pooling):
                # the prompt's outputs averaged over the windows, then pooled per label
                prompt_outputs = outputs[row0 : row0 + len(windows), start : start + prompt_length].mean(0)
                label_vectors[b, : len(pooling)] = pooling.to(device=device, dtype=outputs.dtype) @ prompt_outputs
                label_mask[b, : len(pooling)] = True
            if not first:
                continue
            owner, position = assign_positions(len(ids), windows)
            first = np.asarray(first)
            row = torch.as_tensor(owner[first] + row0, dtype=torch.long, device=device)
            column = torch.as_tensor(position[first] + start + prompt_length, dtype=torch.long, device=device)
            vectors[b, : len(first)] = outputs[row, column]
            mask[b, : len(first)] = True
        return PromptedWords(vectors, mask, label_vectors, label_mask, [len(p[2]) for p in plans])


# --------------------------------------------------------------------------- head


def projection_mlp(input_size: int, output_size: int, dropout: float, ratio: int = 1) -> nn.Sequential:
    """Linear → ReLU → dropout → linear through ``ratio`` times the output width (GLiNER's
    projections have ratio 4; in this layout their weights load by position)."""
    return nn.Sequential(nn.Linear(input_size, ratio * output_size), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(ratio * output_size, output_size))


def span_ends(n_words: int, max_width: int, device) -> torch.Tensor:
    """(n_words, max_width) end word of the span starting at i of width w+1, clamped
    (clamped spans are masked by ``span_mask``)."""
    index = torch.arange(n_words, device=device)[:, None] + torch.arange(max_width, device=device)
    return index.clamp(max=n_words - 1)


class EndpointSpans(nn.Module):
    """start ⊕ end ⊕ width (as a sum of three projections), GELU, dropout, linear."""

    def __init__(self, hidden_size: int, max_width: int, dropout: float, ratio: int = 1):
        super().__init__()
        self.max_width = max_width
        self.start = nn.Linear(hidden_size, hidden_size)
        self.end = nn.Linear(hidden_size, hidden_size, bias=False)
        self.width = nn.Embedding(max_width, hidden_size)
        self.output = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size))

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        ends = span_ends(words.shape[1], self.max_width, words.device)
        hidden = self.start(words)[:, :, None, :] + self.end(words)[:, ends] + self.width.weight[None, None]
        return self.output(hidden)


class MarkerSpans(nn.Module):
    """GLiNER's ``markerV0`` layout: an MLP each for start and end words, their
    concatenation through a ReLU and an output MLP."""

    def __init__(self, hidden_size: int, max_width: int, dropout: float, ratio: int = 4):
        super().__init__()
        self.max_width = max_width
        self.project_start = projection_mlp(hidden_size, hidden_size, dropout, ratio)
        self.project_end = projection_mlp(hidden_size, hidden_size, dropout, ratio)
        self.out_project = projection_mlp(2 * hidden_size, hidden_size, dropout, ratio)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        ends = span_ends(words.shape[1], self.max_width, words.device)
        start = self.project_start(words)[:, :, None, :].expand(-1, -1, self.max_width, -1)
        end = self.project_end(words)[:, ends]
        return self.out_project(torch.cat([start, end], dim=-1).relu())


SPAN_REPRESENTATIONS = {"endpoints": EndpointSpans, "markerV0": MarkerSpans}


class WordLSTM(nn.Module):
    """A bidirectional LSTM over the word vectors that skips padding."""

    def __init__(self, hidden_size: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(hidden_size, hidden_size // 2, num_layers=layers, bidirectional=True, batch_first=True)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(-1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=words.shape[1])
        return output


class ZeroShotHead(nn.Module):
    """Word vectors and label vectors in, span × label logits out."""

    def __init__(self, input_size: int, spec: ZeroShotSpec):
        super().__init__()
        hidden = spec.hidden_size
        self.projection = nn.Linear(input_size, hidden) if input_size != hidden else None
        self.rnn = WordLSTM(hidden, spec.rnn_layers) if spec.rnn_layers else None
        self.spans = SPAN_REPRESENTATIONS[spec.span_representation](hidden, spec.max_width, spec.dropout,
                                                                    spec.projection_ratio)
        self.label_projection = projection_mlp(hidden, hidden, spec.dropout, spec.projection_ratio)
        if spec.score_bias:
            prior = torch.tensor(spec.prior_probability)
            self.bias = nn.Parameter(torch.log(prior / (1 - prior)))
        else:
            self.bias = None

    def forward(self, words, word_mask, labels) -> torch.Tensor:
        """(batch, n_words, input), (batch, n_words), (batch, n_labels, input) →
        logits (batch, n_words, max_width, n_labels)."""
        if self.projection is not None:
            words, labels = self.projection(words), self.projection(labels)
        if self.rnn is not None:
            words = self.rnn(words, word_mask)
        logits = torch.einsum("bwkd,bcd->bwkc", self.spans(words), self.label_projection(labels))
        return logits + self.bias if self.bias is not None else logits


# --------------------------------------------------------------------------- model


class ZeroShotModel(nn.Module):
    def __init__(self, encoder: PromptEncoder, spec: ZeroShotSpec):
        super().__init__()
        self.encoder = encoder
        self.spec = spec
        self.head = ZeroShotHead(encoder.hidden_size, spec)

    def forward(self, batch: list[list[str]], prompts: list[list[str]]):
        """Logits (batch, n_words, max_width, n_labels) of each sequence against its own
        labels, the span mask, the label mask and the windows each sequence needed."""
        encoded = self.encoder(batch, prompts)
        logits = self.head(encoded.vectors, encoded.mask, encoded.labels)
        return logits, span_mask(encoded.mask, self.spec.max_width), encoded.label_mask, encoded.n_windows

    def label_groups(self, labels: list[str]) -> list[list[str]]:
        return label_groups(labels, self.encoder.label_pieces, self.spec.labels_per_group, self.spec.prompt_subwords)

    @torch.no_grad()
    def probabilities(self, batch: list[list[str]], labels: list[str], words_per_pass: int = 2048):
        """Sigmoid probabilities, one (n_words, max_width, n_labels) array per sequence
        with the label axis in ``labels`` order, and the encoder rows each sequence
        needed (windows × label groups). Every sequence is run once per label group."""
        groups = self.label_groups(labels)
        columns, offset = [], 0
        for group in groups:
            columns.append(slice(offset, offset + len(group)))
            offset += len(group)
        width = self.spec.max_width
        outputs = [np.zeros((len(words), width, len(labels)), dtype=np.float32) for words in batch]
        windows = [0] * len(batch)
        items = [(i, g) for i in range(len(batch)) for g in range(len(groups))]
        start = 0
        while start < len(items):
            stop, total = start, 0
            while stop < len(items) and (stop == start or total + len(batch[items[stop][0]]) <= words_per_pass):
                total += len(batch[items[stop][0]])
                stop += 1
            part = items[start:stop]
            logits, mask, _, used = self([batch[i] for i, _ in part], [groups[g] for _, g in part])
            probs = (torch.sigmoid(logits.float()) * mask[..., None]).cpu().numpy()
            for n, (i, g) in enumerate(part):
                outputs[i][:, :, columns[g]] = probs[n, : len(batch[i]), :, : len(groups[g])]
                windows[i] += used[n]
            start = stop
        return outputs, windows

    @torch.no_grad()
    def predict(self, batch: list[list[str]], labels: list[str]):
        """Like ``probabilities``, for sequences of any length: long ones are scored in
        word blocks (``ner.blocks``). Also returns the blocks used."""
        margin = max(self.spec.max_width, 64)
        return predict_in_blocks(lambda part: self.probabilities(part, labels), batch, self.spec.block_words, margin)

    def decode(self, probs, labels: list[str], threshold: float, decoding: str = "flat"):
        """[(start, end_exclusive, label, score)] of one sequence's probabilities."""
        return DECODERS[decoding](probs, list(labels), threshold)

    def loss(self, batch: list[list[str]], batch_spans, prompts: list[list[str]]) -> torch.Tensor:
        """Binary cross-entropy over every valid (span, asked label) pair, summed over
        labels and averaged over valid spans. A gold span whose label is not among its
        sequence's ``prompts`` is not a target (it is simply not asked about)."""
        logits, mask, label_mask, _ = self(batch, prompts)
        targets = torch.zeros_like(logits)
        for b, (spans, labels) in enumerate(zip(batch_spans, prompts)):
            index = {label: i for i, label in enumerate(labels)}
            for start, end, label in spans:
                if 0 < end - start <= self.spec.max_width and label in index:
                    targets[b, start, end - start - 1, index[label]] = 1.0
        weights = (mask[..., None] & label_mask[:, None, None, :]).float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, weight=weights, reduction="sum")
        return loss / mask.sum().clamp(min=1)

    def learnable(self, start: int, end: int) -> bool:
        return end - start <= self.spec.max_width
