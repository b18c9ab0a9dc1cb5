"""Error-aware int8 rounding: on the storage grid, never worse than plain rounding on the
calibration inputs, and stored by int8 storage exactly as rounded."""
import torch

from conftest import tiny_tokenizer, tiny_transformer
from ner.rounding import output_error, plain_rounding, round_for_int8, round_weight
from ner.weights import load_weights, save_weights


def correlated_inputs(n_in: int, n: int = 2000, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(n_in, n_in, generator=generator) / n_in ** 0.5
    return torch.randn(n, n_in, generator=generator) @ mixing + 0.3 * torch.randn(n, n_in, generator=generator)


def plain(weight):
    scale = weight.abs().amax(dim=1, keepdim=True) / 127.0
    return torch.round(weight / scale).clamp(-127, 127) * scale


def test_rounding_with_input_moments_moves_outputs_less_than_plain_rounding():
    torch.manual_seed(0)
    weight = torch.randn(48, 96)
    x = correlated_inputs(96).double()
    moment = x.T @ x / x.shape[0]
    rounded = round_weight(weight, moment)
    assert output_error(weight, rounded, moment) < 0.8 * output_error(weight, plain(weight), moment)
    # Each row stays on its own int8 grid, its largest entry unchanged.
    scale = weight.abs().amax(dim=1, keepdim=True) / 127.0
    integers = rounded / scale
    assert torch.allclose(integers, integers.round(), atol=1e-3)
    assert integers.abs().max() <= 127 + 1e-3
    assert torch.equal(rounded.abs().amax(dim=1), weight.abs().amax(dim=1))


def test_int8_storage_keeps_the_rounded_weights_exactly(tmp_path):
    torch.manual_seed(1)
    weight = torch.randn(64, 128)
    x = correlated_inputs(128, seed=1).double()
    rounded = round_weight(weight, x.T @ x / x.shape[0])
    save_weights({"w": rounded}, tmp_path / "w.safetensors", "int8")
    assert torch.allclose(load_weights(tmp_path / "w.safetensors")["w"], rounded, rtol=0, atol=1e-6)
    assert not torch.allclose(plain(weight), rounded, rtol=0, atol=1e-6)


def test_a_span_model_is_rounded_in_place_layer_by_layer():
    from ner.encoders import WordEncoder
    from ner.span_model import SpanModel, SpanModelSpec

    tokenizer = tiny_tokenizer()
    model = SpanModel(WordEncoder(tiny_transformer(len(tokenizer), hidden=64), tokenizer), ["PER", "LOC"],
                      SpanModelSpec(hidden_size=64))
    query = model.encoder.transformer.encoder.layer[0].attention.self.query.weight
    before = query.detach().clone()
    words = [("Angela Merkel met Tim Cook in Berlin .".split()), "Barack Obama visited Paris and London".split()] * 4
    report = round_for_int8(model, words, batch_size=4)
    assert any(name.endswith("attention.self.query") for name in report)
    assert all(layer["calibrated"] <= layer["plain"] * 1.0001 for layer in report.values())
    assert not torch.equal(query, before)
    scale = before.abs().amax(dim=1, keepdim=True) / 127.0
    assert torch.allclose(query / scale, (query / scale).round(), atol=1e-3)
    model.predict(words[:2])  # still runs


def test_weights_rounded_to_63_levels_survive_int8_storage_and_pack_exactly_at_63(tmp_path):
    from kernels.block_sparse import BlockSparseWeight

    torch.manual_seed(2)
    weight = torch.randn(64, 128)
    x = correlated_inputs(128, seed=2).double()
    moment = x.T @ x / x.shape[0]
    rounded = round_weight(weight, moment, levels=63)
    scale = weight.abs().amax(dim=1, keepdim=True) / 63.0
    integers = rounded / scale
    assert torch.allclose(integers, integers.round(), atol=1e-3) and integers.abs().max() <= 63 + 1e-3
    assert output_error(weight, rounded, moment) < 0.8 * output_error(weight, plain_rounding(weight, 63), moment)
    save_weights({"w": rounded}, tmp_path / "w.safetensors", "int8")  # stored on 127 steps
    stored = load_weights(tmp_path / "w.safetensors")["w"]
    assert not torch.allclose(stored, rounded, rtol=0, atol=1e-6)
    packed = BlockSparseWeight.from_dense(stored, dtype="int8", levels=63).dense()
    assert torch.allclose(packed, rounded.float(), rtol=0, atol=1e-6)


def test_act_order_rounds_the_same_grid_and_undoes_its_column_order():
    torch.manual_seed(3)
    weight = torch.randn(32, 64)
    x = correlated_inputs(64, seed=3).double() * torch.linspace(0.1, 3.0, 64, dtype=torch.float64)  # unequal energies
    moment = x.T @ x / x.shape[0]
    ordered = round_weight(weight, moment, levels=63, act_order=True)
    scale = weight.abs().amax(dim=1, keepdim=True) / 63.0
    integers = ordered / scale
    assert torch.allclose(integers, integers.round(), atol=1e-3)
    assert torch.equal(ordered.abs().amax(dim=1), weight.abs().amax(dim=1))
    assert (ordered - weight).abs().mean() < scale.mean()  # within a step on average: the columns are back in place
    assert output_error(weight, ordered, moment) < output_error(weight, plain_rounding(weight, 63), moment)
