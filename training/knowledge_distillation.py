"""Knowledge distillation of a trained span pipeline into a smaller student.

A recipe with a ``[distillation]`` table trains its student (``[encoder] init`` with
``layers``: the teacher's own weights with only some of its transformer layers) against
up to five targets, weighted by the table:

- ``soft_weight``: binary cross-entropy against the teacher's sigmoid probability of
  every (span, label) cell, the "soft span-label distributions";
- ``hard_weight``: the gold spans, as in plain training (loss masked per dataset);
- ``hidden_weight``: mean squared error between the student's and the teacher's word
  vectors (the last layer's output, pooled per word: hidden-state transfer; the
  student keeps the teacher's head, so matching these vectors is what the head needs).
- ``layer_weight``: mean squared error between each student layer's output and the
  output of the teacher layer it was initialised from (``[encoder] layers``), on every
  subword: intermediate hidden-state transfer (TinyBERT's layer mapping).
- ``relation_weight``: MiniLM-v2's self-attention relation transfer on the last layer:
  the query-query, key-key and value-value relations (softmax of scaled dot products
  within each of ``relation_heads`` slices, 12 by default) of the student matched to the
  teacher's by KL divergence, averaged over subwords and relation heads.

The last two need the teacher's inner states, which the fixed targets do not hold: with
either weight set, the teacher is loaded on ``torch`` and runs beside the student on each
batch (no gradient).

The first three are fixed targets: segments are fixed for a run (only their batching
changes by epoch), so the teacher runs once, before training, on the backend it ships
with, and its outputs ride on each segment (fp16). ``unlabeled`` names more ``dataset:split`` text that the teacher labels;
its gold spans are ignored (hard loss masked) and only the teacher's targets train.

The teacher never sees test data: it labels the train splits and ``unlabeled`` only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ner.span_model import span_loss, span_mask, span_targets


def keep_layers(transformer, layers) -> None:
    """Keep only ``layers`` of a BERT-like transformer (an int: the first that many; a
    list: those layer indices, in that order), in place; its config follows."""
    indices = list(range(layers)) if isinstance(layers, int) else [int(i) for i in layers]
    stack = transformer.encoder.layer
    if not indices or max(indices) >= len(stack) or min(indices) < 0:
        raise ValueError(f"layers {layers!r} are not within the encoder's {len(stack)} layers")
    transformer.encoder.layer = nn.ModuleList([stack[i] for i in indices])
    transformer.config.num_hidden_layers = len(indices)
    pruned = getattr(transformer.config, "pruned_heads", None) or {}
    transformer.config.pruned_heads = {new: pruned[old] for new, old in enumerate(indices) if old in pruned}


def shape_encoder(transformer, encoder: dict, tokenizer=None, records=()) -> None:
    """Apply a recipe's ``[encoder]`` structure to a transformer, in place: ``layers``
    (see ``keep_layers``), ``ffn_size`` (the most important FFN neurons of each layer,
    ``ner.kernels.pruning.prune_ffn_neurons``) and ``heads`` (the most important attention
    heads of each layer on the first ``importance_records`` of ``records``, default 256,
    ``ner.kernels.pruning.prune_attention_heads``)."""
    if encoder.get("layers"):
        keep_layers(transformer, encoder["layers"])
    if encoder.get("ffn_size"):
        from ner.kernels.pruning import prune_ffn_neurons

        prune_ffn_neurons(transformer, encoder["ffn_size"])
    if encoder.get("heads"):
        from ner.kernels.pruning import attention_head_importance, prune_attention_heads

        if tokenizer is None or not records:
            raise ValueError("pruning attention heads needs text to rank them on: give the training records")
        sample = [r.words for r in records[: encoder.get("importance_records", 256)]]
        longest = min(256, transformer.config.max_position_embeddings)
        batches = []
        for start in range(0, len(sample), 16):
            encoded = tokenizer(sample[start:start + 16], is_split_into_words=True, truncation=True, max_length=longest,
                                padding=True, return_tensors="pt")
            batches.append((encoded["input_ids"], encoded["attention_mask"]))
        prune_attention_heads(transformer, encoder["heads"], attention_head_importance(transformer, batches))


def unlabeled_segments(recipe: dict, count_pieces, budget: int, limit: int | None = None):
    """Segments of the ``[distillation] unlabeled`` text, gold spans dropped: the teacher
    is their only annotator (``labels = []`` masks the hard loss)."""
    from ner.training.batches import make_segments
    from ner.training.loop import load_split

    names = recipe.get("distillation", {}).get("unlabeled", [])
    segments = []
    for record in load_split(names, limit=limit) if names else []:
        record.spans = []
        record.labels = []
        segments.extend(make_segments(record, count_pieces, budget))
    return segments


@torch.inference_mode()
def attach_teacher_targets(teacher_model, segments, *, with_vectors: bool, batch_size: int = 32, log=print) -> None:
    """Run the teacher over every segment once and keep its span probabilities (and word
    vectors, ``with_vectors``) on the segment, as fp16 arrays."""
    teacher_model.eval()
    order = sorted(range(len(segments)), key=lambda i: len(segments[i].words))
    for done, start in enumerate(range(0, len(order), batch_size)):
        chunk = [segments[i] for i in order[start : start + batch_size]]
        words = [s.words for s in chunk]
        encoded = teacher_model.encoder(words)
        logits = teacher_model.head(encoded.vectors)
        probs = torch.sigmoid(logits.float()) * span_mask(encoded.mask, logits.shape[2])[..., None]
        for b, segment in enumerate(chunk):
            n = len(segment.words)
            segment.teacher_probs = probs[b, :n].numpy().astype(np.float16)
            if with_vectors:
                segment.teacher_vectors = encoded.vectors[b, :n].float().numpy().astype(np.float16)
        if done % 50 == 0:
            log(f"teacher: {min(start + batch_size, len(order))}/{len(order)} segments")


def _padded(arrays, n_words: int, trailing_shape) -> torch.Tensor:
    out = torch.zeros(len(arrays), max(n_words, 1), *trailing_shape)
    for b, array in enumerate(arrays):
        out[b, : len(array)] = torch.from_numpy(array.astype(np.float32))
    return out


class InnerStates:
    """Forward hooks on a BERT-like transformer while a ``with`` block runs: the padded
    attention mask of its input, each layer's output and the query/key/value projections
    of its last layer (each a list of the passes' tensors, one pass per window chunk)."""

    def __init__(self, transformer, *, layers: bool, relations: bool):
        self.transformer, self.layers, self.relations = transformer, layers, relations
        self.mask, self.hidden, self.qkv = [], {}, {}

    def __enter__(self):
        stack = self.transformer.encoder.layer
        self.handles = [self.transformer.register_forward_pre_hook(self._keep_mask, with_kwargs=True)]
        if self.layers:
            for i, layer in enumerate(stack):
                self.handles.append(layer.register_forward_hook(self._keeper(self.hidden, i)))
        if self.relations:
            attention = stack[-1].attention.self
            for name in ("query", "key", "value"):
                self.handles.append(getattr(attention, name).register_forward_hook(self._keeper(self.qkv, name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _keep_mask(self, module, args, kwargs):
        self.mask.append(kwargs["attention_mask"])

    @staticmethod
    def _keeper(store, key):
        def keep(module, args, output):
            store.setdefault(key, []).append(output[0] if isinstance(output, tuple) else output)
        return keep

    def attention_mask(self) -> torch.Tensor:
        return _stacked(self.mask).bool()

    def layer_output(self, i: int) -> torch.Tensor:
        return _stacked(self.hidden[i])

    def projection(self, name: str) -> torch.Tensor:
        return _stacked(self.qkv[name])


def _stacked(parts):
    """One tensor of a pass list; passes are padded to their own widths, so pad to the widest."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts])


def relation_log_probs(states: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLM-v2 relations of ``states`` (batch, tokens, hidden): for each of ``heads``
    slices of the hidden size, log softmax over the tokens of the scaled dot products
    (batch, heads, tokens, tokens); padding never receives probability."""
    batch, tokens, hidden = states.shape
    split = states.view(batch, tokens, heads, hidden // heads).transpose(1, 2)
    scores = split @ split.transpose(-1, -2) / (hidden // heads) ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], -1e4)
    return torch.log_softmax(scores.float(), dim=-1)


def relation_loss(student: InnerStates, teacher: InnerStates, heads: int) -> torch.Tensor:
    """KL(teacher || student) of the query, key and value relations, per real token and head."""
    mask = student.attention_mask()
    weight = mask[:, None, :].float()
    total = 0.0
    for name in ("query", "key", "value"):
        target = relation_log_probs(teacher.projection(name), mask, heads)
        predicted = relation_log_probs(student.projection(name), mask, heads)
        divergence = (target.exp() * (target - predicted)).sum(-1)  # (batch, heads, tokens)
        total = total + (divergence * weight).sum() / (weight.sum() * heads).clamp(min=1.0)
    return total / 3


def layer_loss(student: InnerStates, teacher: InnerStates, layer_map) -> torch.Tensor:
    """Mean squared error per value between student layer j and teacher layer layer_map[j], real tokens only."""
    mask = student.attention_mask()[..., None].float()
    total = 0.0
    for j, i in enumerate(layer_map):
        mine, theirs = student.layer_output(j), teacher.layer_output(i)
        total = total + ((mine - theirs) ** 2 * mask).sum() / (mask.sum() * mine.shape[-1]).clamp(min=1.0)
    return total / len(layer_map)


def distillation_loss(model, batch, weights: dict, teacher=None, layer_map=None) -> torch.Tensor:
    """The student's loss on a batch of segments that carry teacher targets: weighted sum
    of the soft (teacher probabilities), hard (gold) and hidden (word vectors) terms, and,
    with ``teacher`` (a span model on torch) given, the layer and relation terms."""
    words = [s.words for s in batch]
    inner = weights.get("layer_weight", 0.0) or weights.get("relation_weight", 0.0)
    if inner and teacher is None:
        raise ValueError("layer_weight and relation_weight need the teacher model beside the student")
    states = dict(layers=bool(weights.get("layer_weight", 0.0)), relations=bool(weights.get("relation_weight", 0.0)))
    if inner:
        with torch.no_grad(), InnerStates(teacher.encoder.transformer, **states) as teacher_states:
            teacher.encoder(words)
        with InnerStates(model.encoder.transformer, **states) as student_states:
            encoded = model.encoder(words)
    else:
        encoded = model.encoder(words)
    logits = model.head(encoded.vectors)
    n_words, max_width = logits.shape[1], logits.shape[2]
    mask = span_mask(encoded.mask, max_width)
    labels = model.labels
    total = logits.new_zeros(())
    if weights.get("soft_weight", 1.0):
        soft = _padded([s.teacher_probs for s in batch], n_words, logits.shape[2:])
        total = total + weights.get("soft_weight", 1.0) * span_loss(logits, soft.to(logits.device), mask)
    if weights.get("hard_weight", 1.0):
        targets = span_targets([s.spans for s in batch], n_words, max_width, labels).to(logits.device)
        label_mask = torch.tensor([[1.0 if s.labels is None or label in s.labels else 0.0 for label in labels]
                                   for s in batch], device=logits.device)
        if label_mask.sum() > 0:
            total = total + weights.get("hard_weight", 1.0) * span_loss(logits, targets, mask, label_mask)
    if weights.get("hidden_weight", 0.0):
        vectors = _padded([s.teacher_vectors for s in batch], n_words, encoded.vectors.shape[-1:]).to(logits.device)
        word_mask = encoded.mask[..., None].float()
        squared = ((encoded.vectors - vectors) ** 2 * word_mask).sum() / word_mask.sum().clamp(min=1.0)
        total = total + weights["hidden_weight"] * squared / encoded.vectors.shape[-1]
    if weights.get("layer_weight", 0.0):
        layer_map = layer_map or list(range(len(model.encoder.transformer.encoder.layer)))
        total = total + weights["layer_weight"] * layer_loss(student_states, teacher_states, layer_map)
    if weights.get("relation_weight", 0.0):
        total = total + weights["relation_weight"] * relation_loss(student_states, teacher_states,
                                                                   int(weights.get("relation_heads", 12)))
    return total


def prepare_distillation(recipe: dict, segments, count_pieces, limit=None, log=print):
    """The segments to train on (the recipe's, plus its unlabeled text), each carrying the
    teacher's targets, and the loss function for ``train_epoch``."""
    from ner.loading import load

    settings = recipe["distillation"]
    budget = recipe["training"].get("segment_subwords", 200)
    segments = segments + unlabeled_segments(recipe, count_pieces, budget, limit)
    online = bool(settings.get("layer_weight", 0.0) or settings.get("relation_weight", 0.0))
    teacher = load(settings["teacher"], backend="torch" if online else settings.get("teacher_backend"))
    teacher_model = next(c for _, c in teacher.pipeline if hasattr(c, "model")).model
    log(f"teacher {settings['teacher']}: labelling {len(segments)} segments")
    attach_teacher_targets(teacher_model, segments, with_vectors=bool(settings.get("hidden_weight", 0.0)), log=log)
    names = ("soft_weight", "hard_weight", "hidden_weight", "layer_weight", "relation_weight", "relation_heads")
    weights = {k: settings[k] for k in names if k in settings}
    layers = recipe.get("encoder", {}).get("layers")
    layer_map = list(range(layers)) if isinstance(layers, int) else layers
    if not online:
        return segments, lambda model, batch: distillation_loss(model, batch, weights)
    for parameter in teacher_model.parameters():
        parameter.requires_grad_(False)
    return segments, lambda model, batch: distillation_loss(model, batch, weights, teacher_model.eval(), layer_map)
