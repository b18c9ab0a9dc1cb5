"""Subword windows with stride: how a sequence of any length reaches an encoder with a
fixed maximum length, and how the overlapping outputs are stitched back together.

Every subword is taken from the window in which it sits furthest from an edge, so each
position keeps as much context as the windowing allows. Nothing is ever truncated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int  # first subword position covered (inclusive)
    end: int  # last position covered (exclusive)


def plan_windows(length: int, size: int, stride: int) -> list[Window]:
    """Windows of at most ``size`` positions, starting every ``stride`` positions, that
    together cover ``range(length)``. One window when the sequence fits."""
    if size <= 0 or not 0 < stride <= size:
        raise ValueError(f"need 0 < stride <= size, got size={size} stride={stride}")
    if length <= size:
        return [Window(0, length)]
    windows, start = [], 0
    while True:
        end = min(start + size, length)
        windows.append(Window(end - size if end == length else start, end))
        if end == length:
            return windows
        start += stride


def assign_positions(length: int, windows: list[Window]):
    """For each position, (window index, offset inside that window) as two int arrays:
    the window in which the position has the most context on its poorer side."""
    best_margin = np.full(length, -1, dtype=np.int64)
    owner = np.zeros(length, dtype=np.int64)
    for index, window in enumerate(windows):
        positions = np.arange(window.start, window.end)
        margin = np.minimum(positions - window.start, window.end - 1 - positions)
        better = margin > best_margin[window.start:window.end]
        best_margin[window.start:window.end][better] = margin[better]
        owner[window.start:window.end][better] = index
    starts = np.array([w.start for w in windows], dtype=np.int64)
    return owner, np.arange(length) - starts[owner]
