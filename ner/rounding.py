"""Error-aware rounding of linear weights to the int8 grid of int8 storage (GPTQ's idea,
Frantar et al., ICLR 2023, at 8 bits).

int8 storage (``ner.weights``) rounds each row of a weight matrix to its own grid: scale =
the row's largest magnitude / 127, each entry to the nearest multiple. Rounding each entry
alone ignores that a layer's inputs are correlated. Here each linear layer's weight is
rounded column by column on that same grid, and each column's rounding error is spread over
the columns not yet rounded, weighted by the inverse of the layer's input second moment
(XᵀX over calibration text), so that the layer's outputs on such text move as little as
they can. Each row's largest entry is rounded first and left unchanged (it sits on the grid
exactly), so the row keeps its scale and saving the result as int8 stores exactly these
integers.

The same rounding to 63 levels (``levels=63``) prepares weights for the 7-bit weight kernels
(``ner-kernels-int8-w7``): packing int8 weights at 63 levels at load otherwise rounds a
second time, entry by entry.

    report = round_for_int8(span_model, calibration_words)   # weights changed in place
    report = round_for_int8(span_model, calibration_words, levels=63)
"""
from __future__ import annotations

import torch
from torch import nn

from ner.weights import INT8_MIN_NUMEL


def observe_linear_inputs(model: nn.Module, words: list[list[str]], linears: dict[str, nn.Linear], observe,
                          *, batch_size: int = 8) -> None:
    """Run ``model.predict`` over ``words`` (pre-tokenised texts, in batches of similar
    length) and call ``observe(name, inputs)`` with what each of ``linears`` is given."""
    def hook(name):
        return lambda _module, inputs, _output: observe(name, inputs[0].detach())

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    model.eval()
    try:
        with torch.inference_mode():
            ordered = sorted(words, key=len)
            for start in range(0, len(ordered), batch_size):
                model.predict(ordered[start:start + batch_size])
    finally:
        for handle in handles:
            handle.remove()


def input_moments(model: nn.Module, words: list[list[str]], linears: dict[str, nn.Linear],
                  *, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """XᵀX / n (float64) of the inputs each of ``linears`` sees while ``model`` reads ``words``."""
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def record(name, inputs):
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
        sums[name] += x.T @ x
        counts[name] += x.shape[0]

    observe_linear_inputs(model, words, linears, record, batch_size=batch_size)
    return {name: sums[name] / max(counts[name], 1) for name in linears}


def round_weight(weight: torch.Tensor, moment: torch.Tensor, damping: float = 0.01, levels: int = 127,
                 act_order: bool = False) -> torch.Tensor:
    """``weight`` (out, in) rounded to its per-row grid of ``levels`` steps each side of zero
    (127: int8 storage's; 63: the 7-bit weights AVX2 without VNNI multiplies fastest),
    column errors spread by ``moment`` (in, in); returned as floats on the grid.
    ``act_order``: round the columns of the most energetic inputs first (largest diagonal of
    ``moment``), so that their errors can still be spread over the rest (GPTQ's act-order)."""
    if act_order:
        order = torch.argsort(torch.diag(moment), descending=True)
        undo = torch.argsort(order)
        return round_weight(weight[:, order], moment[order][:, order], damping, levels)[:, undo]
    w = weight.detach().to(torch.float64).clone()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / levels
    n_in = w.shape[1]
    h = moment.clone()
    dead = torch.diag(h) == 0  # inputs never seen: nothing to preserve
    h[dead, dead] = 1.0
    h += damping * torch.diag(h).mean() * torch.eye(n_in, dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    # Each row's largest entry keeps its value (it is on the grid: ±levels × scale).
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep[torch.arange(w.shape[0]), w.abs().argmax(dim=1)] = True
    free = (~keep).to(w.dtype)
    for j in range(n_in):
        column = w[:, j]
        rounded = torch.round(column / scale).clamp(-levels, levels) * scale
        error = (column - rounded) / inverse[j, j]
        w[:, j] = rounded
        if j + 1 < n_in:
            w[:, j + 1:] -= (error[:, None] * inverse[j, j + 1:][None, :]) * free[:, j + 1:]
    return w.to(weight.dtype)


def round_for_int8(model: nn.Module, words: list[list[str]], *, batch_size: int = 8, damping: float = 0.01,
                   levels: int = 127, act_order: bool = False) -> dict:
    """Round every linear layer of a span model (``model.predict(words)``) that int8 storage
    quantises, in place, calibrated on ``words`` (a list of pre-tokenised texts), to
    ``levels`` steps each side of zero per row. Returns, per layer, the mean squared output
    change on the calibration inputs of plain rounding and of this rounding (computed from
    the input moments), both at ``levels``; ``act_order``: see ``round_weight``.

    At 63 levels the weights still fit int8 storage (127 steps): each stored integer lies
    within half a step of twice the 63-level one, so packing them again at 63 levels
    (``ner-kernels-int8-w7``) gives back exactly these weights."""
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m.weight.numel() >= INT8_MIN_NUMEL}
    moments = input_moments(model, words, linears, batch_size=batch_size)
    report = {}
    for name, module in linears.items():
        weight = module.weight.data
        plain = plain_rounding(weight, levels)
        better = round_weight(weight, moments[name], damping, levels, act_order)
        report[name] = {"plain": output_error(weight, plain, moments[name]),
                        "calibrated": output_error(weight, better, moments[name])}
        module.weight.data.copy_(better)
    return report


def plain_rounding(weight: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """``weight`` rounded entry by entry to its per-row grid of ``levels`` steps each side of zero."""
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
    return torch.round(weight / scale).clamp(-levels, levels) * scale


def output_error(weight: torch.Tensor, rounded: torch.Tensor, moment: torch.Tensor) -> float:
    """Mean squared change of the layer's outputs, E‖(W − Ŵ)x‖² / n_out, for inputs with
    second moment ``moment``."""
    delta = (weight - rounded).to(torch.float64)
    return float(torch.einsum("oi,ij,oj->", delta, moment, delta) / weight.shape[0])
