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

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("qk", "qkpv"):
        print(__doc__.strip().splitlines()[-3].strip(), file=sys.stderr)
        return 2
    mode, pipeline, data = argv
    from ner.cli import main as ner_main
    from ner.kernels.native import NativeKernels
    from ner.kernels.reference import ReferenceKernels, int8_attention

    def attention(self, qkv, lengths, n_heads, out=None, int8=False):
        result = int8_attention(qkv, lengths, n_heads, self.activation_levels, probabilities=mode == "qkpv")
        return result if out is None else out.copy_(result)

    NativeKernels.attention = ReferenceKernels.attention = attention
    return ner_main(["evaluate", pipeline, data])


if __name__ == "__main__":
    raise SystemExit(main())
