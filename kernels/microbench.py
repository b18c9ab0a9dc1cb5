"""Kernel-level speed, apart from any pipeline: the linear layers and attention of a
BERT-small-sized layer (hidden 384, FFN 1536, 12 heads, 256-token windows) on the C kernels
and on PyTorch, in one process, each the best of several repeats. The kernels' linear layers
are timed in both block widths: 16 inputs (the pruning granularity) and 64 (dense matrices).

    python -m ner.kernels.microbench [--rows 4096] [--repeats 5] [--threads 1]

Prints billions of multiply-adds per second (GMAC/s); the ratios between lines hold on a
busy machine better than the figures themselves. `ner bench` measures whole pipelines.
"""
from __future__ import annotations

import argparse
import time

import torch

from ner.kernels.block_sparse import DENSE_BLOCK_K, SPARSE_BLOCK_K, BlockSparseWeight
from ner.kernels.native import native_kernels

SHAPES = {"qkv": (384, 1152), "attention output": (384, 384), "intermediate": (384, 1536), "output": (1536, 384)}


def _best(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def measure(rows: int = 4096, repeats: int = 5, window: int = 256, heads: int = 12) -> dict[str, float]:
    """GMAC/s of each (operation, implementation); ``rows`` tokens in windows of ``window``."""
    kernels = native_kernels()
    if kernels is None:
        raise RuntimeError("the C kernels did not build here: nothing to measure")
    generator = torch.Generator().manual_seed(0)
    results = {}
    for name, (n_in, n_out) in SHAPES.items():
        x = torch.randn(rows, n_in, generator=generator)
        weight = torch.randn(n_out, n_in, generator=generator) * 0.05
        bias = torch.zeros(n_out)
        macs = rows * n_in * n_out
        for label, dtype, levels in (("fp32", "fp32", 127), ("int8", "int8", 127), ("int8 7-bit weights", "int8", 63)):
            for block_k in (SPARSE_BLOCK_K, DENSE_BLOCK_K):
                packed = BlockSparseWeight.from_dense(weight, bias, dtype=dtype, levels=levels, block_k=block_k)
                results[f"linear {name} {n_in}->{n_out}, kernels {label}, {block_k}-wide blocks"] = macs / _best(
                    lambda: kernels.linear(x, packed), repeats) / 1e9
        results[f"linear {name} {n_in}->{n_out}, torch fp32"] = macs / _best(
            lambda: torch.nn.functional.linear(x, weight, bias), repeats) / 1e9
    hidden = 384
    lengths = [window] * max(1, rows // window)
    qkv = torch.randn(sum(lengths), 3 * hidden, generator=generator)
    macs = sum(2 * n * n * hidden for n in lengths)
    for int8 in (False, True):
        results[f"attention, {window}-token windows, kernels {'int8' if int8 else 'fp32'}"] = macs / _best(
            lambda: kernels.attention(qkv, lengths, heads, int8=int8), repeats) / 1e9
    q, k, v = (part.view(len(lengths), window, heads, hidden // heads).transpose(1, 2) for part in qkv.split(hidden, dim=1))
    results[f"attention, {window}-token windows, torch fp32 (sdpa)"] = macs / _best(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), repeats) / 1e9
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="tokens per call (default 4096)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ner.benchmark import kernels_description

    print(f"{args.rows} tokens, {args.threads} thread(s); {kernels_description()}")
    for name, gmacs in measure(args.rows, args.repeats).items():
        print(f"{name:<60} {gmacs:7.1f} GMAC/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
