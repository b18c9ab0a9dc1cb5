"""Pruning operations on a BERT encoder's weights.

Block pruning zeroes whole weight blocks, the sparsity the kernels turn into speed. The blocks are the kernels' own (``OUTPUTS_PER_BLOCK`` outputs x ``block_k`` inputs), so a
pruned matrix costs work in proportion to the blocks it keeps. These are pure functions on
weights; the recipes that prune gradually while training (and recover the accuracy that
one-shot pruning loses) belong in ``training/``.

FFN-neuron and attention-head pruning are structured: they remove intermediate neurons or
whole heads, so the matrices become smaller dense ones that any backend runs faster.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ner.kernels.block_sparse import OUTPUTS_PER_BLOCK

# The linear layers of a BERT layer that the packed encoder runs block-sparse.
BERT_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


def block_norms(weight: torch.Tensor, block_k: int = 16) -> torch.Tensor:
    """L2 norm of every block: (n_out / 32, n_in / block_k)."""
    n_out, n_in = weight.shape
    if n_out % OUTPUTS_PER_BLOCK or n_in % block_k:
        raise ValueError(f"a {n_out}x{n_in} matrix does not split into {OUTPUTS_PER_BLOCK}x{block_k} blocks")
    blocks = weight.detach().float().view(n_out // OUTPUTS_PER_BLOCK, OUTPUTS_PER_BLOCK, n_in // block_k, block_k)
    return blocks.pow(2).sum(dim=(1, 3)).sqrt()


def block_magnitude_mask(weight: torch.Tensor, sparsity: float, block_k: int = 16) -> torch.Tensor:
    """A 0/1 mask of ``weight``'s shape that zeroes the fraction ``sparsity`` of its blocks
    with the smallest L2 norm (rounded to whole blocks; ties broken by position)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    norms = block_norms(weight, block_k)
    n_pruned = int(round(sparsity * norms.numel()))
    keep = torch.ones(norms.numel(), dtype=torch.bool)
    if n_pruned:
        keep[torch.argsort(norms.flatten(), stable=True)[:n_pruned]] = False
    keep = keep.view_as(norms)
    return keep.repeat_interleave(OUTPUTS_PER_BLOCK, 0).repeat_interleave(block_k, 1).to(weight.dtype)


def prune_blocks(transformer: nn.Module, sparsity: float, *, block_k: int = 16,
                 linears: tuple[str, ...] = BERT_LINEARS) -> nn.Module:
    """A copy of a ``BertModel`` whose encoder linear layers each have ``sparsity`` of their
    blocks zeroed by magnitude (embeddings, biases and layer norms untouched). One-shot:
    without retraining, accuracy falls as sparsity rises."""
    pruned = copy.deepcopy(transformer)
    with torch.no_grad():
        for layer in pruned.encoder.layer:
            for path in linears:
                linear = layer.get_submodule(path)
                linear.weight.mul_(block_magnitude_mask(linear.weight, sparsity, block_k))
    return pruned


def block_density(weight: torch.Tensor, block_k: int = 16) -> float:
    """Fraction of ``weight``'s blocks that hold a non-zero value."""
    return float(block_norms(weight, block_k).gt(0).float().mean())


def ffn_neuron_importance(layer) -> torch.Tensor:
    """Importance of each intermediate neuron of a BERT layer: the norm of the input row
    that feeds it times the norm of the output column it feeds (weights alone, no data)."""
    into = layer.intermediate.dense.weight.detach().float().norm(dim=1)
    out_of = layer.output.dense.weight.detach().float().norm(dim=0)
    return into * out_of


def prune_ffn_neurons(transformer: nn.Module, size: int) -> None:
    """Keep the ``size`` most important intermediate neurons of every layer (in their
    original order), in place: the FFN matrices become (size x hidden) and (hidden x size)
    dense ones, and the config's ``intermediate_size`` follows."""
    current = transformer.config.intermediate_size
    if not 0 < size <= current:
        raise ValueError(f"FFN size must be in 1..{current}, got {size}")
    with torch.no_grad():
        for layer in transformer.encoder.layer:
            keep = torch.sort(torch.topk(ffn_neuron_importance(layer), size).indices).values
            into, out_of = layer.intermediate.dense, layer.output.dense
            smaller_in = nn.Linear(into.in_features, size).to(into.weight.dtype)
            smaller_in.weight.copy_(into.weight[keep])
            smaller_in.bias.copy_(into.bias[keep])
            smaller_out = nn.Linear(size, out_of.out_features).to(out_of.weight.dtype)
            smaller_out.weight.copy_(out_of.weight[:, keep])
            smaller_out.bias.copy_(out_of.bias)
            layer.intermediate.dense, layer.output.dense = smaller_in, smaller_out
    transformer.config.intermediate_size = size


@torch.no_grad()
def attention_head_importance(transformer: nn.Module, batches) -> torch.Tensor:
    """(layers, heads) importance of every attention head on real input: the mean norm, over
    the batches' real tokens, of what the head adds to its layer's output (its context
    vector through its slice of the output projection). ``batches`` yields
    ``(input_ids, attention_mask)`` pairs."""
    layers = transformer.encoder.layer
    totals = [None] * len(layers)
    tokens = 0
    state = {}

    def hook(index):
        def record(module, inputs, _output):
            context = inputs[0][state["mask"]]  # (real tokens, heads * head_size)
            heads = layers[index].attention.self.num_attention_heads
            size = context.shape[1] // heads
            weight = module.weight.view(module.out_features, heads, size)
            per_head = torch.einsum("thd,ohd->tho", context.view(-1, heads, size), weight).norm(dim=2).sum(0)
            totals[index] = per_head if totals[index] is None else totals[index] + per_head
        return record

    handles = [layer.attention.output.dense.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    was_training = transformer.training
    transformer.eval()
    try:
        for input_ids, attention_mask in batches:
            state["mask"] = attention_mask.bool()
            transformer(input_ids=input_ids, attention_mask=attention_mask)
            tokens += int(attention_mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        transformer.train(was_training)
    if tokens == 0:
        raise ValueError("attention-head importance needs at least one real token")
    widths = {t.shape[0] for t in totals}
    if len(widths) != 1:  # layers already pruned to different head counts: pad with -inf (never kept)
        width = max(widths)
        totals = [torch.cat([t, t.new_full((width - t.shape[0],), float("-inf"))]) for t in totals]
    return torch.stack(totals) / tokens


def prune_attention_heads(transformer: nn.Module, heads: int, importance: torch.Tensor) -> dict[int, list[int]]:
    """Keep the ``heads`` most important attention heads of every layer, in place (the
    query/key/value rows and output-projection columns of the others are removed; the
    config's ``pruned_heads`` records them, so the encoder rebuilds at its new shape when
    loaded). Returns the heads removed per layer, in the layer's current numbering."""
    current = transformer.config.num_attention_heads
    if not 0 < heads <= current:
        raise ValueError(f"heads per layer must be in 1..{current}, got {heads}")
    drop = {}
    for index, layer in enumerate(transformer.encoder.layer):
        present = layer.attention.self.num_attention_heads
        if heads >= present:
            continue
        # HF numbers heads by their original index and skips the ones already pruned
        original = [h for h in range(current) if h not in layer.attention.pruned_heads]
        order = torch.argsort(importance[index, :present], descending=True)
        drop[index] = sorted(original[int(h)] for h in order[heads:])
    if drop:
        transformer.prune_heads(drop)
    return drop
