"""Static int8: activation scales fixed ahead of time from calibration text.

The ``ner-kernels-int8`` backend quantises each token's activations on its own scale,
found at run time (dynamic). Static int8 instead gives each linear layer of the encoder one
scale for all tokens, from the largest input magnitude (or a percentile of the
magnitudes) it saw on calibration text; at run time the activations are only scaled,
clipped and rounded. The span head stays dynamic.

    ranges = calibrate_input_ranges(span_model, words)            # the fp32 model, before any backend
    apply_backend(span_model, "ner-kernels-int8-static", input_ranges=ranges)

``ner bench PIPELINE --backends ner-kernels-int8,ner-kernels-int8-static --calibrate
conll2003_en:train`` measures it beside the dynamic form.
"""
from __future__ import annotations

import torch
from torch import nn

from ner.rounding import observe_linear_inputs

SAMPLE_PER_CALL = 20_000  # magnitudes kept per layer and forward call for a percentile


def calibrate_input_ranges(model, words: list[list[str]], *, percentile: float = 100.0,
                           batch_size: int = 8, seed: int = 0) -> dict[str, float]:
    """The bound on each encoder linear layer's input magnitudes while ``model`` (fp32, on
    the ``torch`` backend, with ``model.encoder.transformer`` and ``model.predict``) runs
    over ``words`` (pre-tokenised texts): the largest magnitude seen (``percentile`` 100) or
    that percentile of a random sample of them (clipping the rarest outliers). Keyed by the
    ``BertModel`` module name (``encoder.layer.0.intermediate.dense``, ...)."""
    if getattr(model, "backend", "torch") != "torch":
        raise ValueError("calibrate the fp32 model (backend 'torch'), before switching its backend")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if not words:
        raise ValueError("calibration needs at least one text")
    linears = {name: m for name, m in model.encoder.transformer.named_modules() if isinstance(m, nn.Linear)}
    largest = dict.fromkeys(linears, 0.0)
    samples = {name: [] for name in linears}
    generator = torch.Generator().manual_seed(seed)

    def record(name, inputs):
        magnitudes = inputs.abs().flatten().float()
        largest[name] = max(largest[name], float(magnitudes.max()))
        if percentile < 100:
            pick = torch.randint(len(magnitudes), (min(SAMPLE_PER_CALL, len(magnitudes)),), generator=generator)
            samples[name].append(magnitudes[pick])

    observe_linear_inputs(model, words, linears, record, batch_size=batch_size)
    if percentile == 100:
        return largest
    return {name: float(torch.quantile(torch.cat(samples[name]), percentile / 100)) for name in linears}
