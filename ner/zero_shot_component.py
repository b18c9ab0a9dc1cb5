"""The spaCy component ``zero_shot``: entities of any types named at call time.

    nlp = ner.load("zero-shot")
    doc = nlp(text, component_cfg={"zero_shot": {"labels": ["person", "disease"], "threshold": 0.5}})
    docs = nlp.pipe(texts, component_cfg={"zero_shot": {"labels": ["drug"]}})

The labels of ``doc.ents`` are exactly the strings asked for. ``labels`` may also be a
dict {label: prompt}: the prompt (e.g. a longer description) is what the model reads, the
key is what ``doc.ents`` gets; as a string, "PER=person,LOC=location" says the same
(what ``ner tag --labels`` passes). Labels given in the config (``labels = [...]``) are the
default when a call names none. Everything else is as for ``span_ner`` (which this
component extends): ``doc.spans[spans_key]`` with ``attrs["scores"]``, ``span._.score``,
``doc._.ner_windows``, long documents windowed, ``nlp.pipe`` sorted and batched.

A checkpoint saved by the ``gliner`` library loads into this component with
``ner.gliner_checkpoint.load_gliner_checkpoint``.
"""
from __future__ import annotations

import torch
from spacy.language import Language

from ner.components import SpanNER
from ner.zero_shot import PromptEncoder, ZeroShotSpec, add_prompt_tokens

SPECS = {ZeroShotSpec.architecture: ZeroShotSpec}


@Language.factory(
    "zero_shot",
    assigns=["doc.ents", "doc.spans"],
    default_config={
        "model": {"@architectures": "ner_suite.ZeroShotModel.v1"},
        "labels": [],
        "threshold": 0.5,
        "spans_key": "ner",
        "decoding": "flat",
        "batch_size": 16,
        "storage": "fp32",
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_zero_shot(nlp, name, model: ZeroShotSpec, labels: list[str], threshold: float, spans_key: str,
                   decoding: str, batch_size: int, storage: str):
    return ZeroShotNER(nlp.vocab, model, name, labels=labels, threshold=threshold, spans_key=spans_key,
                       decoding=decoding, batch_size=batch_size, storage=storage)


class ZeroShotNER(SpanNER):
    """``SpanNER`` whose labels are an input, not an output layer: ``labels`` in the
    config are only the default for calls that name none."""

    specs = SPECS
    default_architecture = None  # a zero-shot cfg.json always names its architecture

    @staticmethod
    def encoder_from_directory(path):
        return encoder_from_directory(path)

    def __init__(self, vocab, spec: ZeroShotSpec, name: str = "zero_shot", *, labels=(), threshold=0.5,
                 spans_key="ner", decoding="flat", batch_size=16, storage="fp32"):
        super().__init__(vocab, spec, name, labels=labels, active_labels=None, threshold=threshold,
                         spans_key=spans_key, decoding=decoding, batch_size=batch_size, storage=storage)
        del self.cfg["active_labels"]

    def add_label(self, label: str) -> int:
        """Add a default label (possible at any time: labels are not weights)."""
        if label in self.cfg["labels"]:
            return 0
        self.cfg["labels"].append(label)
        return 1

    def initialize(self, get_examples=None, *, nlp=None, labels=None):
        """Build the model from the pretrained encoder the spec names; ``labels`` (or the
        examples' entity labels) become the default labels."""
        if labels is None and get_examples is not None:
            labels = sorted({ent.label_ for eg in get_examples() for ent in eg.reference.ents})
        if labels:
            self.cfg["labels"] = list(labels)
        from ner.encoders import load_pretrained

        transformer, tokenizer = load_pretrained(self.spec.encoder)
        self.set_model(transformer, tokenizer)

    def set_model(self, transformer, tokenizer) -> None:
        """Build the model over (transformer, tokenizer); the label marker tokens are added
        to both when missing, and a pooling layer (unused, and absent when the pipeline is
        loaded) is dropped."""
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None
        add_prompt_tokens(transformer, tokenizer, self.spec)
        self.model = self.spec.build(PromptEncoder(transformer, tokenizer, self.spec))

    def resolve_labels(self, labels=None) -> tuple[list[str], list[str]]:
        """(labels doc.ents will carry, prompts the model reads) for a call's ``labels``:
        a list of strings, a dict {label: prompt}, or a comma-separated string whose items
        are ``label`` or ``label=prompt`` ("PER=person,LOC=location"); None means the
        configured default labels. Duplicates are dropped, order is kept."""
        if labels is None:
            labels = self.cfg["labels"]
        if isinstance(labels, str):
            items = [item.partition("=") for item in labels.split(",") if item.strip()]
            labels = {label.strip(): (prompt if equals else label).strip() for label, equals, prompt in items}
        pairs = labels.items() if isinstance(labels, dict) else ((label, label) for label in labels)
        chosen: dict[str, str] = {}
        for label, prompt in pairs:
            if not isinstance(label, str) or not isinstance(prompt, str) or not label.strip() or not prompt.strip():
                raise ValueError(f"zero_shot labels must be non-empty strings, got {label!r}: {prompt!r}")
            chosen.setdefault(label, prompt)
        if not chosen:
            raise ValueError(f"component {self.name!r} needs labels: pass component_cfg={{{self.name!r}: "
                             f"{{'labels': [...]}}}} or set labels in its config")
        return list(chosen), list(chosen.values())

    def annotate(self, docs, *, threshold=None, decoding=None, labels=None) -> None:
        threshold = self.cfg["threshold"] if threshold is None else threshold
        decoding = decoding or self.cfg["decoding"]
        names, prompts = self.resolve_labels(labels)
        tokens = [[t.i for t in doc if not t.is_space] for doc in docs]
        words = [[doc[i].text for i in index] for doc, index in zip(docs, tokens)]
        self.model.eval()
        with torch.inference_mode():
            probs, n_windows, n_blocks = self.model.predict(words, prompts)
        for doc, index, doc_probs, windows, blocks in zip(docs, tokens, probs, n_windows, n_blocks):
            found = self.model.decode(doc_probs, names, threshold, decoding) if index else []
            self.set_annotations(doc, index, found, windows, blocks)


def set_default_labels(nlp, labels, threshold: float | None = None) -> int:
    """Make ``labels`` (a list, a comma-separated string or a {label: prompt} dict) the
    default of every ``zero_shot`` component in ``nlp`` (and ``threshold`` its default
    threshold when given), as ``ner tag --labels`` needs; returns how many it changed."""
    changed = 0
    for _, component in nlp.pipeline:
        if isinstance(component, ZeroShotNER):
            names, prompts = component.resolve_labels(labels)
            component.cfg["labels"] = dict(zip(names, prompts)) if names != prompts else names
            if threshold is not None:
                component.cfg["threshold"] = threshold
            changed += 1
    return changed


def encoder_from_directory(path, dtype=torch.float32):
    """(transformer, tokenizer) from a saved encoder directory, architecture only (the
    weights come from the component's safetensors). Unlike ``ner.encoders.
    load_from_directory`` it also builds encoders without a pooling layer option
    (DeBERTa, the usual GLiNER backbone)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    try:
        model = AutoModel.from_config(config, dtype=dtype, add_pooling_layer=False)
    except TypeError:  # the architecture has no pooling layer to leave out
        model = AutoModel.from_config(config, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(path)
