"""Probe, not a backend: how much F1 would int8 attention cost?

Runs ``ner evaluate`` with the pipeline on its own backend except attention, which is
replaced by a PyTorch simulation of int8 attention on the AVX2 path: queries quantised per
(token, head) to 63 levels (the 7-bit activations of ``vpmaddubsw``), keys per (token, head)
to 127; with ``qkpv`` also the probabilities per query to 127 levels of their maximum and
the values per (head dimension) over the keys to 127. Softmax stays fp32.

    python -m ner.kernels.attention_probe {qk,qkpv} PIPELINE DATASET:SPLIT

Slow (attention in PyTorch, one sequence run at a time); it measures accuracy only.
"""
from __future__ import annotations

import math
import sys

import torch

from ner.kernels.reference import sequence_runs


def fake_quantize(x: torch.Tensor, levels: int, dim: int = -1) -> torch.Tensor:
    """Symmetric rounding to ``levels`` steps of the largest magnitude along ``dim``."""
    scale = x.abs().amax(dim, keepdim=True).clamp(min=1e-12) / levels
    return torch.round(x / scale) * scale


def int8_attention(qkv: torch.Tensor, lengths: list[int], n_heads: int, *, probabilities: bool) -> torch.Tensor:
    hidden = qkv.shape[1] // 3
    head_size = hidden // n_heads
    result = qkv.new_empty(qkv.shape[0], hidden)
    for row, count, length in sequence_runs(lengths):
        part = qkv[row : row + count * length].view(count, length, 3, n_heads, head_size)
        q, k, v = (part[:, :, i].transpose(1, 2) for i in range(3))
        scores = fake_quantize(q, 63) @ fake_quantize(k, 127).transpose(-1, -2) / math.sqrt(head_size)
        p = torch.softmax(scores, -1)
        if probabilities:
            p, v = fake_quantize(p, 127), fake_quantize(v, 127, dim=-2)
        result[row : row + count * length] = (p @ v).transpose(1, 2).reshape(count * length, hidden)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("qk", "qkpv"):
        print(__doc__.strip().splitlines()[-3].strip(), file=sys.stderr)
        return 2
    mode, pipeline, data = argv
    from ner.cli import main as ner_main
    from ner.kernels.native import NativeKernels
    from ner.kernels.reference import ReferenceKernels

    def attention(self, qkv, lengths, n_heads, out=None):
        result = int8_attention(qkv, lengths, n_heads, probabilities=mode == "qkpv")
        return result if out is None else out.copy_(result)

    NativeKernels.attention = ReferenceKernels.attention = attention
    return ner_main(["evaluate", pipeline, data])


if __name__ == "__main__":
    raise SystemExit(main())
