"""The inference backend: a dense reference, the C kernels (block-sparse fp32/int8 linear
layers, fused epilogues, layer norm) built at first use, the padding-free BERT encoder
that runs on them, and the switch between backends.

    from ner.kernels import apply_backend
    apply_backend(nlp.get_pipe("ner").model, "ner-kernels-int8")
"""
from ner.kernels.backends import BACKENDS, apply_backend

__all__ = ["BACKENDS", "apply_backend"]
