"""Word blocks: how a document of any length is scored with bounded memory.

A document longer than a block is cut into blocks of at most ``size`` words that overlap
by ``margin`` words on each side. Each block is encoded (the encoder windows its subwords
in turn) and scored; only the scores of a block's core are kept, so every word is scored
once with at least ``margin`` words of context on both sides. The per-word scores are
stitched into one array for the whole document and decoded once, so an entity that
crosses a block boundary is decoded whole. Memory depends on the block size, not on the
document's length; time grows linearly with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    start: int  # first word the block encodes
    end: int  # one past the last word it encodes
    keep_start: int  # the core whose scores are kept
    keep_end: int


def plan_blocks(n_words: int, size: int, margin: int) -> list[Block]:
    """Blocks covering ``range(n_words)`` whose cores tile it exactly."""
    if n_words <= size:
        return [Block(0, n_words, 0, n_words)]
    core = size - 2 * margin
    if core <= 0:
        raise ValueError(f"block size {size} leaves no core with margin {margin}")
    blocks = []
    for keep_start in range(0, n_words, core):
        keep_end = min(keep_start + core, n_words)
        blocks.append(Block(max(0, keep_start - margin), min(n_words, keep_end + margin), keep_start, keep_end))
    return blocks


def predict_in_blocks(probabilities, batch: list[list[str]], size: int, margin: int, words_per_pass: int = 8192):
    """Run ``probabilities(list of word lists) -> (arrays, windows)`` block by block and
    stitch each sequence's per-word arrays back together. Returns one array per sequence
    (first axis: words), the windows each used, and the blocks each used."""
    pieces = [(index, block) for index, words in enumerate(batch) for block in plan_blocks(len(words), size, margin)]
    outputs: list[np.ndarray | None] = [None] * len(batch)
    windows = [0] * len(batch)
    blocks = [0] * len(batch)
    start = 0
    while start < len(pieces):
        stop, total = start, 0
        while stop < len(pieces) and (stop == start or total + _length(pieces[stop]) <= words_per_pass):
            total += _length(pieces[stop])
            stop += 1
        group = pieces[start:stop]
        arrays, used = probabilities([batch[i][b.start : b.end] for i, b in group])
        for (i, block), array, n in zip(group, arrays, used):
            if outputs[i] is None:
                outputs[i] = np.zeros((len(batch[i]), *array.shape[1:]), dtype=array.dtype)
            outputs[i][block.keep_start : block.keep_end] = array[block.keep_start - block.start : block.keep_end - block.start]
            windows[i] += n
            blocks[i] += 1
        start = stop
    return outputs, windows, blocks


def _length(piece) -> int:
    return piece[1].end - piece[1].start
