"""Training the ``zero_shot`` pipeline from a recipe (``training/zero-shot.toml``).

    python -m ner.training.zero_shot_loop training/zero-shot.toml [-o DIR] [--epochs N] [--limit N]

The mixture (``training/zero_shot_data.py``) is cut into segments that fit one encoder
window next to their label prompt; each epoch's batches and label lists are fixed by the
seed (``epoch_plan``), so the ``gliner`` peer (``training/zero_shot_peer.py``) trains on
exactly the same data. Model selection and the decoding threshold use a dev carve of the
mixture; the held-out datasets (``[[data.heldout]]``) are scored only at the end, with
their labels given as natural-language names, and the scores go to ``zero_shot.json``
beside the weights. ``training.json`` records every evaluation.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import torch

from ner.evaluation import Scores
from ner.loading import write_checksums
from ner.spans import char_spans_to_word_spans
from ner.zero_shot import label_groups
from ner.training.loop import export_pipeline, linear_schedule, optimizer_step, read_recipe
from ner.training.zero_shot_data import (
    Item,
    LabelSampler,
    Source,
    carve_dev,
    check_held_out,
    dev_items,
    epoch_plan,
    load_examples,
    natural_name,
    read_sources,
)

THRESHOLDS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def most_used_pieces(tokenizer, word_lists, size: int) -> list[int]:
    """The ``size`` pieces the words use most (each distinct word tokenised once), plus
    the special tokens: the vocabulary a trimmed encoder keeps."""
    words = Counter(word for words in word_lists for word in words)
    pieces = Counter()
    for word, n in words.items():
        for piece in tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]:
            pieces[piece] += n
    return sorted(set(tokenizer.all_special_ids) | {piece for piece, _ in pieces.most_common(size)})


def pretrained_encoder(recipe: dict, word_lists):
    """(transformer, tokenizer) the recipe starts from: its vocabulary trimmed
    (``trim_vocabulary``) to the ``vocabulary_size`` pieces that ``word_lists`` (the
    mixture and the label names) use most, its layers cut to ``layers`` when given. The
    ``gliner`` peer starts from the same one."""
    from ner.encoders import load_pretrained

    encoder = recipe["encoder"]
    transformer, tokenizer = load_pretrained(encoder["name"])
    if encoder.get("trim_vocabulary"):
        from ner.e5_converter import trim_vocabulary

        keep = most_used_pieces(tokenizer, word_lists, encoder.get("vocabulary_size", 15_000))
        transformer, tokenizer = trim_vocabulary(transformer, tokenizer, keep)
    if encoder.get("layers"):
        transformer.encoder.layer = transformer.encoder.layer[: encoder["layers"]]
        transformer.config.num_hidden_layers = encoder["layers"]
    return transformer, tokenizer


def build_pipeline(recipe: dict, transformer, tokenizer):
    """A blank spaCy pipeline with an untrained ``zero_shot`` component over
    (transformer, tokenizer)."""
    import spacy

    pipeline, model, encoder = recipe["pipeline"], recipe.get("model", {}), recipe["encoder"]
    nlp = spacy.blank(pipeline.get("lang", "xx"))
    nlp.meta.update({"name": pipeline["name"], "version": pipeline.get("version", "0.1.0"),
                     "description": pipeline.get("description", ""), "license": pipeline.get("license", ""),
                     "sources": [{"name": table["dataset"]} for table in recipe["data"]["train"]]})
    component = nlp.add_pipe("zero_shot", config={
        "labels": pipeline.get("labels", []),
        "threshold": pipeline.get("threshold", 0.5),
        "decoding": pipeline.get("decoding", "flat"),
        "storage": recipe.get("output", {}).get("storage", "fp32"),
        "model": {"@architectures": "ner_suite.ZeroShotModel.v1", "encoder": encoder["name"], **model},
    })
    component.set_model(transformer, tokenizer)
    if encoder.get("freeze_embeddings"):
        component.model.encoder.transformer.get_input_embeddings().weight.requires_grad_(False)
    return nlp, component


def trained_pipeline(recipe: dict):
    """A trained zero-shot pipeline (``[encoder] init``) to go on training: its encoder,
    vocabulary and head, on the fp32 reference; the recipe's storage for what it saves."""
    from ner.loading import load

    nlp = load(recipe["encoder"]["init"])
    component = nlp.get_pipe("zero_shot")
    component.cfg["storage"] = recipe.get("output", {}).get("storage", component.cfg["storage"])
    nlp.meta["sources"] = [{"name": table["dataset"]} for table in recipe["data"]["train"]]
    if recipe["encoder"].get("freeze_embeddings"):
        component.model.encoder.transformer.get_input_embeddings().weight.requires_grad_(False)
    return nlp, component


