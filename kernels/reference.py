"""The dense reference: every kernel's arithmetic written in plain PyTorch.

It defines what the C kernels must compute (the equivalence tests compare against it),
and it is what runs when the C kernels cannot be built or the tensors live on a GPU.
Each operation works on packed tokens: a (n_tokens, width) matrix holding only real
tokens, sequences being consecutive runs of rows whose lengths are given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from ner.kernels.block_sparse import BlockSparseWeight

EPILOGUES = ("none", "gelu", "residual")


def quantize_rows(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (integers as fp32 in [-levels, levels], scale per row).
    The reciprocal is multiplied, not divided, to round exactly as the C kernel does; it is
    ``levels / amax`` divided in fp32 (``levels / tensor`` in torch is ``reciprocal() * levels``,
    one ulp off often enough to flip a rounding tie)."""
    amax = x.abs().amax(dim=1)
    inverse = torch.where(amax > 0, torch.full_like(amax, levels) / amax, torch.zeros_like(amax))
    scale = torch.where(amax > 0, amax / levels, torch.zeros_like(amax))
    return torch.round(x * inverse[:, None]), scale


def static_scale(input_range: float, levels: int) -> float:
    """The one activation scale of a static int8 layer, as the fp32 value the C kernel uses."""
    return float(torch.tensor(input_range / levels, dtype=torch.float32))


