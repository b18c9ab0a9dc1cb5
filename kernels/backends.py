"""Inference backends by name, and switching a model to one.

A backend replaces the transformer inside a ``WordEncoder`` and, given a whole model
(``SpanModel``, ``BoundaryModel``, ...), its head where the backend has a form for it:
the subword windows with stride, the word blocks, the word pooling and the decoding stay
exactly as they are, so every backend sees the same windows and F1 differences come from
arithmetic alone.

| name | transformer | span head |
|---|---|---|
| ``torch`` | the Hugging Face ``BertModel``, fp32 (the reference; unchanged) | ``SpanHead``, fp32 |
| ``torch-int8`` | the same with PyTorch dynamic int8 linear layers | the same, int8 linear layers |
| ``onnxruntime`` | exported to ONNX (``ner export onnx``), ONNX Runtime fp32 | exported, ONNX Runtime fp32 |
| ``onnxruntime-int8`` | the same after ONNX Runtime's fusions and dynamic int8 quantisation | exported, dynamic int8 |
| ``ner-kernels`` | ``PackedBertEncoder``: no work on padding, block-sparse fp32 linear layers (all-zero weight blocks skipped) | ``FusedSpanHead``, fp32 |
| ``ner-kernels-int8`` | the same with int8 linear layers (layer norms, GELU, softmax, residuals in fp32) | ``FusedSpanHead``, int8 |
| ``ner-kernels-int8-static`` | the same with static activation scales (``input_ranges=``, see ``static_int8``) | ``FusedSpanHead``, int8 (dynamic) |
| ``ner-kernels-int8-attention`` | ``ner-kernels-int8`` with Q·Kᵀ and P·V on int8 operands too | ``FusedSpanHead``, int8 |
| ``ner-kernels-int8-w7`` | ``ner-kernels-int8`` with weights on 63 levels (7 bits): on AVX2 without VNNI two products add in int16 before widening | ``FusedSpanHead``, int8, 7-bit weights |
| ``ner-kernels-int8-fast`` | ``ner-kernels-int8`` with the weights on the levels this CPU multiplies fastest: 63 (as ``-w7``) on AVX2 without VNNI, 127 (as ``ner-kernels-int8``) with VNNI or without the C kernels | ``FusedSpanHead``, int8, the same levels |
| ``ner-kernels-int8-a8`` | ``ner-kernels-int8`` with activations on 127 levels (8 bits) everywhere: on AVX2 without VNNI the weights then hold 63 (7 bits), so that vpmaddubsw's sums fit; with VNNI the same as ``ner-kernels-int8`` | ``FusedSpanHead``, int8 |

ONNX Runtime takes any head whose ``forward`` takes the word vectors alone; the kernels
have a fused form of ``SpanHead`` only, and leave other heads to PyTorch.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Backend:
    transformer: Callable  # (BertModel, **options) → a module called like it
    head: Callable  # (head, input_size=..., **options) → a module called like it (or the head itself)


def _unchanged(module, **_options):
    return module


def _torch_int8(module, **_options):
    import torch

    with warnings.catch_warnings():  # torch.ao's eager quantisation warns that it is moving to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def _onnxruntime_transformer(quantize: bool):
    def build(transformer, *, onnx_path=None, threads=None, **_options):
        from ner.onnx_export import OnnxTransformer

        if onnx_path is not None:
            return OnnxTransformer(onnx_path, transformer.config, threads=threads)
        return OnnxTransformer.from_transformer(transformer, quantize=quantize, threads=threads)

    return build


def _onnxruntime_head(quantize: bool):
    def build(head, *, input_size: int, threads=None, **_options):
        from ner.onnx_export import OnnxHead, takes_word_vectors_only

        if not takes_word_vectors_only(head):
            return head
        return OnnxHead.from_head(head, input_size, quantize=quantize, threads=threads)

    return build


def _ner_kernels_transformer(dtype: str, static: bool = False, int8_attention: bool = False, weight_levels: int | None = 127,
                             activation_levels: int | None = None):
    def build(transformer, *, block_k: int | None = None, kernels=None, input_ranges=None, **_options):
        from ner.kernels.packed_encoder import PackedBertEncoder

        if static and input_ranges is None:
            raise ValueError("backend 'ner-kernels-int8-static' needs input_ranges=: calibrate them on the fp32 "
                             "model with ner.kernels.static_int8.calibrate_input_ranges(model, words)")
        return PackedBertEncoder(transformer, kernels or default_kernels(activation_levels), dtype=dtype, block_k=block_k,
                                 input_ranges=input_ranges if static else None, int8_attention=int8_attention,
                                 weight_levels=weight_levels)

    return build


def _ner_kernels_head(dtype: str, weight_levels: int | None = 127, activation_levels: int | None = None):
    def build(head, *, block_k: int | None = None, kernels=None, **_options):
        from ner.kernels.span_head import FusedSpanHead
        from ner.span_model import SpanHead

        if type(head) is not SpanHead:
            return head
        return FusedSpanHead(head, kernels or default_kernels(activation_levels), dtype=dtype, block_k=block_k,
                             weight_levels=weight_levels)

    return build


BACKENDS: dict[str, Backend] = {
    "torch": Backend(_unchanged, _unchanged),
    "torch-int8": Backend(_torch_int8, _torch_int8),
    "onnxruntime": Backend(_onnxruntime_transformer(False), _onnxruntime_head(False)),
    "onnxruntime-int8": Backend(_onnxruntime_transformer(True), _onnxruntime_head(True)),
    "ner-kernels": Backend(_ner_kernels_transformer("fp32"), _ner_kernels_head("fp32")),
    "ner-kernels-int8": Backend(_ner_kernels_transformer("int8"), _ner_kernels_head("int8")),
    "ner-kernels-int8-static": Backend(_ner_kernels_transformer("int8", static=True), _ner_kernels_head("int8")),
    # int8 attention too (Q·Kᵀ and P·V; softmax fp32): measured, not yet chosen by a pipeline
    "ner-kernels-int8-attention": Backend(_ner_kernels_transformer("int8", int8_attention=True), _ner_kernels_head("int8")),
    "ner-kernels-int8-w7": Backend(_ner_kernels_transformer("int8", weight_levels=63), _ner_kernels_head("int8", weight_levels=63)),
    "ner-kernels-int8-fast": Backend(_ner_kernels_transformer("int8", weight_levels=None),
                                     _ner_kernels_head("int8", weight_levels=None)),
    "ner-kernels-int8-a8": Backend(_ner_kernels_transformer("int8", activation_levels=127),
                                   _ner_kernels_head("int8", activation_levels=127)),
}


def default_kernels(activation_levels: int | None = None):
    """The C kernels when they build here, else the PyTorch reference (with a warning, once);
    ``activation_levels``: the int8 activations' levels (default: the kernels' own)."""
    from ner.kernels.native import native_kernels
    from ner.kernels.reference import ReferenceKernels

    return native_kernels(activation_levels=activation_levels) or ReferenceKernels(activation_levels or 127)


def apply_backend(model, name: str, **options):
    """Run ``model`` on backend ``name`` (see ``BACKENDS``).

    ``model``: a model with a ``WordEncoder`` as ``encoder`` and a ``head`` (both replaced in
    place; the model is returned), a ``WordEncoder`` (its transformer is replaced), or a
    bare ``BertModel`` (its replacement is returned). Give it a model in its original fp32
    form: backends do not stack. ``options`` go to the backend (``block_k``, ``kernels``
    for ner-kernels, and ``input_ranges`` for ner-kernels-int8-static; ``onnx_path``,
    ``threads`` for ONNX Runtime).
    """
    from ner.encoders import WordEncoder

    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    current = getattr(model, "backend", "torch")
    if current != "torch":
        raise ValueError(f"the model already runs on backend {current!r}; backends do not stack: "
                         "switch a freshly loaded fp32 model")
    backend = BACKENDS[name]
    encoder = model.encoder if isinstance(getattr(model, "encoder", None), WordEncoder) else model
    if encoder is not model and hasattr(model, "head"):
        model.head = backend.head(model.head, input_size=encoder.hidden_size, **options).eval()
    if isinstance(encoder, WordEncoder):
        encoder.transformer = backend.transformer(encoder.transformer, **options).eval()
        model.backend = name
        return model
    return backend.transformer(model, **options).eval()
