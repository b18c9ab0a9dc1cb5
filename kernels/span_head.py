"""The span head with its (batch, words, max_width, hidden) activations never built whole.

``SpanHead`` scores every span (word i, width w) from gelu(start_i + end_{i+w} + width_w)
through a two-layer classifier. In PyTorch that is a handful of passes over a tensor of
batch x words x 10 x 384 floats (tens of MB per batch), which costs more than the
classifier's arithmetic. ``FusedSpanHead`` computes the same logits one tile of spans at a
time, the tile kept in cache from the first GELU to the last linear layer, on fp32 or int8
block-sparse weights.
"""
from __future__ import annotations

import torch
from torch import nn

from ner.kernels.block_sparse import OUTPUTS_PER_BLOCK, BlockSparseWeight
from ner.kernels.workspace import Workspace

_CLASSIFIER_LAYOUT = (nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear)


class FusedSpanHead(nn.Module):
    def __init__(self, head, kernels, *, dtype: str = "fp32", block_k: int | None = None,
                 weight_levels: int | None = 127):
        """``head``: a ``ner.span_model.SpanHead`` (weights copied); ``kernels``: ``NativeKernels``
        or ``ReferenceKernels``; ``weight_levels``: int8 weights' steps each side of zero (127 or 63; at most
        ``kernels.max_weight_levels``; None: ``kernels.fastest_weight_levels``)."""
        super().__init__()
        layers = tuple(type(layer) for layer in head.classify)
        if layers != _CLASSIFIER_LAYOUT or any(g.approximate != "none" for g in head.classify if isinstance(g, nn.GELU)):
            raise ValueError(f"FusedSpanHead expects a classifier laid out as {[t.__name__ for t in _CLASSIFIER_LAYOUT]}")
        self.kernels = kernels
        self.workspace = Workspace()
        weight_levels = kernels.int8_weight_levels(weight_levels)
        self.max_width = head.max_width
        self.hidden = head.start.out_features
        classify_in, classify_out = head.classify[2], head.classify[5]
        self.n_labels = classify_out.out_features
        # The width table is a parameter so that .to(device) and WordEncoder-style device lookups work.
        self.width = nn.Parameter(head.width.weight.detach().clone(), requires_grad=False)
        ends_bias = torch.cat([head.start.bias.detach(), torch.zeros(self.hidden)])
        self.ends = BlockSparseWeight.from_dense(torch.cat([head.start.weight, head.end.weight]).detach(), ends_bias,
                                                 block_k=block_k, dtype=dtype, levels=weight_levels)
        self.classify_in = BlockSparseWeight.from_dense(classify_in.weight.detach(), classify_in.bias.detach(),
                                                        block_k=block_k, dtype=dtype, levels=weight_levels)
        # The kernels produce outputs in blocks of OUTPUTS_PER_BLOCK: the label rows are padded with zeros.
        padded = -(-self.n_labels // OUTPUTS_PER_BLOCK) * OUTPUTS_PER_BLOCK
        weight = torch.zeros(padded, classify_out.in_features)
        weight[: self.n_labels] = classify_out.weight.detach()
        bias = torch.zeros(padded)
        bias[: self.n_labels] = classify_out.bias.detach()
        self.classify_out = BlockSparseWeight.from_dense(weight, bias, block_k=block_k, dtype=dtype, levels=weight_levels)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """(batch, n_words, input) → logits (batch, n_words, max_width, n_labels), as ``SpanHead``."""
        batch, n_words, size = words.shape
        if batch * n_words == 0:
            return words.new_zeros(batch, n_words, self.max_width, self.n_labels)
        rows = batch * n_words
        out = self.workspace.take("ends", (rows, 2 * self.hidden)) if words.device.type == "cpu" else None
        ends = self.kernels.linear(words.reshape(rows, size), self.ends, out=out)
        # start and end stay column slices of one matrix: the kernel reads rows 2 * hidden apart
        start, end = ends[:, : self.hidden], ends[:, self.hidden :]
        logits = self.kernels.span_head(start, end, self.width, n_words, self.classify_in, self.classify_out)
        return logits[:, : self.n_labels].reshape(batch, n_words, self.max_width, self.n_labels)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves the packed weights too (they are not parameters)."""
        super()._apply(fn, recurse)
        for weight in (self.ends, self.classify_in, self.classify_out):
            weight.apply(fn)
        return self