def quantize_rows_static(x: torch.Tensor, scale: float, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Static int8: every row on the fixed ``scale``, values beyond ``levels`` steps clipped.
    Computed in fp32 exactly as the C kernel does (clip, then round half to even)."""
    inverse = torch.tensor(1.0) / torch.tensor(scale) if scale > 0 else torch.tensor(0.0)
    q = torch.round((x * inverse.to(x.device)).clamp(-levels, levels))
    return q, torch.full((x.shape[0],), scale, device=x.device)


@dataclass
class QuantizedRows:
    """Activations already quantised per row for an int8 layer: what one int8 linear layer
    can hand the next without writing fp32 in between. ``integers`` hold q + levels + 1."""

    integers: torch.Tensor  # uint8 (rows, width)
    scale: torch.Tensor  # fp32 (rows,)
    levels: int

    @classmethod
    def from_float(cls, x: torch.Tensor, levels: int) -> "QuantizedRows":
        q, scale = quantize_rows(x, levels)
        return cls((q + levels + 1).to(torch.uint8), scale, levels)

    def dequantize(self) -> torch.Tensor:
        return (self.integers.float() - (self.levels + 1)) * self.scale[:, None]


def sequence_runs(lengths: list[int]):
    """(first row, number of sequences, length) for each run of consecutive equal lengths."""
    runs, row, i = [], 0, 0
    while i < len(lengths):
        j = i
        while j < len(lengths) and lengths[j] == lengths[i]:
            j += 1
        runs.append((row, j - i, lengths[i]))
        row += (j - i) * lengths[i]
        i = j
    return runs


class ReferenceKernels:
    """The operations the packed encoder needs, in plain PyTorch (any device)."""

    name = "reference"

    def __init__(self, activation_levels: int = 127):
        self.activation_levels = activation_levels
        self.max_weight_levels = 127  # the most int8 weight levels these kernels multiply exactly
        self.fastest_weight_levels = 127  # the weight levels they multiply fastest

    def int8_weight_levels(self, requested: int | None) -> int:
        """The levels int8 weights are packed at for ``requested`` (None: the fastest here),
        never more than ``max_weight_levels``."""
        return min(self.fastest_weight_levels if requested is None else requested, self.max_weight_levels)

    def linear(self, x: torch.Tensor | QuantizedRows, weight: BlockSparseWeight, *, epilogue: str = "none",
               residual: torch.Tensor | None = None, quantize_output: bool = False, out=None):
        """epilogue(x @ weight^T + bias); int8 weights quantise ``x`` per row first (unless it
        comes quantised), on the weight's static scale when it has one (``input_range``).
        ``quantize_output``: return ``QuantizedRows`` for an int8 layer next.
        ``out`` is a buffer an implementation may write into (this one does not): always use
        the returned value."""
        device = (x.integers if isinstance(x, QuantizedRows) else x).device
        if isinstance(x, QuantizedRows):
            q, x_scale = x.integers.float() - (x.levels + 1), x.scale
            if weight.dtype != "int8" or x.levels != self.activation_levels:
                raise ValueError("quantised rows go to int8 layers with the same activation levels only")
        elif weight.dtype == "int8" and weight.input_range is not None:
            q, x_scale = quantize_rows_static(x, static_scale(weight.input_range, self.activation_levels),
                                              self.activation_levels)
        elif weight.dtype == "int8":
            q, x_scale = quantize_rows(x, self.activation_levels)
        dense = weight.dense().to(device)
        if weight.dtype == "int8":
            integers = torch.round(dense / weight.scale.to(device)[:, None])
            y = (q @ integers.T) * (x_scale[:, None] * weight.scale.to(device)[None, :])
        else:
            y = x @ dense.T
        if weight.bias is not None:
            y = y + weight.bias.to(device)
        if epilogue == "gelu":
            y = functional.gelu(y)
        elif epilogue == "residual":
            y = y + residual
        elif epilogue != "none":
            raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
        return QuantizedRows.from_float(y, self.activation_levels) if quantize_output else y

    def layer_norm(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        return functional.layer_norm(x, (x.shape[-1],), gamma, beta, eps)

    def attention(self, qkv: torch.Tensor, lengths: list[int], n_heads: int, out=None, int8: bool = False) -> torch.Tensor:
        """Self-attention inside each sequence: (n_tokens, 3 * hidden) → (n_tokens, hidden).
        Consecutive sequences of equal length go through one fused SDPA call together.
        ``int8``: Q·Kᵀ and P·V on int8 operands (``int8_attention``)."""
        if int8:
            return int8_attention(qkv, lengths, n_heads, self.activation_levels)
        hidden = qkv.shape[1] // 3
        head_size = hidden // n_heads
        out = qkv.new_empty(qkv.shape[0], hidden)
        for row, count, length in sequence_runs(lengths):
            part = qkv[row : row + count * length].view(count, length, 3, n_heads, head_size)
            q, k, v = (part[:, :, i].transpose(1, 2) for i in range(3))  # (count, heads, length, head_size)
            context = functional.scaled_dot_product_attention(q, k, v)
            out[row : row + count * length] = context.transpose(1, 2).reshape(count * length, hidden)
        return out

    def span_head(self, start: torch.Tensor, end: torch.Tensor, width: torch.Tensor, n_words: int,
                  classify_in: BlockSparseWeight, classify_out: BlockSparseWeight) -> torch.Tensor:
        """Span logits (n_sequences * n_words * max_width, classify_out.n_out) from the start
        and end projections (n_sequences * n_words, hidden), the same arithmetic as ``SpanHead``."""
        hidden, max_width = start.shape[1], width.shape[0]
        start = start.reshape(-1, n_words, 1, hidden)
        last = (torch.arange(n_words, device=start.device)[:, None] + torch.arange(max_width, device=start.device))
        end = end.reshape(-1, n_words, hidden)[:, last.clamp(max=n_words - 1)]
        spans = functional.gelu(start + end + width).reshape(-1, hidden)
        return self.linear(self.linear(spans, classify_in, epilogue="gelu"), classify_out)


def fake_quantize(x: torch.Tensor, levels: int, dim: int = -1) -> torch.Tensor:
    """Symmetric rounding to ``levels`` steps of the largest magnitude along ``dim``."""
    scale = x.abs().amax(dim, keepdim=True).clamp(min=1e-12) / levels
    return torch.round(x / scale) * scale


def int8_attention(qkv: torch.Tensor, lengths: list[int], n_heads: int, levels: int,
                   probabilities: bool = True) -> torch.Tensor:
    """The arithmetic of the C kernels' int8 attention: queries rounded per (token, head) to
    ``levels`` (the activation levels), keys per (token, head) to 127; softmax in fp32; with
    ``probabilities``, each query's probabilities to 127 levels of their largest and the values
    per head dimension (over the keys) to 127."""
    hidden = qkv.shape[1] // 3
    head_size = hidden // n_heads
    result = qkv.new_empty(qkv.shape[0], hidden)
    for row, count, length in sequence_runs(lengths):
        part = qkv[row : row + count * length].view(count, length, 3, n_heads, head_size)
        q, k, v = (part[:, :, i].transpose(1, 2) for i in range(3))
        scores = fake_quantize(q, levels) @ fake_quantize(k, 127).transpose(-1, -2) / head_size ** 0.5
        p = torch.softmax(scores, -1)
        if probabilities:
            p, v = fake_quantize(p, 127), fake_quantize(v, 127, dim=-2)
        result[row : row + count * length] = (p @ v).transpose(1, 2).reshape(count * length, hidden)
    return result