# --------------------------------------------------------------------------- scoring


def item_scores(model, items: list[Item], thresholds=THRESHOLDS, decoding="flat", batch_size=16) -> dict:
    """Scores at each threshold of items that each carry their own label list (one
    prediction pass)."""
    scores = {t: Scores() for t in thresholds}
    order = sorted(range(len(items)), key=lambda i: len(items[i].words))
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[start : start + batch_size]]
        with torch.inference_mode():
            logits, mask, _, _ = model([item.words for item in chunk], [item.labels for item in chunk])
            probs = (torch.sigmoid(logits.float()) * mask[..., None]).numpy()
        for item, item_probs in zip(chunk, probs):
            gold = [span for span in item.spans if span[2] in item.labels]
            array = item_probs[: len(item.words), :, : len(item.labels)]
            for t in thresholds:
                found = model.decode(array, item.labels, t, decoding) if item.words else []
                scores[t].add(gold, [(s, e, label) for s, e, label, _ in found])
    return scores


def held_out_records(source: Source, limit: int | None = None):
    """A held-out dataset's records and its label map (dataset label → prompt)."""
    from ner.datasets import dataset_info, load_dataset

    labels = source.labels or {label: natural_name(label) for label in dataset_info(source.dataset)["labels"]}
    cap = min(c for c in (source.cap, limit) if c is not None) if (source.cap or limit) else None
    records = []
    for index, record in enumerate(load_dataset(source.dataset, source.split)):
        if cap is not None and index >= cap:
            break
        records.append(record)
    return records, labels


def held_out_scores(component, records, labels: dict[str, str], thresholds=THRESHOLDS, batch_size=16) -> dict:
    """Zero-shot scores of a ``zero_shot`` component on one dataset at each threshold:
    the model reads the natural-language prompts, entities carry the dataset's labels."""
    model = component.model
    names, prompts = list(labels), list(labels.values())
    scores = {t: Scores() for t in thresholds}
    records = sorted(records, key=lambda r: len(r.tokens))
    model.eval()
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        with torch.inference_mode():
            probs, _, _ = model.predict([r.words for r in chunk], prompts)
        for record, record_probs in zip(chunk, probs):
            gold = [s for s in char_spans_to_word_spans(record.tokens, record.spans) if s[2] in labels]
            for t in thresholds:
                found = model.decode(record_probs, names, t, component.cfg["decoding"]) if record.tokens else []
                scores[t].add(gold, [(s, e, label) for s, e, label, _ in found])
    return scores


def summarise(scores_by_dataset: dict[str, Scores]) -> dict:
    per_dataset = {name: {k: round(v, 4) if isinstance(v, float) else v for k, v in s.micro.items()}
                   for name, s in scores_by_dataset.items()}
    average = sum(s["f1"] for s in per_dataset.values()) / max(len(per_dataset), 1)
    return {"average_f1": round(average, 4), "datasets": per_dataset}


# --------------------------------------------------------------------------- the mixture


