"""A BERT encoder that does no work on padding (ByteTransformer's idea).

``PackedBertEncoder`` takes a Hugging Face ``BertModel``'s weights and stands in for it:
same call (``input_ids``, ``attention_mask``), same ``last_hidden_state``. Inside, the
batch's real tokens are packed into one (n_tokens, hidden) matrix, every linear layer
runs once over all of them (block-sparse, fp32 or int8), attention runs inside each
sequence, and the result is scattered back into the padded shape (zeros on padding).
Positions are the tokens' column indices, as in ``BertModel``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ner.kernels.block_sparse import BlockSparseWeight
from ner.kernels.reference import QuantizedRows
from ner.kernels.workspace import Workspace


@dataclass
class PackedOutput:
    last_hidden_state: torch.Tensor


@dataclass
class PackedLayer:
    n_heads: int  # this layer's attention heads (fewer than the config's when heads were pruned)
    qkv: BlockSparseWeight  # query, key and value stacked: one pass over the tokens
    attention_output: BlockSparseWeight
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    intermediate: BlockSparseWeight
    output: BlockSparseWeight
    output_norm: tuple[torch.Tensor, torch.Tensor]


class PackedBertEncoder(nn.Module):
    def __init__(self, bert, kernels, *, dtype: str = "fp32", block_k: int | None = None,
                 input_ranges: dict[str, float] | None = None, int8_attention: bool = False,
                 weight_levels: int | None = 127):
        """``bert``: a ``transformers.BertModel`` (absolute positions, GELU); its weights are
        copied. ``kernels``: ``NativeKernels`` or ``ReferenceKernels``. ``dtype``: "fp32" or
        "int8" for the linear layers; embeddings, layer norms, GELU, softmax and residual
        adds stay fp32. ``input_ranges`` (int8 only): static int8, each linear layer's
        activations on one scale fixed from these calibrated bounds, keyed by the
        ``BertModel`` module names (``ner.kernels.static_int8.calibrate_input_ranges``);
        without them, per-row dynamic scales. ``int8_attention``: Q·Kᵀ and P·V on int8
        operands too (softmax in fp32; ``ReferenceKernels.attention``). ``weight_levels``
        (int8 only): the steps each side of zero of the weights: 127 (8 bits) or 63 (7 bits,
        which the AVX2 kernels without VNNI multiply faster; see csrc/ner_kernels.c), at most
        ``kernels.max_weight_levels``; None: ``kernels.fastest_weight_levels``."""
        super().__init__()
        config = bert.config
        if getattr(config, "position_embedding_type", "absolute") != "absolute" or config.hidden_act != "gelu":
            raise ValueError("PackedBertEncoder supports BERT with absolute positions and erf GELU only")
        self.config = config
        self.kernels = kernels
        self.dtype = dtype
        self.eps = config.layer_norm_eps
        self.int8_attention = int8_attention
        self.workspace = Workspace()
        embeddings = bert.embeddings
        # Embedding tables stay parameters: the WordEncoder finds its device through them.
        self.word_embeddings = nn.Parameter(embeddings.word_embeddings.weight.detach().clone(), requires_grad=False)
        self.position_embeddings = nn.Parameter(embeddings.position_embeddings.weight.detach().clone(), requires_grad=False)
        self.token_type_embeddings = nn.Parameter(embeddings.token_type_embeddings.weight.detach().clone(), requires_grad=False)
        self.embedding_norm = (embeddings.LayerNorm.weight.detach().clone(), embeddings.LayerNorm.bias.detach().clone())

        weight_levels = kernels.int8_weight_levels(weight_levels)

        def pack(weight, bias):
            return BlockSparseWeight.from_dense(weight.detach(), bias.detach(), block_k=block_k, dtype=dtype,
                                                levels=weight_levels)

        if input_ranges is not None and dtype != "int8":
            raise ValueError("input_ranges (static int8) need dtype='int8'")
        self.static = input_ranges is not None

        def bound(*names):
            if input_ranges is None:
                return None
            missing = [name for name in names if name not in input_ranges]
            if missing:
                raise ValueError(f"input_ranges has no calibrated bound for {missing[0]!r}")
            return max(float(input_ranges[name]) for name in names)

        self.layers = []
        for index, layer in enumerate(bert.encoder.layer):
            attention = layer.attention
            qkv_weight = torch.cat([attention.self.query.weight, attention.self.key.weight, attention.self.value.weight])
            qkv_bias = torch.cat([attention.self.query.bias, attention.self.key.bias, attention.self.value.bias])
            self.layers.append(PackedLayer(
                n_heads=attention.self.num_attention_heads,
                qkv=pack(qkv_weight, qkv_bias),
                attention_output=pack(attention.output.dense.weight, attention.output.dense.bias),
                attention_norm=(attention.output.LayerNorm.weight.detach().clone(), attention.output.LayerNorm.bias.detach().clone()),
                intermediate=pack(layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                output=pack(layer.output.dense.weight, layer.output.dense.bias),
                output_norm=(layer.output.LayerNorm.weight.detach().clone(), layer.output.LayerNorm.bias.detach().clone()),
            ))
            prefix, packed = f"encoder.layer.{index}.", self.layers[-1]
            packed.qkv.input_range = bound(*(prefix + f"attention.self.{n}" for n in ("query", "key", "value")))
            packed.attention_output.input_range = bound(prefix + "attention.output.dense")
            packed.intermediate.input_range = bound(prefix + "intermediate.dense")
            packed.output.input_range = bound(prefix + "output.dense")

    @property
    def density(self) -> float:
        """Fraction of the linear layers' weight blocks that are stored (1.0 when dense)."""
        weights = [w for layer in self.layers for w in (layer.qkv, layer.attention_output, layer.intermediate, layer.output)]
        return sum(w.density * w.n_out * w.n_in for w in weights) / sum(w.n_out * w.n_in for w in weights)

    # WordEncoder passes ``output_mask`` to transformers that declare they take it.
    takes_output_mask = True

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_mask: torch.Tensor | None = None,
                **_ignored) -> PackedOutput:
        """``output_mask`` (bool, like ``input_ids``): the positions whose output is wanted;
        the last layer's attention output, feed-forward and norms run on those tokens only
        (every token is still attended to), and the other positions come back as zeros."""
        n_rows, width = input_ids.shape
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        lengths = mask.sum(1)
        # A row's real tokens become one consecutive run of packed rows, whatever side it is padded on.
        flat = mask.flatten().nonzero().squeeze(1)
        positions = flat % width
        types = 0 if token_type_ids is None else token_type_ids.flatten()[flat]
        x = (self.word_embeddings[input_ids.flatten()[flat]] + self.position_embeddings[positions]
             + self.token_type_embeddings[types])
        x = self.kernels.layer_norm(x.contiguous(), *self.embedding_norm, self.eps)
        kept = [int(n) for n in lengths.tolist() if n > 0]
        wanted = None if output_mask is None else output_mask.flatten()[flat].nonzero().squeeze(1)
        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, kept, wanted if index == len(self.layers) - 1 else None)
        out = x.new_zeros(n_rows * width, x.shape[1])
        out[flat if wanted is None else flat[wanted]] = x
        return PackedOutput(out.view(n_rows, width, -1))

    def _layer(self, layer: PackedLayer, x: torch.Tensor, lengths: list[int],
               wanted: torch.Tensor | None = None) -> torch.Tensor:
        """One layer over the packed tokens ``x``; with ``wanted`` (packed indices), the
        output of those tokens only."""
        kernels, n = self.kernels, x.shape[0]
        take = self._buffer if x.device.type == "cpu" else (lambda *_args: None)
        qkv = kernels.linear(x, layer.qkv, out=take("qkv", (n, layer.qkv.n_out)))
        context = kernels.attention(qkv, lengths, layer.n_heads, out=take("context", (n, layer.attention_output.n_in)),
                                    int8=self.int8_attention)
        if wanted is not None:  # every token was a key and a value; only these go on
            context, x, n = context[wanted], x[wanted], wanted.numel()
        attended = kernels.linear(context, layer.attention_output, epilogue="residual", residual=x,
                                  out=take("attended", (n, x.shape[1])))
        x = kernels.layer_norm(attended, *layer.attention_norm, self.eps)
        # dynamic int8: the GELU output goes to the next int8 layer quantised, never as fp32
        if self.dtype == "int8" and not self.static:
            hidden = kernels.linear(x, layer.intermediate, epilogue="gelu", quantize_output=True,
                                    out=take("hidden", (n, layer.intermediate.n_out), "quantized"))
        else:
            hidden = kernels.linear(x, layer.intermediate, epilogue="gelu", out=take("hidden", (n, layer.intermediate.n_out)))
        # The layer's input is no longer needed when its output is written: one buffer serves every layer.
        output = kernels.linear(hidden, layer.output, epilogue="residual", residual=x,
                                out=take("layer_output", (n, x.shape[1])))
        return kernels.layer_norm(output, *layer.output_norm, self.eps)

    def _buffer(self, name: str, shape: tuple[int, int], kind: str = "fp32"):
        if kind == "quantized":
            return QuantizedRows(self.workspace.take(name, shape, torch.uint8),
                                 self.workspace.take(name + " scale", shape[:1]), self.kernels.activation_levels)
        return self.workspace.take(name, shape)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves the packed weights too (they are not parameters)."""
        super()._apply(fn, recurse)
        self.embedding_norm = tuple(fn(t) for t in self.embedding_norm)
        for layer in self.layers:
            for weight in (layer.qkv, layer.attention_output, layer.intermediate, layer.output):
                weight.apply(fn)
            layer.attention_norm = tuple(fn(t) for t in layer.attention_norm)
            layer.output_norm = tuple(fn(t) for t in layer.output_norm)
        return self
