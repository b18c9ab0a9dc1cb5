"""The C kernels against the PyTorch reference, op by op, for every instruction-set path
this CPU can run (AVX-512, AVX2 with VNNI, plain AVX2), on block-sparse and dense weights.

Tolerances: fp32 results may differ only by summation order (|diff| <= 2e-5 x the sum of
|terms|); int8 kernels do exact integer arithmetic on the same quantised integers as the
reference, so they too differ only by float rounding; attention is compared with a float64
softmax(QK^T / sqrt(d))V at 1e-5.
"""
import math

import pytest
import torch

from ner.kernels.block_sparse import (DENSE_BLOCK_K, OUTPUTS_PER_BLOCK, SPARSE_BLOCK_K, BlockSparseWeight,
                                      dense_block_k)
from ner.kernels.build import load_library
from ner.kernels.native import NativeKernels
from ner.kernels.reference import ReferenceKernels, quantize_rows
from ner.span_model import SpanHead

# Compiler flags that force the narrower paths on a CPU that has the wider ones (no-ops elsewhere).
VARIANTS = {
    "widest": (),
    "avx2-vnni": ("-mno-avx512f",),
    "avx2": ("-mno-avx512f", "-mno-avxvnni", "-mno-avx512vnni"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def native(request):
    library = load_library(VARIANTS[request.param])
    if library is None:
        pytest.skip("the C kernels cannot be built here (see the warning)")
    return NativeKernels(library)


def random_block_sparse(n_out, n_in, block_k, density, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, n_in, generator=generator) * 0.1
    kept = torch.rand(n_out // OUTPUTS_PER_BLOCK, n_in // block_k, generator=generator) < density
    mask = kept.repeat_interleave(OUTPUTS_PER_BLOCK, 0).repeat_interleave(block_k, 1)
    return weight * mask, torch.randn(n_out, generator=generator)


# block_k 12: one group of 4 inputs left after the AVX2 int8 tile's pairs of groups; 64: the dense width
SHAPES = [(1, 32, 32, 16, 1.0), (37, 64, 96, 16, 0.5), (50, 384, 128, 16, 0.2), (13, 128, 64, 32, 0.0),
          (9, 48, 64, 12, 0.7), (21, 192, 64, 64, 1.0), (6, 256, 96, 64, 0.6)]


@pytest.mark.parametrize("dtype,levels", [("fp32", 127), ("int8", 127), ("int8", 63)])
@pytest.mark.parametrize("epilogue", ["none", "gelu", "residual"])
@pytest.mark.parametrize("rows,n_in,n_out,block_k,density", SHAPES)
def test_linear_matches_reference(native, dtype, levels, epilogue, rows, n_in, n_out, block_k, density):
    weight, bias = random_block_sparse(n_out, n_in, block_k, density)
    packed = BlockSparseWeight.from_dense(weight, bias, block_k=block_k, dtype=dtype, levels=levels)
    generator = torch.Generator().manual_seed(rows * n_in)
    x = torch.randn(rows, n_in, generator=generator) * 3
    residual = torch.randn(rows, n_out, generator=generator)
    got = native.linear(x, packed, epilogue=epilogue, residual=residual)
    expected = ReferenceKernels(native.activation_levels).linear(x, packed, epilogue=epilogue, residual=residual)
    scale = x.abs() @ packed.dense().abs().T + bias.abs() + residual.abs() + 1e-3
    assert ((got - expected).abs() / scale).max() <= 2e-5


@pytest.mark.parametrize("levels", [127, 63])
def test_int8_linear_stays_close_to_fp32(native, levels):
    weight, bias = random_block_sparse(128, 256, 16, 1.0)
    x = torch.randn(64, 256)
    exact = x @ weight.T + bias
    got = native.linear(x, BlockSparseWeight.from_dense(weight, bias, dtype="int8", levels=levels))
    # 7-bit activations (the AVX2 path without VNNI) or weights give about 2x the error of 8-bit ones
    assert (got - exact).norm() / exact.norm() < (0.02 if 63 in (native.activation_levels, levels) else 0.01)


@pytest.mark.parametrize("levels", [127, 63])
def test_int8_sums_do_not_overflow_at_the_extremes(native, levels):
    """The AVX2 tiles add products in int16 (one vpmaddubsw pair, or two pairs for 7-bit
    weights): with every weight and activation at its largest magnitude, of both signs, the
    sums must still be exact."""
    n_in = 256
    weight = torch.ones(64, n_in)
    weight[1::2] = -1.0  # rows of all +max and all -max weights
    x = torch.ones(8, n_in)
    x[1::2] = -1.0  # quantised to +levels / -levels (the unsigned 1 and 2 * levels + 1)
    packed = BlockSparseWeight.from_dense(weight, torch.zeros(64), dtype="int8", levels=levels)
    assert torch.allclose(native.linear(x, packed), x @ weight.T, rtol=1e-5, atol=0)


@pytest.mark.parametrize("levels", [127, 63])
def test_8_bit_activations_take_weights_whose_int16_sums_fit(levels):
    """127-level activations: without VNNI the weights may hold 63 levels at most (2 * 255 * 63
    fits in int16); those sums are exact at the extremes and match the reference, and weights
    beyond the bound are refused, not silently saturated."""
    library = load_library(VARIANTS["avx2"])
    if library is None:
        pytest.skip("the C kernels cannot be built here (see the warning)")
    kernels = NativeKernels(library, activation_levels=127)
    assert kernels.max_weight_levels == 63
    weight = torch.ones(64, 256)
    weight[1::2] = -1.0
    x = torch.ones(8, 256)
    x[1::2] = -1.0
    packed = BlockSparseWeight.from_dense(weight, torch.zeros(64), dtype="int8", levels=levels)
    if levels > kernels.max_weight_levels:
        with pytest.raises(ValueError, match="overflow"):
            kernels.linear(x, packed)
        return
    assert torch.allclose(kernels.linear(x, packed), x @ weight.T, rtol=1e-5, atol=0)
    weight, bias = random_block_sparse(96, 384, 16, 0.5)
    packed = BlockSparseWeight.from_dense(weight, bias, dtype="int8", levels=levels)
    x = torch.randn(50, 384) * 3
    got, expected = kernels.linear(x, packed, epilogue="gelu"), ReferenceKernels(127).linear(x, packed, epilogue="gelu")
    assert ((got - expected).abs() / (x.abs() @ packed.dense().abs().T + bias.abs() + 1e-3)).max() <= 2e-5


def test_quantize_rows_is_bit_identical(native):
    x = torch.randn(40, 96) * torch.logspace(-3, 3, 40)[:, None]
    x[3] = 0.0
    q = torch.empty(40, 96, dtype=torch.uint8)
    scale = torch.empty(40)
    native.library.nk_quantize_rows(x.data_ptr(), 40, 96, native.activation_levels, q.data_ptr(), scale.data_ptr())
    expected_q, expected_scale = quantize_rows(x, native.activation_levels)
    assert torch.equal(q.float() - (native.activation_levels + 1), expected_q)
    assert torch.equal(scale, expected_scale)


def naive_attention(qkv, lengths, n_heads):
    qkv = qkv.double()
    hidden = qkv.shape[1] // 3
    size = hidden // n_heads
    out, row = [], 0
    for length in lengths:
        part = qkv[row : row + length].view(length, 3, n_heads, size).transpose(0, 2)  # (heads, 3, length, size)
        q, k, v = part[:, 0], part[:, 1], part[:, 2]
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(size), dim=-1)
        out.append((weights @ v).transpose(0, 1).reshape(length, hidden))
        row += length
    return torch.cat(out).float()


@pytest.mark.parametrize("n_heads,head_size", [(2, 8), (2, 16), (12, 32), (2, 64), (1, 40)])
def test_attention_matches_naive(native, n_heads, head_size):
    lengths = [1, 7, 33, 64, 64, 5]
    qkv = torch.randn(sum(lengths), 3 * n_heads * head_size, generator=torch.Generator().manual_seed(1)) * 2
    expected = naive_attention(qkv, lengths, n_heads)
    assert (native.attention(qkv, lengths, n_heads) - expected).abs().max() <= 1e-5
    assert (ReferenceKernels().attention(qkv, lengths, n_heads) - expected).abs().max() <= 1e-5


def test_layer_norm_matches_torch(native):
    x = torch.randn(70, 200) * 5 + 3
    gamma, beta = torch.randn(200), torch.randn(200)
    expected = torch.nn.functional.layer_norm(x, (200,), gamma, beta, 1e-12)
    assert (native.layer_norm(x.clone(), gamma, beta, 1e-12) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype,levels,tolerance", [("fp32", 127, 1e-5), ("int8", 127, 0.03), ("int8", 63, 0.03)])
def test_fused_span_head_matches_span_head(native, dtype, levels, tolerance):
    from ner.kernels.span_head import FusedSpanHead

    torch.manual_seed(0)
    head = SpanHead(64, 32, 5, 4, 0.1).eval()
    words = torch.randn(3, 9, 64)
    with torch.no_grad():
        expected = head(words)
        fused = FusedSpanHead(head, native, dtype=dtype, weight_levels=levels)(words)
        reference = FusedSpanHead(head, ReferenceKernels(native.activation_levels), dtype=dtype, weight_levels=levels)(words)
    assert fused.shape == expected.shape == (3, 9, 4, 5)
    assert (fused - reference).abs().max() <= 1e-5  # same arithmetic
    assert (fused - expected).abs().max() <= tolerance * expected.abs().max()


def test_block_sparse_weight_round_trips_and_skips_zero_blocks():
    weight, bias = random_block_sparse(96, 64, 16, 0.4, seed=3)
    packed = BlockSparseWeight.from_dense(weight, bias)
    assert torch.equal(packed.dense(), weight)
    kept_blocks = weight.view(3, 32, 4, 16).abs().sum(dim=(1, 3)).gt(0).sum().item()
    assert packed.col_block.numel() == kept_blocks
    assert packed.density == pytest.approx(kept_blocks / 12)


def test_dense_matrices_pack_in_wide_blocks_and_pruned_ones_keep_the_pruning_width():
    dense = torch.randn(64, 128)
    assert dense_block_k(dense) == DENSE_BLOCK_K == BlockSparseWeight.from_dense(dense).block_k
    pruned, _ = random_block_sparse(64, 128, SPARSE_BLOCK_K, 0.5, seed=1)
    packed = BlockSparseWeight.from_dense(pruned)
    assert packed.block_k == SPARSE_BLOCK_K and packed.density < 1.0  # every pruned block still skipped
    assert torch.equal(packed.dense(), pruned)
    assert dense_block_k(torch.randn(64, 96)) == SPARSE_BLOCK_K  # 96 inputs do not split into 64
    assert BlockSparseWeight.from_dense(dense, block_k=16).block_k == 16  # an explicit width wins


def test_int8_packing_reproduces_per_row_storage_exactly():
    """The pipelines' int8 storage (ner.weights) and the kernels quantise alike: a stored,
    dequantised matrix packs back to the very same integers."""
    weight = torch.randn(64, 32)
    scale = weight.abs().amax(dim=1, keepdim=True) / 127.0
    stored = torch.round(weight / scale) * scale
    packed = BlockSparseWeight.from_dense(stored, dtype="int8")
    assert torch.equal(packed.integers(), torch.round(weight / scale))
    assert torch.allclose(packed.dense(), stored, rtol=0, atol=1e-6)


def test_shapes_the_kernels_cannot_take_are_refused():
    with pytest.raises(ValueError, match="blocks of 32x16"):
        BlockSparseWeight.from_dense(torch.randn(48, 32))
    with pytest.raises(ValueError, match="dtype"):
        BlockSparseWeight.from_dense(torch.randn(32, 32), dtype="int4")


@pytest.mark.parametrize("levels", [127, 63])
@pytest.mark.parametrize("rows", [5, 300])  # below and above the fused kernel's threshold
def test_int8_layers_hand_quantised_rows_on(native, rows, levels):
    """An int8 layer can return its output quantised for the next int8 layer (fused in C
    for large batches): bit-identical to quantising the fp32 output afterwards."""
    from ner.kernels.reference import QuantizedRows

    first, bias = random_block_sparse(128, 64, 16, 0.7, seed=4)
    second, second_bias = random_block_sparse(64, 128, 16, 0.7, seed=5)
    first = BlockSparseWeight.from_dense(first, bias, dtype="int8", levels=levels)
    second = BlockSparseWeight.from_dense(second, second_bias, dtype="int8", levels=levels)
    x = torch.randn(rows, 64)
    hidden = native.linear(x, first, epilogue="gelu", quantize_output=True)
    assert isinstance(hidden, QuantizedRows)
    expected = native.quantize(native.linear(x, first, epilogue="gelu"))
    assert torch.equal(hidden.integers, expected.integers) and torch.equal(hidden.scale, expected.scale)
    reference = ReferenceKernels(native.activation_levels)
    reference_hidden = reference.linear(x, first, epilogue="gelu", quantize_output=True)
    # the erf approximation may move a value across a rounding boundary: one step at most
    assert (hidden.integers.int() - reference_hidden.integers.int()).abs().max() <= 1
    got = native.linear(hidden, second)
    assert (got - reference.linear(hidden, second)).abs().max() <= 1e-4 * got.abs().max()


@pytest.mark.parametrize("n_heads,head_size", [(12, 32), (2, 64), (1, 40)])
def test_int8_attention_follows_its_reference_arithmetic(native, n_heads, head_size):
    """C int8 attention against ``reference.int8_attention`` (the same rounding; the fp32
    exponentials differ in the last bits, which may move a probability by one step of 1/127):
    within 1% of the largest output; both within 3% of fp32 attention (about 1% on these
    unit-variance inputs). A head size that is not a multiple of 32 takes the reference."""
    from ner.kernels.reference import int8_attention

    lengths = [1, 7, 33, 64, 64, 5, 130]
    qkv = torch.randn(sum(lengths), 3 * n_heads * head_size, generator=torch.Generator().manual_seed(2))
    exact = naive_attention(qkv, lengths, n_heads)
    expected = int8_attention(qkv, lengths, n_heads, native.activation_levels)
    got = native.attention(qkv, lengths, n_heads, int8=True)
    largest = exact.abs().max()
    assert (got - expected).abs().max() <= 0.01 * largest
    assert 0 < (expected - exact).abs().max() <= 0.03 * largest
    assert (ReferenceKernels(native.activation_levels).attention(qkv, lengths, n_heads, int8=True) - expected).abs().max() == 0
