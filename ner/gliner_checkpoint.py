"""Checkpoints saved by the ``gliner`` library, run as this suite's ``zero_shot`` component.

``GLiNER.save_pretrained(directory)`` writes ``gliner_config.json`` (the GLiNER settings,
with the encoder's own config nested under ``encoder_config``), the weights as
``model.safetensors`` (``safe_serialization=True``) or ``pytorch_model.bin``, and the
tokenizer files (with the ``<<ENT>>``/``<<SEP>>`` tokens it added). This module reads that
layout itself (the ``gliner`` package is not needed), checks that the checkpoint is a
uni-encoder span model whose parts this suite has (``markerV0`` spans, optional LSTM,
first-subword pooling, label vector at the ``<<ENT>>`` marker), renames the weights onto
``ner.zero_shot.ZeroShotModel`` and builds a spaCy pipeline around them. Nothing is
fetched from a network; pickled weights are read with ``weights_only=True``.

Differences from running the checkpoint in ``gliner`` itself: texts longer than a window
are windowed with the label prompt in every window instead of being truncated at
``max_len`` words, and more labels than ``max_types`` are run in groups.

    nlp = load_gliner_checkpoint("path/to/saved", labels=["person", "disease"])
    ner gliner-import path/to/saved pipelines/my-gliner      # the same, saved as a pipeline
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

CONFIG_FILE = "gliner_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# GLiNER state-dict prefixes → ZeroShotModel's.
RENAMES = (
    ("token_rep_layer.bert_layer.model.", "encoder.transformer."),
    ("token_rep_layer.projection.", "head.projection."),
    ("rnn.lstm.", "head.rnn.lstm."),
    ("span_rep_layer.span_rep_layer.", "head.spans."),
    ("prompt_rep_layer.", "head.label_projection."),
)
# Encoder tensors with no counterpart here: the pooler (unused by GLiNER) and buffers
# that transformers rebuilds itself.
IGNORED = (".pooler.", "position_ids", "token_type_ids")


class CheckpointError(ValueError):
    """A GLiNER checkpoint that cannot be read or is of a kind this suite cannot run."""


def read_gliner_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; is this a directory written by GLiNER.save_pretrained?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None


def check_supported(config: dict) -> None:
    """Raise ``CheckpointError`` naming every setting this suite cannot reproduce."""
    problems = []
    for key in ("labels_encoder", "labels_decoder", "relations_layer", "span_encoder_config"):
        if config.get(key):
            problems.append(f"{key}={config[key]!r} (only uni-encoder span models are supported)")
    if config.get("model_type") == "gliner_streaming_span":
        problems.append("model_type='gliner_streaming_span'")
    if config.get("span_mode", "markerV0") != "markerV0":
        problems.append(f"span_mode={config['span_mode']!r} (supported: 'markerV0')")
    if config.get("post_fusion_schema"):
        problems.append(f"post_fusion_schema={config['post_fusion_schema']!r}")
    if config.get("fuse_layers"):
        problems.append("fuse_layers=true")
    if config.get("subtoken_pooling", "first") != "first":
        problems.append(f"subtoken_pooling={config['subtoken_pooling']!r} (supported: 'first')")
    if not config.get("embed_ent_token", True):
        problems.append("embed_ent_token=false")
    if problems:
        raise CheckpointError("unsupported GLiNER checkpoint: " + "; ".join(problems))


def gliner_spec(config: dict, encoder_config):
    """The ``ZeroShotSpec`` that reproduces a GLiNER configuration."""
    from ner.zero_shot import ZeroShotSpec

    positions = getattr(encoder_config, "max_position_embeddings", 512) or 512
    window = min(int(positions), 512)
    return ZeroShotSpec(
        encoder=str(config.get("model_name", "gliner")),
        max_width=int(config.get("max_width", 12)),
        hidden_size=int(config.get("hidden_size", 512)),
        dropout=float(config.get("dropout", 0.4)),
        window=window,
        stride=window // 2,
        span_representation="markerV0",
        rnn_layers=int(config.get("num_rnn_layers", 1)),
        projection_ratio=4,
        score_bias=False,
        labels_per_group=int(config.get("max_types", 25)),
        prompt_subwords=window // 2,
        lowercase_prompts=False,
        label_vector="marker",
        ent_token=config.get("ent_token", "<<ENT>>"),
        sep_token=config.get("sep_token", "<<SEP>>"),
    )


def rename_state(state: dict) -> dict:
    """GLiNER's weight names → ZeroShotModel's; an unknown name is an error."""
    renamed, unknown = {}, []
    for name, tensor in state.items():
        if any(part in name for part in IGNORED):
            continue
        for old, new in RENAMES:
            if name.startswith(old):
                renamed[new + name[len(old):]] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"weights this suite has no place for: {unknown[:5]}")
    return renamed


def read_weights(directory) -> dict:
    """The checkpoint's state dict: safetensors when present (tied tensors that
    ``save_pretrained`` stored once are restored from its metadata), else the pickled
    file, read with ``weights_only=True``."""
    import torch
    from safetensors import safe_open

    directory = Path(directory)
    safetensors_path, pickle_path = (directory / name for name in WEIGHT_FILES)
    if safetensors_path.is_file():
        state = {}
        try:
            with safe_open(str(safetensors_path), framework="pt") as handle:
                aliases = handle.metadata() or {}
                for key in handle.keys():
                    state[key] = handle.get_tensor(key)
        except Exception as error:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{safetensors_path} is damaged or not safetensors: {error}") from None
        for omitted, kept in aliases.items():
            if omitted not in state and kept in state:
                state[omitted] = state[kept]
        return state
    if pickle_path.is_file():
        try:
            return torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{pickle_path} cannot be read as weights only: {error}") from None
    raise CheckpointError(f"{directory}: no {' or '.join(WEIGHT_FILES)}")


def build_encoder(config: dict, directory, state: dict):
    """(transformer with random weights, tokenizer) shaped as the checkpoint's encoder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    directory = Path(directory)
    encoder_config = config.get("encoder_config")
    try:
        if encoder_config:
            encoder_config = dict(encoder_config)
            encoder_config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
        else:
            encoder_config = AutoConfig.from_pretrained(config["model_name"], local_files_only=True)
    except (KeyError, OSError, ValueError) as error:
        raise CheckpointError(f"{directory}: cannot build the encoder ({error}); the checkpoint carries no "
                              f"encoder_config and its model_name is not available offline") from None
    embeddings = state.get("token_rep_layer.bert_layer.model.embeddings.word_embeddings.weight")
    if embeddings is not None:
        encoder_config.vocab_size = embeddings.shape[0]
    try:
        transformer = AutoModel.from_config(encoder_config, add_pooling_layer=False)
    except TypeError:  # the architecture has no pooling layer to leave out
        transformer = AutoModel.from_config(encoder_config)
    source = directory if (directory / "tokenizer_config.json").is_file() else config.get("model_name")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{directory}: no usable tokenizer ({error})") from None
    ent_token = config.get("ent_token", "<<ENT>>")
    class_index = config.get("class_token_index", -1)
    if class_index not in (-1, None) and tokenizer.convert_tokens_to_ids(ent_token) != class_index:
        raise CheckpointError(f"{directory}: the tokenizer's id for {ent_token!r} is "
                              f"{tokenizer.convert_tokens_to_ids(ent_token)}, the config says {class_index}")
    return transformer, tokenizer


