"""``ner export onnx``: a pipeline's model as ONNX graphs, and ONNX Runtime inside a pipeline.

The export writes what another runtime needs to reproduce the pipeline:
``encoder.onnx`` (input_ids, attention_mask → last_hidden_state, any batch and length up to
the window), ``encoder.int8.onnx`` (the same after ONNX Runtime's graph fusions and dynamic
int8 quantisation: per-channel int8 weights, activations quantised at run time),
``head.onnx`` / ``head.int8.onnx`` (word vectors → the head's logits), the tokenizer, and
``export.json`` (architecture, labels, window and stride, the model's spec, threshold,
decoding). Windowing, word pooling and decoding are not in the graphs: they are the few
lines of ``WordEncoder.forward`` and the model's ``decode``.

``OnnxTransformer`` and ``OnnxHead`` run the exported graphs where the PyTorch modules
were, so a pipeline can use ONNX Runtime without changing its windows or decoding
(``ner.kernels``' backends ``onnxruntime`` and ``onnxruntime-int8``).
"""
from __future__ import annotations

import inspect
import json
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def add_arguments(parser) -> None:
    parser.add_argument("format", choices=["onnx"], help="the export format")
    parser.add_argument("pipeline", help="shipped pipeline name or directory")
    parser.add_argument("-o", "--output", required=True, help="directory to write the graphs into")
    parser.add_argument("--component", default=None, help="span component to export (default: the first)")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 encoder")
    parser.add_argument("--opset", type=int, default=OPSET)


def run(args) -> int:
    import ner

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        print(f"ner export onnx needs onnx and onnxruntime: pip install 'ner-suite[bench]' ({error})", file=sys.stderr)
        return 2
    nlp = ner.load(args.pipeline)
    written = export_pipeline(nlp, args.output, component=args.component, int8=args.int8, opset=args.opset)
    for name, path in written.items():
        print(f"{name}: {path} ({Path(path).stat().st_size / 1e6:.1f} MB)" if Path(path).is_file() else f"{name}: {path}")
    return 0


def span_component(nlp, name: str | None = None):
    from ner.components import SpanNER

    for component_name, component in nlp.pipeline:
        if isinstance(component, SpanNER) and (name is None or component_name == name):
            return component
    raise ValueError(f"no span_ner component{f' named {name!r}' if name else ''} in this pipeline")


def export_pipeline(nlp, directory, *, component: str | None = None, int8: bool = True, opset: int = OPSET) -> dict:
    """Write the graphs, tokenizer and ``export.json``; returns {what: path}."""
    span_ner = span_component(nlp, component)
    model = span_ner.model.eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {"encoder": export_encoder(model.encoder.transformer, directory / "encoder.onnx", opset=opset)}
    if int8:
        written["encoder_int8"] = quantize_encoder(written["encoder"], directory / "encoder.int8.onnx",
                                                   model.encoder.transformer.config)
    if not takes_word_vectors_only(model.head):
        raise ValueError(f"{type(model.head).__name__} takes more than the word vectors; only its encoder can be exported")
    written["head"] = export_head(model.head, model.encoder.hidden_size, directory / "head.onnx", opset=opset)
    if int8:
        written["head_int8"] = quantize_head(written["head"], directory / "head.int8.onnx")
    model.encoder.tokenizer.save_pretrained(directory / "tokenizer")
    written["tokenizer"] = directory / "tokenizer"
    description = {
        "architecture": span_ner.spec.architecture, "labels": model.labels, "window": model.encoder.window,
        "stride": model.encoder.stride, "spec": asdict(span_ner.spec), "threshold": span_ner.cfg["threshold"],
        "decoding": span_ner.cfg["decoding"],
        "word_vector": "the first subword's last_hidden_state, each subword taken from the window where it has most context",
        "files": {name: Path(path).name for name, path in written.items()},
    }
    (directory / "export.json").write_text(json.dumps(description, indent=2))
    written["description"] = directory / "export.json"
    return written


