"""Static int8: calibrated activation bounds, the C quantiser against the reference, and the
packed encoder on fixed scales (close to fp32 when the bounds fit, clipped when they do not)."""
import pytest
import torch

from conftest import tiny_tokenizer, tiny_transformer
from ner.kernels import apply_backend
from ner.kernels.backends import default_kernels
from ner.kernels.block_sparse import BlockSparseWeight
from ner.kernels.native import native_kernels
from ner.kernels.packed_encoder import PackedBertEncoder
from ner.kernels.reference import ReferenceKernels, quantize_rows_static, static_scale
from ner.kernels.static_int8 import calibrate_input_ranges
from test_kernels_encoder import bert, padded_batch as batch


def observed_ranges(model, ids, mask):
    """The largest input magnitude of every linear layer on this batch (what calibration finds)."""
    ranges, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def record(_m, inputs, _o, name=name):
                ranges[name] = max(ranges.get(name, 0.0), float(inputs[0].abs().max()))
            handles.append(module.register_forward_hook(record))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    return ranges


def test_static_quantisation_clips_and_matches_the_c_kernel():
    x = torch.randn(37, 96) * 4
    scale = static_scale(5.0, 127)
    q, row_scale = quantize_rows_static(x, scale, 127)
    assert q.abs().max() == 127 and torch.all(row_scale == scale)
    inside = x.abs() < 4.9
    assert torch.equal(q[inside], torch.round(x[inside] / scale))
    assert torch.all(q[x > 5.1] == 127) and torch.all(q[x < -5.1] == -127)
    native = native_kernels()
    if native is None:
        pytest.skip("the C kernels cannot be built here")
    got = native.quantize(x, input_range=5.0)
    expected, _ = quantize_rows_static(x, static_scale(5.0, native.activation_levels), native.activation_levels)
    assert torch.equal(got.integers.float() - (native.activation_levels + 1), expected)
    assert torch.all(got.scale == static_scale(5.0, native.activation_levels))


def test_static_int8_linear_agrees_between_c_and_reference():
    native = native_kernels()
    if native is None:
        pytest.skip("the C kernels cannot be built here")
    torch.manual_seed(0)
    weight = BlockSparseWeight.from_dense(torch.randn(64, 128) * 0.1, torch.randn(64), dtype="int8")
    weight.input_range = 2.5
    x = torch.randn(50, 128)
    got = native.linear(x, weight)
    expected = ReferenceKernels(native.activation_levels).linear(x, weight)
    assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("kernels", [ReferenceKernels(), default_kernels()], ids=["reference", "default"])
def test_static_encoder_is_close_to_fp32_with_fitting_bounds_and_clips_with_tight_ones(kernels):
    model = bert(layers=3)
    ids, mask = batch([40, 22, 3], 40)
    real = mask.bool()
    ranges = observed_ranges(model, ids, mask)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state[real]
        static = PackedBertEncoder(model, kernels, dtype="int8", input_ranges=ranges).forward(ids, mask)
        tight = {name: bound / 20 for name, bound in ranges.items()}
        clipped = PackedBertEncoder(model, kernels, dtype="int8", input_ranges=tight).forward(ids, mask)
    error = (static.last_hidden_state[real] - expected).norm() / expected.norm()
    assert error < 0.05
    assert (clipped.last_hidden_state[real] - expected).norm() / expected.norm() > 2 * error


def test_static_encoder_needs_a_bound_for_every_layer():
    model = bert()
    ids, mask = batch([5], 5)
    ranges = observed_ranges(model, ids, mask)
    del ranges["encoder.layer.1.output.dense"]
    with pytest.raises(ValueError, match="encoder.layer.1.output.dense"):
        PackedBertEncoder(model, ReferenceKernels(), dtype="int8", input_ranges=ranges)
    with pytest.raises(ValueError, match="dtype='int8'"):
        PackedBertEncoder(model, ReferenceKernels(), dtype="fp32", input_ranges=observed_ranges(model, ids, mask))


def span_model():
    from ner.encoders import WordEncoder
    from ner.span_model import SpanModel, SpanModelSpec

    tokenizer = tiny_tokenizer()
    return SpanModel(WordEncoder(tiny_transformer(len(tokenizer), hidden=64), tokenizer), ["PER", "LOC"],
                     SpanModelSpec(hidden_size=64))


def test_calibration_bounds_every_encoder_layer_and_the_backend_runs_on_them():
    model = span_model()
    words = ["Angela Merkel met Tim Cook in Berlin .".split(), "Barack Obama visited Paris and London".split()] * 3
    largest = calibrate_input_ranges(model, words, batch_size=4)
    clipped = calibrate_input_ranges(model, words, batch_size=4, percentile=90)
    layers = model.encoder.transformer.config.num_hidden_layers
    assert f"encoder.layer.{layers - 1}.output.dense" in largest
    assert all(0 < clipped[name] < largest[name] for name in largest)
    with torch.inference_mode():
        reference, _, _ = model.predict(words[:2])
    with pytest.raises(ValueError, match="input_ranges"):
        apply_backend(span_model(), "ner-kernels-int8-static")
    apply_backend(model, "ner-kernels-int8-static", input_ranges=largest)
    with torch.inference_mode():
        got, _, _ = model.predict(words[:2])
    assert max(abs(a - b).max() for a, b in zip(got, reference)) < 0.1
    with pytest.raises(ValueError, match="fp32 model"):
        calibrate_input_ranges(model, words)
