"""Weights on disk: safetensors, fp32/fp16/int8 and int8 with 4-bit word embeddings."""
import pytest
import torch

from ner.weights import INT4_GROUP, dequantise_int4, load_weights, quantise_int4, save_weights


def state(rows=1000, hidden=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder.embeddings.word_embeddings.weight": torch.randn(rows, hidden, generator=generator) * 0.05,
        "encoder.layer.0.dense.weight": torch.randn(hidden, hidden, generator=generator) * 0.05,
        "encoder.layer.0.dense.bias": torch.randn(hidden, generator=generator),
        "position_ids": torch.arange(10),
    }


def test_int4_round_trip_error_is_bounded_by_half_a_step():
    weight = state()["encoder.embeddings.word_embeddings.weight"]
    packed, scale = quantise_int4(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (1000, 64)
    assert scale.shape == (1000, 128 // INT4_GROUP)
    restored = dequantise_int4(packed, scale)
    step = scale.float().repeat_interleave(INT4_GROUP, dim=1)
    assert torch.all((restored - weight).abs() <= step / 2 + 1e-6)
    assert torch.equal(dequantise_int4(*quantise_int4(restored)), restored)  # a fixed point


@pytest.mark.parametrize("storage", ["fp32", "fp16", "int8", "int8-emb4"])
def test_every_storage_loads_back_close(tmp_path, storage):
    original = state()
    save_weights(original, tmp_path / "w.safetensors", storage)
    loaded = load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == set(original)
    assert torch.equal(loaded["position_ids"], original["position_ids"])
    assert torch.equal(loaded["encoder.layer.0.dense.bias"], original["encoder.layer.0.dense.bias"])
    tolerance = {"fp32": 0, "fp16": 1e-3, "int8": 2e-3, "int8-emb4": 2e-2}[storage]
    for name in ("encoder.embeddings.word_embeddings.weight", "encoder.layer.0.dense.weight"):
        assert loaded[name].dtype == torch.float32
        assert (loaded[name] - original[name]).abs().max() <= tolerance


def test_emb4_halves_the_embedding_table_and_keeps_other_matrices_int8(tmp_path):
    original = state(rows=4000)
    save_weights(original, tmp_path / "int8.safetensors", "int8")
    save_weights(original, tmp_path / "emb4.safetensors", "int8-emb4")
    int8, emb4 = (tmp_path / "int8.safetensors").stat().st_size, (tmp_path / "emb4.safetensors").stat().st_size
    table = 4000 * 128
    assert int8 - emb4 > 0.4 * table  # half a byte saved per value, minus the group scales
    a, b = load_weights(tmp_path / "int8.safetensors"), load_weights(tmp_path / "emb4.safetensors")
    assert torch.equal(a["encoder.layer.0.dense.weight"], b["encoder.layer.0.dense.weight"])


def test_unknown_storage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="storage must be one of"):
        save_weights(state(), tmp_path / "w.safetensors", "int3")