def export_encoder(transformer, path, *, opset: int = OPSET) -> Path:
    """The transformer alone: (input_ids, attention_mask) → last_hidden_state, dynamic batch and length."""
    path = Path(path)
    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "length"}
    wrapper = _LastHiddenState(transformer.eval())
    # The TorchScript exporter warns that it is legacy and that traced constants are constants;
    # the newer exporter needs onnxscript, which the suite does not depend on.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example, example), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    return path


class _LastHiddenState(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids, attention_mask):
        return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def quantize_encoder(source, target, config) -> Path:
    """ONNX Runtime's BERT graph fusions (attention, layer norm, GELU), then dynamic int8
    quantisation of the linear layers with per-channel weights: the path ONNX Runtime's
    documentation gives for transformer encoders on CPU."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    target = Path(target)
    with tempfile.TemporaryDirectory() as scratch:
        fused = Path(scratch) / "fused.onnx"
        # pruned heads leave layers with different head counts: the optimiser then detects them per layer
        pruned = bool(getattr(config, "pruned_heads", None))
        optimized = optimize_model(str(source), model_type="bert", num_heads=0 if pruned else config.num_attention_heads,
                                   hidden_size=0 if pruned else config.hidden_size)
        optimized.save_model_to_file(str(fused))
        # Shape inference cannot type the fused contrib ops' outputs; they are all fp32.
        quantize_dynamic(str(fused), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    return target


def quantize_head(source, target) -> Path:
    """Dynamic int8 for the head's linear layers (per-channel weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return Path(target)


def takes_word_vectors_only(head) -> bool:
    """Whether ``head.forward`` takes one argument (the word vectors), as an ONNX graph can:
    one without a default, and the head needs no other (a long-span head with context layers
    reads the word mask too)."""
    required = [p for p in inspect.signature(head.forward).parameters.values() if p.default is inspect.Parameter.empty]
    return len(required) == 1 and getattr(head, "sequence", None) is None


def export_head(head, input_size: int, path, *, opset: int = OPSET) -> Path:
    """Word vectors (batch, words, input_size) → the head's logits (batch, words, ...)."""
    path = Path(path)
    example = torch.zeros(1, 12, input_size)
    axes = {0: "batch", 1: "words"}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head.eval(), (example,), str(path), input_names=["word_vectors"], output_names=["logits"],
                          opset_version=opset, dynamo=False, dynamic_axes={"word_vectors": axes, "logits": axes})
    return path


def _session(path, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class OnnxOutput:
    last_hidden_state: torch.Tensor


class OnnxTransformer(nn.Module):
    """An exported encoder in ONNX Runtime, called like the ``BertModel`` it came from."""

    def __init__(self, path, config, *, threads: int | None = None):
        super().__init__()
        self.session = _session(path, threads)
        self.config = config
        self.path = Path(path)
        # WordEncoder finds its device through a parameter; ONNX Runtime runs on the CPU.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    @classmethod
    def from_transformer(cls, transformer, *, quantize: bool, threads: int | None = None):
        """Export ``transformer`` (and quantise it) through a temporary directory; the
        session holds the graph in memory, so the files go once it is built."""
        with tempfile.TemporaryDirectory(prefix="ner-onnx-") as directory:
            path = export_encoder(transformer, Path(directory) / "encoder.onnx")
            if quantize:
                path = quantize_encoder(path, Path(directory) / "encoder.int8.onnx", transformer.config)
            return cls(path, transformer.config, threads=threads)

    def forward(self, input_ids, attention_mask=None, **_ignored) -> OnnxOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return OnnxOutput(torch.from_numpy(hidden))


class OnnxHead(nn.Module):
    """An exported head in ONNX Runtime, called like the module it came from."""

    def __init__(self, path, *, threads: int | None = None):
        super().__init__()
        self.session = _session(path, threads)

    @classmethod
    def from_head(cls, head, input_size: int, *, quantize: bool, threads: int | None = None):
        with tempfile.TemporaryDirectory(prefix="ner-onnx-") as directory:
            path = export_head(head, input_size, Path(directory) / "head.onnx")
            if quantize:
                path = quantize_head(path, Path(directory) / "head.int8.onnx")
            return cls(path, threads=threads)

    def forward(self, words):
        (logits,) = self.session.run(["logits"], {"word_vectors": words.detach().cpu().float().numpy()})
        return torch.from_numpy(logits)
