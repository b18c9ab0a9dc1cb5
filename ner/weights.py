"""Weights on disk: safetensors only (never pickle), stored as fp32, fp16 or int8.

int8 storage quantises each row of a 2-D weight matrix symmetrically with its own fp32
scale and is dequantised on load; biases, layer norms and other 1-D tensors stay fp32.
It shrinks a pipeline about 4× at a cost measured in its model card.

``int8-emb4`` is int8 with the word-embedding table (the matrix named
``*word_embeddings.weight``, which grows with the vocabulary) at 4 bits: every group of
64 values in a row shares an fp16 scale, two values packed per byte. A multilingual
vocabulary then costs half as much as at int8; each pipeline card that uses it reports
its F1 against int8.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STORAGES = ("fp32", "fp16", "int8", "int8-emb4")
SCALE_SUFFIX = ".__scale__"
INT4_SUFFIX = ".__int4__"      # packed nibbles, shape (rows, columns / 2), uint8
INT4_SCALE_SUFFIX = ".__scale4__"  # fp16 scales, shape (rows, columns / INT4_GROUP)
INT4_GROUP = 64


INT8_MIN_NUMEL = 4096  # int8 storage quantises 2-D tensors at least this large


def int8_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers as floats in −127…127, per-row scale (rows, 1)) of a 2-D tensor: int8
    storage's grid, nearest step, entry by entry."""
    scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(tensor / scale).clamp(-127, 127), scale


def quantise_int4(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 nibbles, fp16 group scales) of a 2-D float tensor whose column count
    is a multiple of INT4_GROUP: symmetric, values −7…7 stored with an offset of 8."""
    rows, columns = tensor.shape
    groups = tensor.float().reshape(rows, columns // INT4_GROUP, INT4_GROUP)
    scale = (groups.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 7.0).half()
    codes = (torch.round(groups / scale.float()).clamp(-7, 7) + 8).to(torch.uint8).reshape(rows, columns)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.contiguous(), scale.squeeze(2).contiguous()


def dequantise_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rows = packed.shape[0]
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=2).reshape(rows, -1).float() - 8.0
    groups = codes.reshape(rows, scale.shape[1], INT4_GROUP)
    return (groups * scale.float().unsqueeze(2)).reshape(rows, -1)


def save_weights(state: dict[str, torch.Tensor], path, storage: str = "fp32") -> None:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if not tensor.is_floating_point():
            tensors[name] = tensor
        elif (storage == "int8-emb4" and name.endswith("word_embeddings.weight") and tensor.dim() == 2
              and tensor.shape[1] % INT4_GROUP == 0):
            tensors[name + INT4_SUFFIX], tensors[name + INT4_SCALE_SUFFIX] = quantise_int4(tensor)
        elif storage in ("int8", "int8-emb4") and tensor.dim() == 2 and tensor.numel() >= INT8_MIN_NUMEL:
            integers, scale = int8_rows(tensor)
            tensors[name] = integers.to(torch.int8).contiguous()
            tensors[name + SCALE_SUFFIX] = scale.float().contiguous()
        elif storage == "fp16" and tensor.dim() == 2:
            tensors[name] = tensor.half()
        else:
            tensors[name] = tensor.float()
    save_file(tensors, str(path), metadata={"storage": storage, "format": "pt"})


def load_weights(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file missing: {path}")
    try:
        stored = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged header
        raise ValueError(f"weights file {path} is damaged or not safetensors: {error}") from None
    state = {}
    for name, tensor in stored.items():
        if name.endswith(SCALE_SUFFIX) or name.endswith(INT4_SCALE_SUFFIX):
            continue
        if name.endswith(INT4_SUFFIX):
            base = name[: -len(INT4_SUFFIX)]
            state[base] = dequantise_int4(tensor, stored[base + INT4_SCALE_SUFFIX])
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        if scale is not None:
            state[name] = tensor.float() * scale
        elif tensor.is_floating_point():
            state[name] = tensor.float()
        else:
            state[name] = tensor
    return state


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