def load_gliner_checkpoint(directory, *, nlp=None, name: str = "zero_shot", labels=(), threshold: float = 0.5,
                           lang: str = "xx", storage: str = "fp32"):
    """A spaCy pipeline (``nlp`` if given, else a blank ``lang`` one) with a ``zero_shot``
    component that runs the GLiNER checkpoint saved in ``directory``."""
    import spacy

    config = read_gliner_config(directory)
    check_supported(config)
    state = read_weights(directory)
    transformer, tokenizer = build_encoder(config, directory, state)
    spec = gliner_spec(config, transformer.config)
    nlp = nlp if nlp is not None else spacy.blank(lang)
    component = nlp.add_pipe("zero_shot", name=name, config={
        "labels": list(labels), "threshold": threshold, "storage": storage,
        "model": {"@architectures": "ner_suite.ZeroShotModel.v1", **asdict(spec)},
    })
    component.set_model(transformer, tokenizer)
    missing, unexpected = component.model.load_state_dict(rename_state(state), strict=False)
    missing = [key for key in missing if not key.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise CheckpointError(f"{directory}: the weights do not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    component.model.eval()
    nlp.meta.setdefault("sources", []).append({"name": f"GLiNER checkpoint {config.get('name', 'gliner')}",
                                               "url": str(Path(directory).resolve())})
    return nlp


# --------------------------------------------------------------------------- ner gliner-import


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="directory written by GLiNER.save_pretrained")
    parser.add_argument("output", help="spaCy pipeline directory to write")
    parser.add_argument("--labels", default="", help="comma-separated default labels")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--storage", choices=["fp32", "fp16", "int8"], default="fp32")


def run(args) -> int:
    import sys

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    try:
        nlp = load_gliner_checkpoint(args.checkpoint, labels=labels, threshold=args.threshold, storage=args.storage)
    except CheckpointError as error:
        print(f"ner gliner-import: {error}", file=sys.stderr)
        return 2
    nlp.to_disk(args.output)
    print(f"saved a zero_shot pipeline to {args.output}", file=sys.stderr)
    return 0