def prepare_mixture(recipe: dict, limit=None, log=print):
    """(train examples, dev examples, train sources, held-out sources, word lists for the
    vocabulary) of a recipe. Segments are cut with the pretrained tokenizer's piece
    counts (a trimmed tokenizer may split a rare word into more pieces; the window's
    margin absorbs it)."""
    from ner.encoders import load_pretrained

    data, settings = recipe["data"], recipe["training"]
    train_sources, heldout = read_sources(data["train"]), read_sources(data.get("heldout", []))
    check_held_out(train_sources, heldout)
    if recipe["encoder"].get("init"):  # a later stage counts pieces with the trained pipeline's own tokenizer
        from transformers import AutoTokenizer

        from ner.loading import pipeline_path

        tokenizer = AutoTokenizer.from_pretrained(pipeline_path(recipe["encoder"]["init"]) / "zero_shot" / "encoder")
    else:
        _, tokenizer = load_pretrained(recipe["encoder"]["name"])
    cache: dict[str, int] = {}

    def count(word: str) -> int:
        if word not in cache:
            cache[word] = len(tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]) or 1
        return cache[word]

    examples = []
    for source in train_sources:
        loaded = load_examples(source, count, settings.get("segment_subwords", 150), limit)
        log(f"{source.name}: {len(loaded)} segments")
        examples += loaded
    train_examples, dev_examples = carve_dev(examples, data.get("dev_fraction", 0.05))
    if data.get("dev_cap"):
        dev_examples = random.Random(0).sample(dev_examples, min(data["dev_cap"], len(dev_examples)))
    label_names = {label for e in examples for _, _, label in e.spans}
    label_names |= {label for source in train_sources + heldout for label in (source.labels or {}).values()}
    word_lists = [e.words for e in examples] + [label.split() for label in sorted(label_names)]
    return train_examples, dev_examples, train_sources, heldout, word_lists


def prompt_fits(recipe: dict, tokenizer):
    """Whether a label list fits one label group of the recipe's model (its prompt within
    ``prompt_subwords``, at most ``labels_per_group`` labels), counted with ``tokenizer``:
    the test the label sampler applies, the same for this suite's model and the peer."""
    model = recipe.get("model", {})
    lowercase = model.get("lowercase_prompts", True)
    per_group, budget = model.get("labels_per_group", 25), model.get("prompt_subwords", 128)

    def pieces(label: str) -> int:
        label = label.lower() if lowercase else label
        return len(tokenizer([label], is_split_into_words=True, add_special_tokens=False)["input_ids"]) or 1

    return lambda labels: len(label_groups(labels, pieces, per_group, budget)) == 1


def make_sampler(recipe: dict, examples, fits) -> LabelSampler:
    settings = recipe["training"]
    return LabelSampler(examples, max_labels=settings.get("max_labels", 25),
                        negatives_per_positive=settings.get("negatives_per_positive", 1.0),
                        min_negatives=settings.get("min_negatives", 3), max_negatives=settings.get("max_negatives", 15),
                        fits=fits)


# --------------------------------------------------------------------------- training


def train(recipe_path, *, output=None, epochs=None, limit=None, log=print) -> dict:
    recipe = read_recipe(recipe_path)
    settings = recipe["training"]
    seed = settings.get("seed", 0)
    random.seed(seed)
    torch.manual_seed(seed)
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])

    train_examples, dev_examples, sources, heldout, word_lists = prepare_mixture(recipe, limit, log)
    if recipe["encoder"].get("init"):  # go on training a trained zero-shot pipeline
        nlp, component = trained_pipeline(recipe)
    else:
        nlp, component = build_pipeline(recipe, *pretrained_encoder(recipe, word_lists))
    model = component.model
    sampler = make_sampler(recipe, train_examples, prompt_fits(recipe, model.encoder.tokenizer))
    dev = dev_items(dev_examples, sampler, seed)
    weights = {source.name: source.weight for source in sources}
    log(f"{len(train_examples)} train segments, {len(dev)} dev segments, {len(sampler.pool)} open types")

    epochs = epochs or settings.get("epochs", 3)
    batch_words = settings.get("batch_words", 1200)
    steps_per_epoch = len(epoch_plan(train_examples, sampler, weights, batch_words, seed, 1))
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": settings.get("learning_rate", 5e-5)},
        {"params": list(model.head.parameters()), "lr": settings.get("head_learning_rate", 5e-4)},
    ], weight_decay=settings.get("weight_decay", 0.01))
    schedule = linear_schedule(optimizer, total, int(total * settings.get("warmup", 0.06)))
    output = Path(output or recipe["output"]["path"])
    output.mkdir(parents=True, exist_ok=True)
    eval_every = settings.get("eval_every", steps_per_epoch)
    deadline = time.time() + 60 * settings["max_minutes"] if settings.get("max_minutes") else None
    history, best, step, started = [], -1.0, 0, time.time()
    log(f"{steps_per_epoch} steps per epoch, {total} in all; evaluating every {eval_every}")

    def evaluate_and_keep(epoch):
        nonlocal best
        scores = item_scores(model, dev, decoding=component.cfg["decoding"])
        threshold = max(scores, key=lambda t: scores[t].micro["f1"])
        entry = {"step": step, "epoch": epoch, "loss": round(running / max(counted, 1), 5),
                 "dev_f1": round(scores[threshold].micro["f1"], 4), "threshold": threshold,
                 "dev_f1_at_0.5": round(scores[0.5].micro["f1"], 4), "minutes": round((time.time() - started) / 60, 1)}
        history.append(entry)
        log(json.dumps(entry))
        if entry["dev_f1"] > best:
            best = entry["dev_f1"]
            component.cfg["threshold"] = threshold
            export_pipeline(nlp, output)
            log(f"saved best so far to {output}")
        (output / "training.json").write_text(json.dumps({"recipe": recipe, "evaluations": history}, indent=2))
        if best >= 0:
            write_checksums(output)  # training.json changed after the export
        model.train()

    stop = False
    first = settings.get("first_epoch", 1)  # a later stage goes on with the next epochs' sampled labels and batches
    for epoch in range(first, first + epochs):
        model.train()
        running, counted = 0.0, 0
        for batch in epoch_plan(train_examples, sampler, weights, batch_words, seed, epoch):
            loss = model.loss([i.words for i in batch], [i.spans for i in batch], [i.labels for i in batch])
            running += optimizer_step(model, optimizer, schedule, loss)
            counted += 1
            step += 1
            if step % settings.get("log_every", 50) == 0:
                log(f"step {step}/{total} loss {running / counted:.4f} ({(time.time() - started) / step:.1f} s/step)")
            if step % eval_every == 0:
                evaluate_and_keep(epoch)
                running, counted = 0.0, 0
            if deadline is not None and time.time() > deadline:
                log(f"max_minutes reached at step {step}")
                stop = True
                break
        if stop or step % eval_every:
            evaluate_and_keep(epoch)
        if stop:
            break

    report = zero_shot_report(output, heldout, limit, log)
    return {"best_dev_f1": best, "evaluations": history, "output": str(output), "zero_shot": report}


