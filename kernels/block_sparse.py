"""Block-sparse weight matrices: the form in which the kernels take a linear layer.

A matrix of shape (n_out, n_in) is cut into blocks of ``OUTPUTS_PER_BLOCK`` (32) output rows
by ``block_k`` inputs. Blocks that are all zero are not stored, so a magnitude-pruned matrix
costs work in proportion to the blocks it keeps; a dense matrix is the case where every
block is kept. Stored blocks are packed in the order the C kernels read them (see
``csrc/ner_kernels.c``).

int8 matrices are quantised symmetrically per output row (one fp32 scale each). The
pipelines' int8 storage uses the same per-row scheme, so quantising a shipped pipeline's
dequantised weights again gives back the very same integers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

OUTPUTS_PER_BLOCK = 32
DTYPES = ("fp32", "int8")
SPARSE_BLOCK_K = 16  # the pruning granularity (ner.kernels.pruning)
DENSE_BLOCK_K = 64  # a dense matrix in wider blocks: fewer block starts, longer runs of multiply-adds


def dense_block_k(weight: torch.Tensor) -> int:
    """The block width for ``weight``: ``DENSE_BLOCK_K`` when no 32x16 block is all zero
    (nothing to skip, so wider blocks cost less per block) and it divides the inputs, else
    ``SPARSE_BLOCK_K``, so that every pruned block is still skipped."""
    n_out, n_in = weight.shape
    if n_out % OUTPUTS_PER_BLOCK or n_in % DENSE_BLOCK_K:
        return SPARSE_BLOCK_K
    blocks = weight.detach().view(n_out // OUTPUTS_PER_BLOCK, OUTPUTS_PER_BLOCK, n_in // SPARSE_BLOCK_K, SPARSE_BLOCK_K)
    has_zero_block = bool(blocks.ne(0).any(dim=3).any(dim=1).logical_not().any())
    return SPARSE_BLOCK_K if has_zero_block else DENSE_BLOCK_K


@dataclass
class BlockSparseWeight:
    n_out: int
    n_in: int
    block_k: int
    dtype: str
    row_ptr: torch.Tensor  # int32 (n_out / 32 + 1,): stored blocks of block-row i are row_ptr[i]:row_ptr[i+1]
    col_block: torch.Tensor  # int32 (n_blocks,): input block index of each stored block
    values: torch.Tensor  # fp32 (n_blocks, block_k, 32) or int8 (n_blocks, block_k / 4, 32, 4)
    bias: torch.Tensor | None  # fp32 (n_out,)
    scale: torch.Tensor | None = None  # int8: fp32 (n_out,), weight = integer * scale
    row_sum: torch.Tensor | None = None  # int8: int32 (n_out,), sum of each row's integers
    input_range: float | None = None  # static int8: the calibrated |input| bound (None: per-row dynamic scales)
    levels: int = 127  # int8: the integers lie in [-levels, levels]; at 63 or less the AVX2 kernels pair products
    _dense: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, block_k: int | None = None,
                   dtype: str = "fp32", levels: int = 127) -> "BlockSparseWeight":
        """Pack a (n_out, n_in) matrix; all-zero blocks are dropped. ``block_k``: the block
        width in inputs (None: ``dense_block_k(weight)``). int8: symmetric per
        output row on ``levels`` steps each side of zero (127: 8 bits; 63: 7 bits, which the
        AVX2 kernels without VNNI multiply faster)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not 0 < levels <= 127:
            raise ValueError(f"int8 levels must be in 1..127, got {levels}")
        n_out, n_in = weight.shape
        if block_k is None:
            block_k = dense_block_k(weight)
        if n_out % OUTPUTS_PER_BLOCK or block_k % 4 or n_in % block_k:
            raise ValueError(
                f"a {n_out}x{n_in} matrix does not split into blocks of {OUTPUTS_PER_BLOCK}x{block_k} "
                f"(block_k must be a multiple of 4 dividing n_in; n_out a multiple of {OUTPUTS_PER_BLOCK})"
            )
        weight = weight.detach().float().cpu()
        scale = row_sum = None
        if dtype == "int8":
            scale = weight.abs().amax(dim=1).clamp(min=1e-12) / float(levels)
            weight = torch.round(weight / scale[:, None]).clamp(-levels, levels)
            row_sum = weight.sum(dim=1).to(torch.int32)
        blocks = weight.view(n_out // OUTPUTS_PER_BLOCK, OUTPUTS_PER_BLOCK, n_in // block_k, block_k)
        blocks = blocks.permute(0, 2, 3, 1)  # (block row, block column, k, output)
        kept = blocks.ne(0).flatten(2).any(-1)  # (block row, block column)
        row_ptr = torch.zeros(kept.shape[0] + 1, dtype=torch.int32)
        row_ptr[1:] = kept.sum(1).cumsum(0)
        col_block = kept.nonzero()[:, 1].to(torch.int32)
        values = blocks[kept]  # (n_blocks, block_k, 16), block rows in order
        if dtype == "int8":
            values = values.view(-1, block_k // 4, 4, OUTPUTS_PER_BLOCK).transpose(2, 3).to(torch.int8)
        return cls(n_out, n_in, block_k, dtype, row_ptr, col_block.contiguous(), values.contiguous(),
                   None if bias is None else bias.detach().float().cpu().contiguous(), scale, row_sum, levels=levels)

    @property
    def density(self) -> float:
        """Fraction of blocks stored."""
        return self.col_block.numel() / ((self.n_out // OUTPUTS_PER_BLOCK) * (self.n_in // self.block_k))

    def dense(self) -> torch.Tensor:
        """The (n_out, n_in) fp32 matrix it stands for (dequantised), built once."""
        if self._dense is None:
            n_rows = self.n_out // OUTPUTS_PER_BLOCK
            values = self.values.float()
            if self.dtype == "int8":
                values = values.transpose(2, 3).reshape(-1, self.block_k, OUTPUTS_PER_BLOCK)
            device = self.values.device
            blocks = torch.zeros(n_rows, self.n_in // self.block_k, self.block_k, OUTPUTS_PER_BLOCK, device=device)
            block_row = torch.repeat_interleave(torch.arange(n_rows, device=device), (self.row_ptr[1:] - self.row_ptr[:-1]).long())
            blocks[block_row, self.col_block.long()] = values
            dense = blocks.permute(0, 3, 1, 2).reshape(self.n_out, self.n_in)
            self._dense = dense * self.scale[:, None] if self.dtype == "int8" else dense
        return self._dense

    def apply(self, fn) -> None:
        """Apply ``fn`` (e.g. a ``.to(device)``) to every tensor held, as ``Module._apply`` does."""
        for name in ("row_ptr", "col_block", "values", "bias", "scale", "row_sum"):
            tensor = getattr(self, name)
            setattr(self, name, None if tensor is None else fn(tensor))
        self._dense = None

    def integers(self) -> torch.Tensor:
        """int8 only: the (n_out, n_in) integer matrix, as fp32."""
        return torch.round(self.dense() / self.scale[:, None])
