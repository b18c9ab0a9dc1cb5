"""The C kernels behind the same interface as the reference (``ReferenceKernels``).

Tensors are handed to C by address: every call makes its inputs contiguous fp32 (or
int8/int32) CPU tensors first and allocates its outputs here, so C never owns memory.
Tensors on another device go to the reference.
"""
from __future__ import annotations

import ctypes

import torch

from ner.kernels.block_sparse import BlockSparseWeight
from ner.kernels.build import load_library
from ner.kernels.reference import QuantizedRows, ReferenceKernels, static_scale

_EPILOGUE_CODES = {"none": 0, "gelu": 1, "residual": 2}
# Below this many rows the fused quantised-output kernel would leave threads idle (it
# splits work by chunks of 48 rows only); the two-step path is used instead.
FUSED_QUANTIZE_MIN_ROWS = 192


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _fp32_output(out: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=torch.float32)
    if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous fp32 tensor of shape {shape}")
    return out


def _quantized_output(out: QuantizedRows | None, shape: tuple[int, int], levels: int) -> QuantizedRows:
    if out is None:
        return QuantizedRows(torch.empty(shape, dtype=torch.uint8), torch.empty(shape[0]), levels)
    if tuple(out.integers.shape) != shape or out.integers.dtype != torch.uint8 or out.levels != levels:
        raise ValueError(f"out must hold uint8 integers of shape {shape} at {levels} levels")
    return out


