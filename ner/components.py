"""The spaCy component ``span_ner``: a thin factory over the span model.

Entities land in ``doc.ents`` and, with their scores, in ``doc.spans[spans_key]``
(``attrs["scores"]``). Pre-tokenised Docs work as they are: the component reads the
Doc's own tokens (whitespace tokens skipped) and never re-tokenises.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.scorer import Scorer
from spacy.tokens import Doc, Span, SpanGroup
from spacy.util import filter_spans, minibatch

from ner.boundary_model import BoundaryModelSpec
from ner.decoding import DECODERS, base_labels, label_thresholds
from ner.encoders import WordEncoder, load_from_directory, load_pretrained
from ner.extensions import install_extensions
from ner.span_model import SpanModel, SpanModelSpec

# The model architectures a saved component may name in its cfg.json.
SPECS = {spec.architecture: spec for spec in (SpanModelSpec, BoundaryModelSpec)}
from ner.weights import load_weights, save_weights

DEFAULT_MODEL = """
[model]
@architectures = "ner_suite.SpanModel.v1"
encoder = "e5-small"
max_width = 10
hidden_size = 384
dropout = 0.1
window = 256
stride = 128
"""


@Language.factory(
    "span_ner",
    assigns=["doc.ents", "doc.spans"],
    default_config={
        "model": {"@architectures": "ner_suite.SpanModel.v1"},
        "labels": [],
        "active_labels": None,
        "threshold": 0.5,
        "label_thresholds": {},
        "spans_key": "ner",
        "decoding": "flat",
        "batch_size": 16,
        "storage": "fp32",
        "backend": "torch",
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_span_ner(nlp, name, model: SpanModelSpec | BoundaryModelSpec, labels: list[str], active_labels: list[str] | None,
                  threshold: float, spans_key: str, decoding: str, batch_size: int, storage: str, backend: str = "torch",
                  label_thresholds: dict[str, float] | None = None):
    return SpanNER(nlp.vocab, model, name, labels=labels, active_labels=active_labels, threshold=threshold,
                   label_thresholds=label_thresholds, spans_key=spans_key, decoding=decoding, batch_size=batch_size,
                   storage=storage, backend=backend)


WINDOW_SETTINGS = ("window", "stride", "block_words")  # read from the config at load time


class SpanNER(Pipe):
    specs = SPECS  # architecture name in cfg.json → spec class
    default_architecture = "span"  # what a cfg.json without "architecture" holds

    def __init__(self, vocab, spec: SpanModelSpec | BoundaryModelSpec, name: str = "ner", *, labels=(), active_labels=None,
                 threshold=0.5, label_thresholds=None, spans_key="ner", decoding="flat", batch_size=16, storage="fp32",
                 backend="torch"):
        if decoding not in DECODERS:
            raise ValueError(f"decoding must be one of {sorted(DECODERS)}, got {decoding!r}")
        install_extensions()
        self.vocab = vocab
        self.name = name
        self.spec = spec
        # active_labels: the labels predicted when a call names none (None: all of them);
        # a pipeline trained on several label schemes predicts one scheme by default.
        # label_thresholds: a label's own decoding threshold where dev data chose one
        # (`python -m ner.training.thresholds`); the others use threshold.
        self.cfg = {"labels": list(labels), "active_labels": active_labels, "threshold": threshold,
                    "label_thresholds": dict(label_thresholds or {}), "spans_key": spans_key,
                    "decoding": decoding, "batch_size": batch_size, "storage": storage}
        # backend: what the model runs on once loaded (kernels.BACKENDS); it lives in the
        # pipeline's config.cfg, not in cfg.json, so spacy.load's config overrides choose it.
        self.backend = backend
        self.model = None  # built by initialize, set_model or from_disk

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.cfg["labels"])

    def add_label(self, label: str) -> int:
        if self.model is not None:
            raise ValueError("labels cannot be added after the model is built")
        if label in self.cfg["labels"]:
            return 0
        self.cfg["labels"].append(label)
        return 1

    def initialize(self, get_examples=None, *, nlp=None, labels=None):
        """Build the model from the pretrained encoder the spec names."""
        if labels is None and get_examples is not None:
            labels = sorted({ent.label_ for eg in get_examples() for ent in eg.reference.ents})
        if labels:
            self.cfg["labels"] = list(labels)
        if not self.cfg["labels"]:
            raise ValueError(f"component {self.name!r} needs labels to initialise")
        transformer, tokenizer = load_pretrained(self.spec.encoder)
        self.set_model(transformer, tokenizer)

    def set_model(self, transformer, tokenizer) -> None:
        encoder = WordEncoder(transformer, tokenizer, self.spec.window, self.spec.stride)
        self.model = self.spec.build(encoder, self.cfg["labels"])

    def set_windows(self, *, window: int | None = None, stride: int | None = None) -> None:
        """Window documents differently from now on (an inference setting: the weights stay)."""
        self.spec = replace(self.spec, window=window or self.spec.window, stride=stride or self.spec.stride)
        if self.model is not None:
            self.model.encoder.window, self.model.encoder.stride = self.spec.window, self.spec.stride

    def __call__(self, doc: Doc, **options) -> Doc:
        return next(iter(self.pipe([doc], **options)))

    def pipe(self, stream, *, batch_size: int | None = None, threshold: float | None = None,
             decoding: str | None = None, labels: list[str] | None = None):
        """Docs are buffered, sorted by length, run in batches of similar length, and
        yielded in their input order. ``labels`` restricts the call to those labels."""
        self._require_model()
        batch_size = batch_size or self.cfg["batch_size"]
        for buffer in minibatch(stream, size=batch_size * 8):
            order = sorted(range(len(buffer)), key=lambda i: len(buffer[i]))
            for start in range(0, len(order), batch_size):
                docs = [buffer[i] for i in order[start : start + batch_size]]
                self.annotate(docs, threshold=threshold, decoding=decoding, labels=labels)
            yield from buffer

    def annotate(self, docs: list[Doc], *, threshold=None, decoding=None, labels=None) -> None:
        threshold = self.thresholds() if threshold is None else label_thresholds(self.model.labels, threshold)
        variants = base_labels(self.cfg["labels"])
        if labels is None:
            labels = self.cfg.get("active_labels")
            if labels is None and variants:  # corpus variants only when asked for
                labels = [l for l in self.cfg["labels"] if l not in variants]
        decoding = decoding or self.cfg["decoding"]
        tokens = [[t.i for t in doc if not t.is_space] for doc in docs]
        words = [[doc[i].text for i in index] for doc, index in zip(docs, tokens)]
        self.model.eval()
        with torch.inference_mode():
            probs, n_windows, n_blocks = self.model.predict(words)
        for doc, index, doc_probs, windows, blocks in zip(docs, tokens, probs, n_windows, n_blocks):
            found = self.model.decode(doc_probs, threshold, decoding, labels) if index else []
            if variants:  # "Disease@ncbi_disease" is a Disease
                found = [(start, end, variants.get(label, label), score) for start, end, label, score in found]
            self.set_annotations(doc, index, found, windows, blocks)

    def thresholds(self):
        """The decoding threshold of each label, in the model's label order (one number
        when no label has its own)."""
        labels = self.model.labels if self.model is not None else self.labels
        return label_thresholds(labels, self.cfg["threshold"], self.cfg.get("label_thresholds"))

    def set_annotations(self, doc: Doc, index: list[int], found, n_windows: int, n_blocks: int = 1) -> None:
        spans, scores = [], []
        for start, end, label, score in found:
            span = Span(doc, index[start], index[end - 1] + 1, label=label)
            span._.score = score
            spans.append(span)
            scores.append(score)
        group = SpanGroup(doc, name=self.cfg["spans_key"], spans=spans, attrs={"scores": scores})
        doc.spans[self.cfg["spans_key"]] = group
        doc.ents = filter_spans(spans)
        # How the document was seen: subword windows (size, stride) inside word blocks.
        doc._.ner_windows = {"windows": n_windows, "window": self.spec.window, "stride": self.spec.stride,
                             "blocks": n_blocks, "block_words": self.spec.block_words}

    def score(self, examples, **kwargs):
        return Scorer.score_spans(examples, "ents", **kwargs)

    def to_disk(self, path, *, exclude=tuple()) -> None:
        self._require_model()
        if getattr(self.model, "backend", "torch") != "torch":
            raise ValueError(f"component {self.name!r} runs on backend {self.model.backend!r}; save it from a model "
                             "loaded on the torch backend")
        path = Path(path)
        (path / "encoder").mkdir(parents=True, exist_ok=True)
        self.model.encoder.transformer.config.save_pretrained(path / "encoder")
        self.model.encoder.tokenizer.save_pretrained(path / "encoder")
        # transformers pretty-prints tokenizer.json; compact JSON is half the size on disk.
        tokenizer_json = path / "encoder" / "tokenizer.json"
        if tokenizer_json.exists():
            tokenizer_json.write_text(json.dumps(json.loads(tokenizer_json.read_text()), ensure_ascii=False, separators=(",", ":")))
        (path / "cfg.json").write_text(json.dumps(
            {**self.cfg, "architecture": self.spec.architecture, "spec": asdict(self.spec)}, indent=2))
        save_weights(self.model.state_dict(), path / "model.safetensors", self.cfg["storage"])

    def from_disk(self, path, *, exclude=tuple()):
        path = Path(path)
        cfg_path = path / "cfg.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"pipeline component file missing: {cfg_path}")
        try:
            saved = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{cfg_path} is not valid JSON: {error}") from None
        architecture = saved.pop("architecture", self.default_architecture)
        if architecture not in self.specs:
            raise ValueError(f"{cfg_path}: unknown architecture {architecture!r}; known: {sorted(self.specs)}")
        configured = self.spec  # built from config.cfg and spacy.load's config overrides
        self.spec = self.specs[architecture](**saved.pop("spec"))
        if type(configured) is type(self.spec):
            # How documents are windowed is an inference setting, like the backend: the
            # config decides, so spacy.load(path, config={"components.ner.model.stride": 192}) works.
            self.spec = replace(self.spec, **{key: getattr(configured, key) for key in WINDOW_SETTINGS})
        self.cfg.update(saved)
        transformer, tokenizer = self.encoder_from_directory(path / "encoder")
        self.set_model(transformer, tokenizer)
        state = load_weights(path / "model.safetensors")
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [name for name in missing if not name.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"{path / 'model.safetensors'} does not match the model: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.model.eval()
        if self.backend != "torch":
            from ner.kernels import apply_backend

            apply_backend(self.model, self.backend)
        return self

    @staticmethod
    def encoder_from_directory(path):
        """(transformer, tokenizer) of a saved encoder directory."""
        return load_from_directory(path)

    def _require_model(self) -> None:
        if self.model is None:
            raise ValueError(f"component {self.name!r} has no model: initialise it or load it from disk")