def zero_shot_report(pipeline_path, heldout: list[Source], limit=None, log=print) -> dict:
    """Score the saved pipeline on each held-out dataset at its dev-tuned threshold and at
    0.5; write ``zero_shot.json`` beside it."""
    import spacy

    nlp = spacy.load(pipeline_path)
    component = nlp.get_pipe("zero_shot")
    score = lambda records, labels, thresholds: held_out_scores(component, records, labels, thresholds=thresholds)
    report = held_out_report(score, component.cfg["threshold"], heldout, pipeline_path, limit, log)
    log(f"held-out average F1 {100 * report['at_threshold']['average_f1']:.2f}")
    return report


def held_out_report(score, tuned: float, heldout: list[Source], directory, limit=None, log=print, name="") -> dict:
    """Scores on each held-out dataset at the dev-tuned threshold and at 0.5, from
    ``score(records, labels, thresholds) → {threshold: Scores}``; written to
    ``zero_shot.json`` in ``directory``."""
    at_tuned, at_half = {}, {}
    for source in heldout:
        records, labels = held_out_records(source, limit)
        scores = score(records, labels, sorted({tuned, 0.5}))
        at_tuned[source.name], at_half[source.name] = scores[tuned], scores[0.5]
        log(f"{name}{source.name}: F1 {100 * scores[tuned].micro['f1']:.2f} at {tuned}, "
            f"{100 * scores[0.5].micro['f1']:.2f} at 0.5")
    report = {"threshold": tuned, "at_threshold": summarise(at_tuned), "at_0.5": summarise(at_half)}
    Path(directory, "zero_shot.json").write_text(json.dumps(report, indent=2))
    if Path(directory, "checksums.sha256").is_file():
        write_checksums(directory)  # the pipeline directory must still pass its own check
    return report


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="train the zero_shot pipeline a recipe describes")
    parser.add_argument("recipe")
    parser.add_argument("-o", "--output", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="records per source (smoke runs)")
    args = parser.parse_args(argv)
    result = train(args.recipe, output=args.output, epochs=args.epochs, limit=args.limit)
    print(f"best dev F1 {100 * result['best_dev_f1']:.2f}; held-out average F1 "
          f"{100 * result['zero_shot']['at_threshold']['average_f1']:.2f}; pipeline saved to {result['output']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
