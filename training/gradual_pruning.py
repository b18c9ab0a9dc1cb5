"""Gradual block pruning while training: a recipe's ``[pruning]`` table.

One-shot pruning of a trained encoder destroys its accuracy (docs/backend.md); pruned a
little at a time while it trains (here, while a student distils its teacher), the network
recovers between steps. The sparsity follows the cubic schedule of Zhu & Gupta (2017):

    s(t) = s_final * (1 - (1 - p)^3),   p = (t / T - start) / (end - start), clamped to [0, 1]

so most blocks go early, when the network adapts most easily, and none after ``end``
(a fraction of the run), leaving the rest of the run to recover at the final sparsity.
Every ``every`` steps each encoder linear layer's mask is chosen anew by block magnitude
(``ner.kernels.pruning.block_magnitude_mask``: the kernels' own 32 x 16 blocks); after every
optimiser step the masks are applied again, so pruned blocks stay exactly zero and the
kernels skip them.
"""
from __future__ import annotations

import torch

from ner.kernels.pruning import BERT_LINEARS, block_magnitude_mask


class GradualBlockPruning:
    def __init__(self, transformer, final_sparsity: float, total_steps: int, *, start: float = 0.0,
                 end: float = 0.6, every: int = 50, block_k: int = 16):
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"pruning needs 0 <= start < end <= 1, got start={start}, end={end}")
        self.linears = [layer.get_submodule(path) for layer in transformer.encoder.layer for path in BERT_LINEARS]
        self.final_sparsity = final_sparsity
        self.total_steps = max(total_steps, 1)
        self.start, self.end, self.every, self.block_k = start, end, every, block_k
        self.masks = None
        self.sparsity = 0.0
        self.step = 0

    def target(self, step: int) -> float:
        progress = (step / self.total_steps - self.start) / (self.end - self.start)
        progress = min(max(progress, 0.0), 1.0)
        return self.final_sparsity * (1.0 - (1.0 - progress) ** 3)

    @property
    def done(self) -> bool:
        """The final sparsity is in place: from here on, the model is the one to keep."""
        return self.sparsity >= self.final_sparsity - 1e-9

    @torch.no_grad()
    def __call__(self) -> None:
        """After each optimiser step: new masks when due, then the masks."""
        self.step += 1
        step = self.step
        target = self.target(step)
        if target > 0 and (self.masks is None or step % self.every == 0 or (target >= self.final_sparsity > self.sparsity)):
            self.masks = [block_magnitude_mask(linear.weight, target, self.block_k) for linear in self.linears]
            self.sparsity = target
        if self.masks is not None:
            for linear, mask in zip(self.linears, self.masks):
                linear.weight.mul_(mask)
