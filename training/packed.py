"""A training job packed to run where torch is installed but spaCy is not (a lent GPU
machine), with the same model, loss, batches, optimiser and threshold choice as
``ner train``.

``pack`` builds the recipe's model here and writes a job folder: the encoder body (shared
by every job packed from the same encoder, so several jobs travel as one body), the
word-embedding table and the untrained head, the data as words and word spans, and the
subword pieces of every word (the machine needs no tokenizer). ``run`` trains there, keeps
the best epoch on dev, stores it as the pipeline will (so what it scores is what ships),
chooses the decoding threshold on dev and scores every test set. ``unpack`` puts the
trained weights back into a spaCy pipeline here.

    python -m ner.training.packed pack training/en.toml jobs/en
    python -m ner.training.packed run jobs/en results/en --device cuda
    python -m ner.training.packed unpack jobs/en results/en runs/en-gpu
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import time
from pathlib import Path

import torch

from ner.evaluation import model_threshold_scores
from ner.spans import char_spans_to_word_spans
from ner.training.batches import Segment, length_batches, make_segments
from ner.training.loop import DEV_THRESHOLDS, make_optimizer, read_recipe, recipe_records, train_epoch
from ner.weights import file_sha256, load_weights, save_weights

EMBEDDINGS = "encoder.transformer.embeddings.word_embeddings.weight"


def _items(records) -> list:
    """``[words, word spans, annotated labels]`` of each record: what scoring needs."""
    return [[r.words, [list(s) for s in char_spans_to_word_spans(r.tokens, r.spans)], r.labels] for r in records]


def pack(recipe_path, job_dir, *, limit: int | None = None, log=print) -> Path:
    from ner.training.loop import build_pipeline

    recipe = read_recipe(recipe_path)
    train_records = recipe_records(recipe, "train", limit)
    dev_records = recipe_records(recipe, "dev", limit)
    tests = {name: recipe_records(recipe, "test", limit, names=[name]) for name in recipe["data"].get("test", [])}
    _, component = build_pipeline(recipe, train_records, dev_records)
    model, encoder = component.model, component.model.encoder
    settings = recipe["training"]
    count = lambda word: len(encoder.word_pieces(word))
    segments = [s for r in train_records for s in make_segments(r, count, settings.get("segment_subwords", 200))]
    words = {w for r in [*train_records, *dev_records, *(r for rs in tests.values() for r in rs)] for w in r.words}
    data = {
        "pieces": {w: encoder.word_pieces(w) for w in sorted(words)},
        "train": [[s.words, [list(x) for x in s.spans], s.labels] for s in segments],
        "dev": _items(dev_records),
        "test": {name: _items(records) for name, records in tests.items()},
    }
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(job_dir / "data.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False)

    storage = recipe.get("output", {}).get("storage", "fp32")
    state = model.state_dict()
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    body = {k: v for k, v in state.items() if k != EMBEDDINGS and k not in head}
    save_weights({EMBEDDINGS: state[EMBEDDINGS]}, job_dir / "embeddings.safetensors", storage)
    save_weights(head, job_dir / "head.safetensors")
    body_path = job_dir / "body.safetensors"
    save_weights(body, body_path, "int8" if storage.startswith("int8") else storage)
    shared = job_dir.parent / f"body-{file_sha256(body_path)[:12]}.safetensors"
    body_path.replace(shared)  # identical for every job of this encoder: one copy travels

    specials = encoder._special_ids()
    job = {
        "recipe": recipe, "labels": model.labels, "spec": dataclasses.asdict(model.spec),
        "encoder_config": encoder.transformer.config.to_dict(), "body": shared.name,
        "specials": [list(specials[0]), list(specials[1])],
        "pad_id": encoder.tokenizer.pad_token_id or 0, "unk_id": encoder.tokenizer.unk_token_id,
        "storage": storage, "decoding": recipe["pipeline"].get("decoding", "flat"), "limit": limit,
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=1))
    log(f"{job_dir}: {len(segments)} training segments, {len(data['dev'])} dev and "
        f"{sum(len(v) for v in data['test'].values())} test records, {len(data['pieces'])} words tokenised")
    return job_dir


class PieceTable:
    """Stands in for the tokenizer on a machine without one: every word the job uses was
    tokenised when it was packed."""

    def __init__(self, pad_token_id: int, unk_token_id: int):
        self.pad_token_id, self.unk_token_id = pad_token_id, unk_token_id

    def __call__(self, words, **_):
        raise KeyError(f"word {words!r} was not tokenised when the job was packed")


def load_job(job_dir):
    """(job, data, span model with the packed weights) of a job folder, spaCy-free."""
    from transformers import BertConfig, BertModel

    from ner.encoders import WordEncoder
    from ner.span_model import SpanModelSpec

    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    with gzip.open(job_dir / "data.json.gz", "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    config = {k: v for k, v in job["encoder_config"].items() if k not in ("transformers_version", "architectures")}
    transformer = BertModel(BertConfig(**config), add_pooling_layer=False)
    spec = SpanModelSpec(**job["spec"])
    encoder = WordEncoder(transformer, PieceTable(job["pad_id"], job["unk_id"]), spec.window, spec.stride)
    encoder._piece_cache.update(data["pieces"])
    encoder._specials = tuple(job["specials"])
    model = spec.build(encoder, job["labels"])
    state = {**load_weights(job_dir.parent / job["body"]), **load_weights(job_dir / "embeddings.safetensors"),
             **load_weights(job_dir / "head.safetensors")}
    _load_state(model, state)
    return job, data, model


def _load_state(model, state) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _best_threshold(scores) -> float:
    return max(scores, key=lambda t: scores[t].micro["f1"])


def _micro(scores) -> dict:
    return {**scores.micro, "per_label": scores.per_label}


def run(job_dir, result_dir, *, device: str = "cpu", epochs: int | None = None, minutes: float | None = None,
        log=print) -> dict:
    """Train, keep the best dev epoch, store it as the pipeline will, score it. With
    ``minutes``, no epoch is begun that would likely end past that budget (the learning
    rate schedule is then cut short, and the result says so)."""
    begun = time.time()
    job, data, model = load_job(job_dir)
    settings = job["recipe"]["training"]
    seed = settings.get("seed", 0)
    random.seed(seed)
    torch.manual_seed(seed)
    model.to(device)
    precision = torch.bfloat16 if torch.device(device).type == "cuda" else None
    segments = [Segment(w, [tuple(s) for s in spans], labels) for w, spans, labels in data["train"]]
    epochs = epochs or settings.get("epochs", 3)
    rng = random.Random(seed)
    batch_words = settings.get("batch_words", 1500)
    steps = len(length_batches(segments, batch_words, random.Random(seed)))
    optimizer, schedule = make_optimizer(model, settings, steps * epochs)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    history, best, best_state = [], -1.0, None

    def dev_scores():
        with torch.autocast(torch.device(device).type, dtype=precision, enabled=precision is not None):
            return model_threshold_scores(model, data["dev"], DEV_THRESHOLDS, job["decoding"], batch_size=32)

    stopped_early = False
    for epoch in range(1, epochs + 1):
        started = time.time()
        if minutes is not None and history and (started - begun) + history[-1]["seconds"] > 60 * minutes:
            stopped_early = True
            log(f"stopping before epoch {epoch}: the time budget of {minutes} minutes would be passed")
            break
        batches = length_batches(segments, batch_words, rng)
        loss = train_epoch(model, batches, optimizer, schedule, desc=f"epoch {epoch}/{epochs}", precision=precision)
        scores = dev_scores()
        threshold = _best_threshold(scores)
        entry = {"epoch": epoch, "loss": loss, "dev_f1": scores[threshold].micro["f1"], "threshold": threshold,
                 "seconds": round(time.time() - started, 1)}
        history.append(entry)
        log(json.dumps(entry))
        if entry["dev_f1"] > best:
            best = entry["dev_f1"]
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in frozen}

    # Store the best epoch as the pipeline stores it and score exactly that.
    weights = result_dir / "weights.safetensors"
    save_weights(best_state, weights, "int8" if job["storage"].startswith("int8") else job["storage"])
    _load_state_partial(model, load_weights(weights))
    scores = dev_scores()
    threshold = _best_threshold(scores)
    with torch.autocast(torch.device(device).type, dtype=precision, enabled=precision is not None):
        tests = {name: _micro(model_threshold_scores(model, items, [threshold], job["decoding"], batch_size=32)[threshold])
                 for name, items in data["test"].items()}
    result = {"epochs": history, "threshold": threshold, "dev": _micro(scores[threshold]), "test": tests,
              "test_average_f1": sum(t["f1"] for t in tests.values()) / max(len(tests), 1),
              "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else device,
              "frozen": sorted(frozen), "stopped_early": stopped_early}
    (result_dir / "result.json").write_text(json.dumps(result, indent=1))
    for name, t in tests.items():
        log(f"test {name:<28} F1 {100 * t['f1']:.2f}")
    return result


def _load_state_partial(model, state) -> None:
    unexpected = [k for k in state if k not in model.state_dict()]
    if unexpected:
        raise ValueError(f"weights do not match the model: unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)


def unpack(job_dir, result_dir, output, *, log=print) -> Path:
    """The trained job as a spaCy pipeline directory (the recipe's storage, the threshold
    chosen on dev), rebuilt here from the recipe and the returned weights."""
    from ner.training.loop import build_pipeline, export_pipeline

    job_dir, result_dir = Path(job_dir), Path(result_dir)
    job = json.loads((job_dir / "job.json").read_text())
    result = json.loads((result_dir / "result.json").read_text())
    recipe = job["recipe"]
    limit = job.get("limit")  # the same records, so the same trimmed vocabulary
    nlp, component = build_pipeline(recipe, recipe_records(recipe, "train", limit), recipe_records(recipe, "dev", limit))
    state = {**load_weights(job_dir / "embeddings.safetensors"), **load_weights(result_dir / "weights.safetensors")}
    _load_state(component.model, {**component.model.state_dict(), **state})
    component.cfg["threshold"] = result["threshold"]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "training.json").write_text(json.dumps({"recipe": recipe, "epochs": result["epochs"],
                                                      "packed_run": {k: result[k] for k in ("device", "frozen")}}, indent=2))
    export_pipeline(nlp, output)
    log(f"pipeline saved to {output} (threshold {result['threshold']})")
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ner.training.packed", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="build the model and write a job folder")
    p.add_argument("recipe")
    p.add_argument("job_dir")
    p.add_argument("--limit", type=int, help="first N records of each split (smoke runs)")
    r = verbs.add_parser("run", help="train a job folder (no spaCy needed)")
    r.add_argument("job_dir")
    r.add_argument("result_dir")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--epochs", type=int)
    r.add_argument("--minutes", type=float, help="begin no epoch that would end past this budget")
    u = verbs.add_parser("unpack", help="the trained job as a spaCy pipeline")
    u.add_argument("job_dir")
    u.add_argument("result_dir")
    u.add_argument("output")
    args = parser.parse_args(argv)
    if args.verb == "pack":
        pack(args.recipe, args.job_dir, limit=args.limit)
    elif args.verb == "run":
        run(args.job_dir, args.result_dir, device=args.device, epochs=args.epochs, minutes=args.minutes)
    else:
        unpack(args.job_dir, args.result_dir, args.output)


if __name__ == "__main__":
    main()
