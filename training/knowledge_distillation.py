"""Knowledge distillation of a trained span pipeline into a smaller student.

A recipe with a ``[distillation]`` table trains its student (``[encoder] init`` with
``layers``: the teacher's own weights with only some of its transformer layers) against
three targets, weighted by the table:

- ``soft_weight``: binary cross-entropy against the teacher's sigmoid probability of
  every (span, label) cell, the "soft span-label distributions";
- ``hard_weight``: the gold spans, as in plain training (loss masked per dataset);
- ``hidden_weight``: mean squared error between the student's and the teacher's word
  vectors (the last layer's output, pooled per word: hidden-state transfer; the
  student keeps the teacher's head, so matching these vectors is what the head needs).

Segments are fixed for a run (only their batching changes by epoch), so the teacher runs
once, before training, on the backend it ships with, and its outputs ride on each
segment (fp16). ``unlabeled`` names more ``dataset:split`` text that the teacher labels;
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


def distillation_loss(model, batch, weights: dict) -> torch.Tensor:
    """The student's loss on a batch of segments that carry teacher targets: weighted sum
    of the soft (teacher probabilities), hard (gold) and hidden (word vectors) terms."""
    words = [s.words for s in batch]
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
    return total


def prepare_distillation(recipe: dict, segments, count_pieces, limit=None, log=print):
    """The segments to train on (the recipe's, plus its unlabeled text), each carrying the
    teacher's targets, and the loss function for ``train_epoch``."""
    from ner.loading import load

    settings = recipe["distillation"]
    budget = recipe["training"].get("segment_subwords", 200)
    segments = segments + unlabeled_segments(recipe, count_pieces, budget, limit)
    teacher = load(settings["teacher"], backend=settings.get("teacher_backend"))
    teacher_model = next(c for _, c in teacher.pipeline if hasattr(c, "model")).model
    log(f"teacher {settings['teacher']}: labelling {len(segments)} segments")
    attach_teacher_targets(teacher_model, segments, with_vectors=bool(settings.get("hidden_weight", 0.0)), log=log)
    weights = {k: settings[k] for k in ("soft_weight", "hard_weight", "hidden_weight") if k in settings}
    return segments, lambda model, batch: distillation_loss(model, batch, weights)
