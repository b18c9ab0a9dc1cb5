"""Buffers reused from call to call.

A freshly allocated tensor of tens of MB (a batch's query-key-value matrix is 16k tokens x
1152 floats, 75 MB) arrives as untouched pages: filling it costs page faults and the
kernel's zeroing, which were measured at 25-30 ms of system time for a product that takes
30 ms. The packed encoder and the fused head keep their large intermediates here instead.
Buffers are per thread, so one model can serve several threads at once.
"""
from __future__ import annotations

import math
import threading

import torch

GROWTH = 1.25  # a buffer that must grow takes some headroom: batch sizes vary a little


class Workspace:
    def __init__(self):
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A CPU tensor of ``shape`` with undefined contents, valid until this thread takes
        ``name`` again."""
        numel = math.prod(shape)
        key = (threading.get_ident(), name)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = torch.empty(max(int(numel * GROWTH), 1), dtype=dtype)
            self._buffers[key] = buffer
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        """Give the memory back (the next call allocates afresh)."""
        self._buffers.clear()