class _Matrix(ctypes.Structure):
    """``nk_matrix`` in csrc/ner_kernels.c."""

    _fields_ = [("n_out", ctypes.c_int32), ("n_in", ctypes.c_int32), ("block_k", ctypes.c_int32),
                ("is_int8", ctypes.c_int32), ("levels", ctypes.c_int32), ("row_ptr", ctypes.c_void_p), ("col_block", ctypes.c_void_p),
                ("values", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("offset_sum", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class NativeKernels(ReferenceKernels):
    name = "native"

    def __init__(self, library, activation_levels: int | None = None):
        """``activation_levels``: the int8 activations' steps each side of zero; by default the
        most this CPU multiplies with 8-bit weights (127 with VNNI, 63 without). 127 without
        VNNI is allowed when the weights hold at most 63 levels (``max_weight_levels``):
        vpmaddubsw's int16 pair sums, 2 * 255 * 63, then still fit."""
        super().__init__(activation_levels=activation_levels or library.nk_activation_levels())
        self.library = library
        self.capabilities = library.nk_capabilities()
        self.has_vnni = bool(self.capabilities & 2)  # nk_capabilities' VNNI bit
        if not 0 < self.activation_levels <= 127:
            raise ValueError("activation_levels must be in 1..127")
        self.max_weight_levels = 127 if self.has_vnni or self.activation_levels <= 63 else 63
        # without VNNI, 7-bit weights let two products add in int16 before widening (the paired tile)
        self.fastest_weight_levels = 127 if self.has_vnni else 63

    def linear(self, x, weight: BlockSparseWeight, *, epilogue="none", residual=None, quantize_output=False,
               out=None):
        """As ``ReferenceKernels.linear``; ``out`` (a contiguous fp32 tensor, or ``QuantizedRows``
        with ``quantize_output``) is written into when given, to reuse memory."""
        quantized_input = isinstance(x, QuantizedRows)
        device = (x.integers if quantized_input else x).device
        if device.type != "cpu" or (quantized_input and x.levels != self.activation_levels):
            return super().linear(x, weight, epilogue=epilogue, residual=residual, quantize_output=quantize_output)
        n_rows = x.integers.shape[0] if quantized_input else x.shape[0]
        if residual is not None:
            residual = residual.contiguous().float()
        common = (weight.row_ptr.data_ptr(), weight.col_block.data_ptr(), weight.values.data_ptr())
        if weight.dtype != "int8":
            if quantized_input:
                raise ValueError("quantised rows go to int8 layers only")
            x = x.contiguous().float()
            y = _fp32_output(None if quantize_output else out, (n_rows, weight.n_out))
            if n_rows:
                self.library.nk_linear_f32(x.data_ptr(), n_rows, weight.n_in, weight.n_out, weight.block_k, *common,
                                           _address(weight.bias), _address(residual), _EPILOGUE_CODES[epilogue],
                                           y.data_ptr())
            return self.quantize(y, out=out) if quantize_output else y
        if weight.levels > self.max_weight_levels:
            raise ValueError(f"int8 weights on {weight.levels} levels would overflow the int16 sums of "
                             f"{self.activation_levels}-level activations on this CPU: pack them at "
                             f"{self.max_weight_levels} levels or fewer (max_weight_levels)")
        q = x if quantized_input else self.quantize(x, input_range=weight.input_range)
        offset_sum = self._offset_sum(weight)  # held here: C reads it through its address
        int8_weight = (*common, weight.levels, weight.scale.data_ptr(), offset_sum.data_ptr(), _address(weight.bias))
        if quantize_output and residual is None and n_rows >= FUSED_QUANTIZE_MIN_ROWS:
            result = _quantized_output(out, (n_rows, weight.n_out), self.activation_levels)
            status = self.library.nk_linear_i8_quantized(
                q.integers.data_ptr(), q.scale.data_ptr(), n_rows, weight.n_in, weight.n_out, weight.block_k,
                *int8_weight, _EPILOGUE_CODES[epilogue], self.activation_levels, result.integers.data_ptr(),
                result.scale.data_ptr())
            if status == 0:
                return result
        y = _fp32_output(None if quantize_output else out, (n_rows, weight.n_out))
        if n_rows:
            self.library.nk_linear_i8(q.integers.data_ptr(), q.scale.data_ptr(), q.levels, n_rows, weight.n_in, weight.n_out,
                                      weight.block_k, *int8_weight, _address(residual), _EPILOGUE_CODES[epilogue],
                                      y.data_ptr())
        return self.quantize(y, out=out) if quantize_output else y

    def quantize(self, x: torch.Tensor, out: QuantizedRows | None = None,
                 input_range: float | None = None) -> QuantizedRows:
        """Per-row int8 for the int8 kernels (see ``reference.quantize_rows``); with
        ``input_range``, static: every row on one fixed scale (``reference.quantize_rows_static``)."""
        if x.device.type != "cpu":
            if input_range is not None:
                raise ValueError("static int8 runs on CPU tensors only")
            return QuantizedRows.from_float(x, self.activation_levels)
        x = x.contiguous().float()
        result = _quantized_output(out, tuple(x.shape), self.activation_levels)
        if x.shape[0] and input_range is not None:
            self.library.nk_quantize_rows_static(x.data_ptr(), x.shape[0], x.shape[1], self.activation_levels,
                                                 static_scale(input_range, self.activation_levels),
                                                 result.integers.data_ptr(), result.scale.data_ptr())
        elif x.shape[0]:
            self.library.nk_quantize_rows(x.data_ptr(), x.shape[0], x.shape[1], self.activation_levels,
                                          result.integers.data_ptr(), result.scale.data_ptr())
        return result

    def layer_norm(self, x, gamma, beta, eps):
        """Normalises ``x`` in place when it is a contiguous fp32 CPU tensor (the encoder
        passes only tensors it owns); returns the result either way."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
            return super().layer_norm(x, gamma, beta, eps)
        gamma, beta = gamma.contiguous(), beta.contiguous()  # held here: C reads them through their addresses
        self.library.nk_layer_norm(x.data_ptr(), x.shape[0], x.shape[1], gamma.data_ptr(), beta.data_ptr(), eps)
        return x

    def _offset_sum(self, weight: BlockSparseWeight) -> torch.Tensor:
        """What the activations' unsigned offset adds to each output (removed in C)."""
        return (weight.row_sum * (self.activation_levels + 1)).to(torch.int32)

    def _matrix(self, weight: BlockSparseWeight, keep: list) -> _Matrix:
        """The C view of ``weight``; tensors made for it are appended to ``keep`` (alive for the call)."""
        is_int8 = weight.dtype == "int8"
        offset_sum = self._offset_sum(weight) if is_int8 else None
        keep.append(offset_sum)
        return _Matrix(weight.n_out, weight.n_in, weight.block_k, int(is_int8), weight.levels, weight.row_ptr.data_ptr(),
                       weight.col_block.data_ptr(), weight.values.data_ptr(), _address(weight.scale),
                       _address(offset_sum), _address(weight.bias))

    def span_head(self, start, end, width, n_words, classify_in, classify_out):
        """As ``ReferenceKernels.span_head``; ``start`` and ``end`` may be column slices of one
        matrix (rows the same distance apart), as ``FusedSpanHead`` passes them."""
        strided = start.stride(1) == 1 and end.stride(1) == 1 and start.stride(0) == end.stride(0)
        too_many_levels = any(m.dtype == "int8" and m.levels > self.max_weight_levels for m in (classify_in, classify_out))
        if too_many_levels:
            raise ValueError(f"the span head's int8 weights hold more than {self.max_weight_levels} levels, "
                             f"too many for {self.activation_levels}-level activations on this CPU")
        if start.device.type != "cpu" or classify_in.n_in % 8 or not strided or start.dtype != torch.float32:
            return super().span_head(start, end, width, n_words, classify_in, classify_out)
        width = width.contiguous().float()
        n_sequences = start.shape[0] // n_words
        logits = torch.empty(start.shape[0] * width.shape[0], classify_out.n_out, dtype=torch.float32)
        keep = []
        matrices = (self._matrix(classify_in, keep), self._matrix(classify_out, keep))
        status = self.library.nk_span_head(start.data_ptr(), end.data_ptr(), start.stride(0), n_sequences, n_words,
                                           width.data_ptr(), width.shape[0], ctypes.byref(matrices[0]),
                                           ctypes.byref(matrices[1]), self.activation_levels, logits.data_ptr())
        if status != 0:
            return super().span_head(start, end, width, n_words, classify_in, classify_out)
        return logits

    def attention(self, qkv, lengths, n_heads, out=None, int8=False):
        """As ``ReferenceKernels.attention``; in C for head sizes that are a multiple of 8
        (fp32) or of 32 (``int8``)."""
        hidden = qkv.shape[1] // 3
        head_size = hidden // n_heads
        # int8: the keys hold 127 levels, so queries beyond max_weight_levels' bound go to the reference
        queries_fit = self.max_weight_levels == 127
        if qkv.device.type != "cpu" or qkv.dtype != torch.float32 or head_size % (32 if int8 else 8) or (int8 and not queries_fit):
            return super().attention(qkv, lengths, n_heads, int8=int8)
        qkv = qkv.contiguous()
        starts = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        starts[1:] = torch.as_tensor(lengths, dtype=torch.int64).cumsum(0)
        out = _fp32_output(out, (qkv.shape[0], hidden))
        arguments = (qkv.data_ptr(), starts.data_ptr(), len(lengths), n_heads, head_size)
        if int8:
            status = self.library.nk_attention_i8(*arguments, self.activation_levels, out.data_ptr())
        else:
            status = self.library.nk_attention(*arguments, out.data_ptr())
        if status != 0:
            return super().attention(qkv, lengths, n_heads, int8=int8)
        return out


def native_kernels(extra_flags: tuple[str, ...] = (), activation_levels: int | None = None) -> NativeKernels | None:
    """The C kernels, or None (with a warning, once) when they cannot be built here."""
    library = load_library(tuple(extra_flags))
    return None if library is None else NativeKernels(library, activation_levels)
