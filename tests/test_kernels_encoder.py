"""The padding-free encoder and the backend switch: same outputs as the Hugging Face
BertModel they replace, same spans from a whole pipeline, windows untouched, block pruning
that the kernels turn into skipped work, and a pure PyTorch fallback without a compiler.

Tolerances: fp32 encoder outputs within 1e-4 of BertModel's (summation order, erf
approximation); int8 within 5% relative (Frobenius) of fp32 on a random model.
"""
import warnings

import pytest
import torch
from spacy.tokens import Doc
from transformers import BertConfig, BertModel

from ner.kernels import BACKENDS, apply_backend
from ner.kernels import build
from ner.kernels.backends import default_kernels
from ner.kernels.native import native_kernels
from ner.kernels.packed_encoder import PackedBertEncoder
from ner.kernels.pruning import (attention_head_importance, block_magnitude_mask, prune_attention_heads,
                                 prune_blocks, prune_ffn_neurons)
from ner.kernels.reference import ReferenceKernels

import test_span_ner  # the module, not the class: importing the class would collect its test here again


def bert(hidden=64, heads=4, layers=2, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


def padded_batch(lengths, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 50, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 1
    return ids, mask


def kernel_sets():
    native = native_kernels()
    return [ReferenceKernels()] + ([native] if native is not None else [])


@pytest.mark.parametrize("kernels", kernel_sets(), ids=lambda k: k.name)
@pytest.mark.parametrize("hidden,heads", [(64, 4), (64, 2), (96, 3)])
def test_packed_encoder_matches_bert(kernels, hidden, heads):
    model = bert(hidden, heads)
    ids, mask = padded_batch([30, 1, 17, 30, 9], 30)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = PackedBertEncoder(model, kernels).forward(ids, mask).last_hidden_state
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-4
    assert got[~real].abs().max() == 0  # nothing computed, zeros returned, on padding


def test_packed_encoder_accepts_left_padding():
    model = bert()
    ids, mask = padded_batch([12, 5], 12)
    flipped_ids, flipped_mask = ids.flip(1), mask.flip(1)
    with torch.no_grad():
        expected = model(input_ids=flipped_ids, attention_mask=flipped_mask).last_hidden_state
        got = PackedBertEncoder(model, default_kernels()).forward(flipped_ids, flipped_mask).last_hidden_state
    real = flipped_mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-4


@pytest.mark.parametrize("kernels", kernel_sets(), ids=lambda k: k.name)
def test_output_mask_computes_the_wanted_positions_alone(kernels):
    model = bert(layers=3)
    ids, mask = padded_batch([30, 4, 17], 30)
    wanted = torch.zeros_like(mask, dtype=torch.bool)
    wanted[0, [1, 5, 29]] = wanted[2, 16] = True
    wanted[1, 10] = True  # padding: never computed, even when asked for
    encoder = PackedBertEncoder(model, kernels, dtype="int8")
    with torch.no_grad():
        full = encoder.forward(ids, mask).last_hidden_state
        got = encoder.forward(ids, mask, output_mask=wanted).last_hidden_state
    chosen = wanted & mask.bool()
    assert torch.equal(got[chosen], full[chosen])  # per-token arithmetic: bit for bit
    assert got[~chosen].abs().max() == 0 and full[mask.bool() & ~chosen].abs().min() > 0


def test_word_encoder_asks_for_first_pieces_only_and_gets_the_same_vectors(trained_pipeline):
    contract, nlp = trained_pipeline
    import copy

    switched = copy.deepcopy(nlp)
    apply_backend(switched.get_pipe("ner").model, "ner-kernels-int8")
    encoder = switched.get_pipe("ner").model.encoder
    words_batch = [ws for ws, _ in contract.examples] + [("the a of and " * 8).split() + contract.examples[0][0]]
    seen = []
    forward = encoder.transformer.forward
    encoder.transformer.forward = lambda *a, **k: seen.append(k.get("output_mask")) or forward(*a, **k)
    with torch.no_grad():
        masked = encoder(words_batch)
        encoder.transformer.takes_output_mask = False
        plain = encoder(words_batch)
    assert seen[0] is not None and seen[-1] is None
    asked, real = int(seen[0].sum()), sum(len(words) for words in words_batch)
    assert asked == real  # one position per word: its first piece, in the window that owns it
    assert torch.equal(masked.vectors, plain.vectors) and torch.equal(masked.mask, plain.mask)


@pytest.mark.parametrize("int8_attention", [False, True])
def test_int8_encoder_stays_close_to_fp32(int8_attention):
    model = bert(heads=2, layers=3)  # heads of 32: the C int8 attention's head size
    ids, mask = padded_batch([40, 22, 3], 40)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        encoder = PackedBertEncoder(model, default_kernels(), dtype="int8", int8_attention=int8_attention)
        got = encoder.forward(ids, mask).last_hidden_state[mask.bool()]
    assert (got - expected).norm() / expected.norm() < 0.05


def test_8_bit_activations_pack_the_weights_at_the_levels_the_cpu_can_sum():
    """With 127-level activations the kernels without VNNI take 63-level weights (the encoder
    and the span head pack them so), and the encoder stays as close to fp32 as with 8-bit weights."""
    kernels = default_kernels(activation_levels=127)
    if kernels.name != "native":
        pytest.skip("the C kernels cannot be built here")
    assert kernels.activation_levels == 127 and kernels.max_weight_levels == (127 if kernels.has_vnni else 63)
    model = bert(heads=2, layers=3)
    ids, mask = padded_batch([40, 22, 3], 40)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        encoder = PackedBertEncoder(model, kernels, dtype="int8")
        got = encoder.forward(ids, mask).last_hidden_state[mask.bool()]
    assert {layer.qkv.levels for layer in encoder.layers} == {kernels.max_weight_levels}
    assert (got - expected).norm() / expected.norm() < 0.05


def test_the_fast_backend_packs_weights_at_the_levels_this_cpu_multiplies_fastest():
    """``ner-kernels-int8-fast``: 7-bit weights on AVX2 without VNNI (the paired int16 tile), 8-bit
    with VNNI and in the PyTorch reference; never beyond what the activations allow."""
    from ner.kernels.span_head import FusedSpanHead
    from ner.span_model import SpanHead

    assert ReferenceKernels().int8_weight_levels(None) == 127
    kernels = default_kernels()
    if kernels.name == "native":
        assert kernels.int8_weight_levels(None) == (127 if kernels.has_vnni else 63)
        assert default_kernels(activation_levels=127).int8_weight_levels(127) == (127 if kernels.has_vnni else 63)
    head = SpanHead(32, 32, 3, 4, 0.1)
    fused = FusedSpanHead(head, kernels, dtype="int8", weight_levels=None)
    encoder = PackedBertEncoder(bert(heads=2, layers=1), kernels, dtype="int8", weight_levels=None)
    assert fused.classify_in.levels == encoder.layers[0].qkv.levels == kernels.int8_weight_levels(None)


@pytest.fixture(scope="module")
def trained_pipeline():
    contract = test_span_ner.TestEnglishContract()
    nlp, ner = contract.build()
    contract.overfit(ner)
    return contract, nlp


def pipeline_outputs(nlp, words_batch):
    ner = nlp.get_pipe("ner")
    ner.model.eval()
    with torch.inference_mode():
        probs, windows, _blocks = ner.model.predict(words_batch)
    return probs, windows


@pytest.mark.parametrize("backend,tolerance", [("ner-kernels", 1e-4), ("ner-kernels-int8", 0.1), ("ner-kernels-int8-attention", 0.1),
                                               ("ner-kernels-int8-w7", 0.1), ("ner-kernels-int8-a8", 0.1),
                                               ("ner-kernels-int8-fast", 0.1),
                                               ("torch-int8", 0.1)])
def test_backend_keeps_windows_and_predictions(trained_pipeline, backend, tolerance):
    """A document longer than the 12-subword window goes through the same windows; the
    span probabilities stay within ``tolerance`` and the decoded spans are the same."""
    contract, nlp = trained_pipeline
    import copy

    words_batch = [ws for ws, _ in contract.examples] + [("the a of and " * 8).split() + contract.examples[0][0]]
    expected_probs, expected_windows = pipeline_outputs(nlp, words_batch)
    switched = copy.deepcopy(nlp)
    apply_backend(switched.get_pipe("ner").model, backend)
    assert switched.get_pipe("ner").model.backend == backend
    probs, windows = pipeline_outputs(switched, words_batch)
    assert windows == expected_windows and windows[-1] > 1
    for got, expected in zip(probs, expected_probs):
        assert abs(got - expected).max() <= tolerance
    assert contract.predict(switched) and [[x[:3] for x in doc] for doc in contract.predict(switched)] == [
        [x[:3] for x in doc] for doc in contract.predict(nlp)]


def test_pretokenised_doc_through_switched_pipeline(trained_pipeline):
    contract, nlp = trained_pipeline
    import copy

    switched = copy.deepcopy(nlp)
    apply_backend(switched.get_pipe("ner").model, "ner-kernels-int8")
    doc = Doc(switched.vocab, words="Angela Merkel met Tim Cook in Berlin .".split())
    for _, component in switched.pipeline:
        doc = component(doc)
    assert [(e.text, e.label_) for e in doc.ents] == [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")]


def test_unknown_backend_is_a_clear_error(trained_pipeline):
    _, nlp = trained_pipeline
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        apply_backend(nlp.get_pipe("ner").model, "cuda-magic")
    assert {"torch", "torch-int8", "onnxruntime-int8", "ner-kernels", "ner-kernels-int8"} <= set(BACKENDS)


def test_block_magnitude_mask_prunes_the_weakest_blocks():
    weight = torch.ones(64, 32)
    weight[:32, :16] *= 0.1  # the weakest of the four 32x16 blocks
    weight[32:, 16:] *= 0.5
    mask = block_magnitude_mask(weight, 0.5)
    assert mask[:32, :16].sum() == 0 and mask[32:, 16:].sum() == 0
    assert mask[:32, 16:].min() == 1 and mask[32:, :16].min() == 1
    assert block_magnitude_mask(weight, 0.0).min() == 1


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_pruned_encoder_skips_blocks_and_matches_bert(sparsity):
    model = bert(layers=2)
    pruned = prune_blocks(model, sparsity)
    assert model.encoder.layer[0].intermediate.dense.weight.eq(0).float().mean() < 0.01  # the original is untouched
    packed = PackedBertEncoder(pruned, default_kernels())
    assert packed.density == pytest.approx(1 - sparsity, abs=0.03)
    ids, mask = padded_batch([20, 7], 20)
    with torch.no_grad():
        expected = pruned(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        got = packed.forward(ids, mask).last_hidden_state[mask.bool()]
    assert (got - expected).abs().max() <= 1e-4


def test_ffn_pruning_drops_the_weakest_neurons_into_smaller_dense_matrices():
    model = bert(hidden=64, layers=2)  # FFN 128
    with torch.no_grad():
        for layer in model.encoder.layer:  # neurons 1, 3, 5, ... feed nothing: pruning them changes nothing
            layer.output.dense.weight[:, 1::2] = 0.0
    ids, mask = padded_batch([20, 7], 20)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        prune_ffn_neurons(model, 64)
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
    assert model.config.intermediate_size == 64
    assert model.encoder.layer[1].intermediate.dense.weight.shape == (64, 64)
    assert model.encoder.layer[1].output.dense.weight.shape == (64, 64)
    assert (after - before).abs().max() <= 1e-5
    packed = PackedBertEncoder(model, default_kernels())  # the kernels run the smaller matrices
    with torch.no_grad():
        got = packed.forward(ids, mask).last_hidden_state[mask.bool()]
    assert (got - after).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="FFN size"):
        prune_ffn_neurons(model, 65)


def test_head_pruning_drops_the_heads_that_add_nothing_and_the_model_rebuilds_from_its_config(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = bert(hidden=64, heads=4, layers=2)  # heads of 16
    silent = {0: [1, 3], 1: [0, 2]}  # their output-projection columns are zero: they add nothing
    with torch.no_grad():
        for layer, heads in silent.items():
            for head in heads:
                model.encoder.layer[layer].attention.output.dense.weight[:, head * 16:(head + 1) * 16] = 0.0
    ids, mask = padded_batch([20, 7, 13], 20)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
    importance = attention_head_importance(model, [(ids, mask)])
    assert importance.shape == (2, 4)
    assert all(importance[layer, head] == 0 and importance[layer].max() > 0
               for layer, heads in silent.items() for head in heads)
    assert prune_attention_heads(model, 2, importance) == silent
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
    assert model.encoder.layer[0].attention.self.query.weight.shape == (32, 64)
    assert model.encoder.layer[1].attention.output.dense.weight.shape == (64, 32)
    assert (after - before).abs().max() <= 1e-5
    packed = PackedBertEncoder(model, default_kernels())  # the kernels run each layer's own head count
    with torch.no_grad():
        got = packed.forward(ids, mask).last_hidden_state[mask.bool()]
    assert (got - after).abs().max() <= 1e-4
    model.config.save_pretrained(tmp_path)  # a saved pipeline rebuilds its encoder from the config alone
    rebuilt = AutoModel.from_config(AutoConfig.from_pretrained(tmp_path), add_pooling_layer=False).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()], after)
    with pytest.raises(ValueError, match="heads per layer"):
        prune_attention_heads(model, 5, importance)


def test_without_a_compiler_the_reference_runs_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_VARIABLE, str(tmp_path))  # no cached build to fall back on
    monkeypatch.setattr(build, "find_compiler", lambda: None)
    build.load_library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler"):
            kernels = default_kernels()
        assert isinstance(kernels, ReferenceKernels) and kernels.name == "reference"
        model = bert(layers=1)
        ids, mask = padded_batch([10, 4], 10)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not on every use
            got = apply_backend(model, "ner-kernels-int8").forward(ids, mask).last_hidden_state
            expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (got - expected)[mask.bool()].norm() / expected[mask.bool()].norm() < 0.05
    finally:
        build.load_library.cache_clear()


@pytest.mark.parametrize("backend,head_type", [("ner-kernels", "BoundaryHead"), ("onnxruntime", "OnnxHead")])
def test_other_architectures_switch_their_encoder(backend, head_type):
    """A boundary model keeps its own head on the kernels (they fuse SpanHead only) and
    hands it to ONNX Runtime whole; its outputs do not move."""
    from conftest import tiny_tokenizer, tiny_transformer
    from ner.boundary_model import BoundaryModelSpec
    from ner.encoders import WordEncoder

    tokenizer = tiny_tokenizer()
    encoder = WordEncoder(tiny_transformer(len(tokenizer)).eval(), tokenizer, window=12, stride=6)
    model = BoundaryModelSpec(hidden_size=32, window=12, stride=6).build(encoder, ["PER", "LOC"]).eval()
    words = ["Angela Merkel met Tim Cook in Berlin .".split(), ("the a of " * 7).split()]
    expected, _ = model.probabilities(words)
    apply_backend(model, backend)
    assert type(model.head).__name__ == head_type
    got, _ = model.probabilities(words)
    for a, b in zip(got, expected):
        assert abs(a - b).max() <= 1e-4


def test_backends_do_not_stack():
    model = apply_backend(bert(layers=1), "torch")
    from ner.encoders import WordEncoder
    from conftest import tiny_tokenizer

    encoder = WordEncoder(model, tiny_tokenizer(), window=12, stride=6)
    apply_backend(encoder, "ner-kernels")
    with pytest.raises(ValueError, match="already runs on backend 'ner-kernels'"):
        apply_backend(encoder, "ner-kernels-int8")


def test_a_pipeline_runs_on_the_backend_its_config_names(pipeline_dir, tmp_path):
    """The backend is a component setting in config.cfg: ``ner.load(backend=...)`` and
    spaCy's config overrides choose another, and a model running on a kernel backend
    cannot be saved (its weights are no longer the fp32 reference's)."""
    import shutil

    import spacy

    import ner

    configured = tmp_path / "configured"
    shutil.copytree(pipeline_dir, configured)
    config = spacy.util.load_config(configured / "config.cfg")
    config["components"]["ner"]["backend"] = "ner-kernels"
    config.to_disk(configured / "config.cfg")
    (configured / "checksums.sha256").unlink(missing_ok=True)

    text = "Angela Merkel met Tim Cook in Berlin ."
    reference = spacy.load(pipeline_dir)
    kernels = ner.load(configured)
    assert kernels.get_pipe("ner").model.backend == "ner-kernels"
    assert getattr(ner.load(configured, backend="torch").get_pipe("ner").model, "backend", "torch") == "torch"
    words = [text.split()]
    expected, _, _ = reference.get_pipe("ner").model.predict(words)
    found, _, _ = kernels.get_pipe("ner").model.predict(words)
    assert found[0] == pytest.approx(expected[0], abs=1e-4)  # the same span scores, from the kernels
    with pytest.raises(ValueError, match="backend"):
        kernels.to_disk(tmp_path / "saved")
    with pytest.raises(ner.loading.PipelineError, match="unknown backend"):
        ner.load(configured, backend="cuda-magic")
