"""Pruning operations on a BERT encoder's weights.

Block pruning zeroes whole weight blocks, the sparsity the kernels turn into speed. The blocks are the kernels' own (``OUTPUTS_PER_BLOCK`` outputs x ``block_k`` inputs), so a
pruned matrix costs work in proportion to the blocks it keeps. These are pure functions on
weights; the recipes that prune gradually while training (and recover the accuracy that
one-shot pruning loses) belong in ``training/``.

FFN-neuron pruning is structured: it removes intermediate neurons, so the matrices become
smaller dense ones that any backend runs faster.
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
