"""The peer for the zero-shot pipeline: the ``gliner`` library's own uni-encoder span model
trained on the same mixture from the same encoder, and scored on the same held-out data.

    python -m ner.training.zero_shot_peer training/zero-shot.toml [-o DIR] [--epochs N] [--limit N]

Same as ``training/zero_shot_loop.py``: the trimmed encoder (``pretrained_encoder``), the
segments, each epoch's batches and label lists (``epoch_plan`` with the recipe's seed),
the optimiser (AdamW, encoder and head learning rates from ``[peer]``), the linear
schedule, gradient clipping, the dev carve and threshold choice, the held-out datasets
and their label prompts. GLiNER's own: its model (``[peer]``: markerV0 spans, LSTM, its
``<<ENT>>`` marker vectors, its token embeddings for the added tokens), its collator and
loss (binary cross-entropy summed, as ``GLiNER.create_training_args`` defaults), and its
inference, which sees exactly the dataset's words (a space splitter replaces its regex
one). The trained model is saved with ``save_pretrained`` (safetensors) and its scores go
to ``zero_shot.json`` beside it, in the same form as the suite's.

Needs ``pip install --no-deps gliner==0.2.29`` (its other requirements are the suite's).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from ner.evaluation import Scores
from ner.spans import char_spans_to_word_spans
from ner.training.loop import linear_schedule, read_recipe
from ner.training.zero_shot_data import Item, dev_items, epoch_plan
from ner.training.zero_shot_loop import (
    THRESHOLDS,
    held_out_records,
    held_out_report,
    held_out_scores,
    item_scores,
    make_sampler,
    prepare_mixture,
    pretrained_encoder,
    prompt_fits,
    summarise,
)


class SpaceSplitter:
    """GLiNER's word splitter interface over text whose words are joined by single spaces,
    so GLiNER sees exactly the dataset's words."""

    def __call__(self, text: str):
        start = 0
        for word in text.split(" "):
            if word:
                yield word, start, start + len(word)
            start += len(word) + 1


def joined(words: list[str]) -> tuple[str, dict[int, int], dict[int, int]]:
    """Text of the words joined by spaces (inner whitespace replaced) and the maps from
    a word's start and end character to its index."""
    words = ["_".join(word.split()) or "_" for word in words]
    starts, ends, offset = {}, {}, 0
    for i, word in enumerate(words):
        starts[offset], ends[offset + len(word)] = i, i
        offset += len(word) + 1
    return " ".join(words), starts, ends


def build_gliner(recipe: dict, transformer, tokenizer, directory: Path):
    """A fresh GLiNER model over (transformer, tokenizer), saved first as a local encoder."""
    from gliner import GLiNER, GLiNERConfig

    encoder_dir = directory / "encoder"
    transformer.save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    model, peer = recipe.get("model", {}), recipe.get("peer", {})
    config = GLiNERConfig(model_name=str(encoder_dir), max_width=model.get("max_width", 12),
                          hidden_size=model.get("hidden_size", 384), dropout=model.get("dropout", 0.1),
                          span_mode=peer.get("span_mode", "markerV0"), num_rnn_layers=peer.get("num_rnn_layers", 1),
                          max_types=recipe["training"].get("max_labels", 25), max_len=peer.get("max_len", 384))
    gliner = GLiNER.from_config(config, backbone_from_pretrained=True, local_files_only=True)
    gliner.data_processor.words_splitter = SpaceSplitter()
    return gliner


def gliner_batch_loss(gliner, collator, batch: list[Item], loss_options: dict) -> torch.Tensor:
    max_width = gliner.config.max_width
    examples = [{"tokenized_text": item.words,
                 "ner": [[s, e - 1, label] for s, e, label in item.spans if e - s <= max_width and label in item.labels]}
                for item in batch]
    inputs = collator(examples, entity_types=[item.labels for item in batch])
    return gliner.model(**inputs, **loss_options).loss


def predicted_spans(gliner, word_lists, label_lists, threshold: float, batch_size: int = 8):
    """Flat entities (start, end_exclusive, label, score) per word list at ``threshold``."""
    found = []
    for start in range(0, len(word_lists), batch_size):
        chunk = word_lists[start : start + batch_size]
        texts = [joined(words) for words in chunk]
        with torch.inference_mode():
            entities = gliner.inference([text for text, _, _ in texts], label_lists[start : start + batch_size],
                                        flat_ner=True, threshold=threshold, batch_size=batch_size)
        for (_, starts, ends), doc in zip(texts, entities):
            found.append([(starts[e["start"]], ends[e["end"]] + 1, e["label"], e["score"]) for e in doc])
    return found


def scores_at(found, golds, thresholds) -> dict:
    """Greedy flat decoding keeps, at a higher threshold, exactly the spans it kept at a
    lower one that score above it: one pass at the lowest threshold serves them all."""
    scores = {t: Scores() for t in thresholds}
    for spans, gold in zip(found, golds):
        for t in thresholds:
            scores[t].add(gold, [(s, e, label) for s, e, label, score in spans if score >= t])
    return scores


def peer_item_scores(gliner, items: list[Item], thresholds=THRESHOLDS) -> dict:
    found = predicted_spans(gliner, [i.words for i in items], [i.labels for i in items], min(thresholds))
    golds = [[s for s in i.spans if s[2] in i.labels] for i in items]
    return scores_at(found, golds, thresholds)


def peer_held_out_scores(gliner, records, labels: dict[str, str], thresholds) -> dict:
    prompts = list(labels.values())
    back = {prompt: label for label, prompt in labels.items()}
    found = predicted_spans(gliner, [r.words for r in records], [prompts] * len(records), min(thresholds))
    found = [[(s, e, back[label], score) for s, e, label, score in spans] for spans in found]
    golds = [[s for s in char_spans_to_word_spans(r.tokens, r.spans) if s[2] in labels] for r in records]
    return scores_at(found, golds, thresholds)


def train_peer(recipe_path, *, output=None, epochs=None, limit=None, log=print) -> dict:
    recipe = read_recipe(recipe_path)
    settings, peer = recipe["training"], recipe.get("peer", {})
    seed = settings.get("seed", 0)
    random.seed(seed)
    torch.manual_seed(seed)
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    train_examples, dev_examples, sources, heldout, word_lists = prepare_mixture(recipe, limit, log)
    transformer, tokenizer = pretrained_encoder(recipe, word_lists)
    sampler = make_sampler(recipe, train_examples, prompt_fits(recipe, tokenizer))
    dev = dev_items(dev_examples, sampler, seed)
    weights = {source.name: source.weight for source in sources}
    output = Path(output or peer.get("output", "runs/zero-shot-peer"))
    output.mkdir(parents=True, exist_ok=True)
    gliner = build_gliner(recipe, transformer, tokenizer, output)
    collator = gliner.data_collator_class(gliner.config, data_processor=gliner.data_processor, prepare_labels=True)
    loss_options = {"alpha": peer.get("focal_loss_alpha", -1.0), "gamma": peer.get("focal_loss_gamma", 0.0),
                    "reduction": peer.get("loss_reduction", "sum"), "masking": "none"}

    epochs = epochs or settings.get("epochs", 3)
    batch_words = settings.get("batch_words", 1200)
    steps_per_epoch = len(epoch_plan(train_examples, sampler, weights, batch_words, seed, 1))
    total = steps_per_epoch * epochs
    encoder_params = list(gliner.model.token_rep_layer.parameters())
    encoder_ids = {id(p) for p in encoder_params}
    optimizer = torch.optim.AdamW([
        {"params": encoder_params, "lr": peer.get("learning_rate", settings.get("learning_rate", 5e-5))},
        {"params": [p for p in gliner.model.parameters() if id(p) not in encoder_ids],
         "lr": peer.get("head_learning_rate", settings.get("head_learning_rate", 5e-4))},
    ], weight_decay=settings.get("weight_decay", 0.01))
    schedule = linear_schedule(optimizer, total, int(total * settings.get("warmup", 0.06)))
    eval_every = settings.get("eval_every", steps_per_epoch)
    deadline = time.time() + 60 * settings["max_minutes"] if settings.get("max_minutes") else None
    history, best, step, started = [], -1.0, 0, time.time()
    best_dir = output / "model-best"
    log(f"peer: {steps_per_epoch} steps per epoch, {total} in all")

    def evaluate_and_keep(epoch, loss):
        nonlocal best
        scores = peer_item_scores(gliner, dev)
        threshold = max(scores, key=lambda t: scores[t].micro["f1"])
        entry = {"step": step, "epoch": epoch, "loss": round(loss, 5), "dev_f1": round(scores[threshold].micro["f1"], 4),
                 "threshold": threshold, "dev_f1_at_0.5": round(scores[0.5].micro["f1"], 4),
                 "minutes": round((time.time() - started) / 60, 1)}
        history.append(entry)
        log(json.dumps(entry))
        if entry["dev_f1"] > best:
            best = entry["dev_f1"]
            gliner.save_pretrained(best_dir, safe_serialization=True)
            (best_dir / "threshold.json").write_text(json.dumps({"threshold": threshold}))
        (output / "training.json").write_text(json.dumps({"recipe": recipe, "evaluations": history}, indent=2))
        gliner.model.train()

    stop = False
    for epoch in range(1, epochs + 1):
        gliner.model.train()
        running, counted = 0.0, 0
        for batch in epoch_plan(train_examples, sampler, weights, batch_words, seed, epoch):
            loss = gliner_batch_loss(gliner, collator, batch, loss_options)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gliner.model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            running, counted, step = running + loss.item(), counted + 1, step + 1
            if step % settings.get("log_every", 50) == 0:
                log(f"peer step {step}/{total} loss {running / counted:.4f} ({(time.time() - started) / step:.1f} s/step)")
            if step % eval_every == 0:
                evaluate_and_keep(epoch, running / counted)
                running, counted = 0.0, 0
            if deadline is not None and time.time() > deadline:
                stop = True
                break
        if stop or step % eval_every:
            evaluate_and_keep(epoch, running / max(counted, 1))
        if stop:
            break

    report = peer_report(best_dir, heldout, limit, log)
    return {"best_dev_f1": best, "evaluations": history, "output": str(best_dir), "zero_shot": report}


def load_peer(model_dir):
    """A peer saved by ``train_peer``, reading the dataset's words as they are (no re-splitting)."""
    from gliner import GLiNER

    gliner = GLiNER.from_pretrained(str(model_dir), local_files_only=True, load_tokenizer=True)
    gliner.data_processor.words_splitter = SpaceSplitter()
    return gliner


def peer_report(model_dir, heldout, limit=None, log=print) -> dict:
    """Scores of the saved peer on each held-out dataset at its dev-tuned threshold and at
    0.5, written to ``zero_shot.json`` beside it."""
    gliner = load_peer(model_dir)
    tuned = json.loads((Path(model_dir) / "threshold.json").read_text())["threshold"]
    score = lambda records, labels, thresholds: peer_held_out_scores(gliner, records, labels, thresholds)
    return held_out_report(score, tuned, heldout, model_dir, limit, log, name="peer ")


# Both models' thresholds are chosen on dev over this grid: it reaches below training's
# (0.1) because the peer's best dev threshold sat at that floor (GLiNER's loss is summed
# binary cross-entropy without a score bias, and its scores stay low).
COMPARE_THRESHOLDS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def compare(recipe_path, ours, peer_dir, *, limit=None, log=print) -> dict:
    """This suite's zero-shot pipeline ``ours`` against the trained peer in ``peer_dir``, in
    one run: each model's threshold chosen on the same dev items over the same grid, then
    both scored on every held-out dataset one after the other, with words/s."""
    import ner

    recipe = read_recipe(recipe_path)
    seed = recipe["training"].get("seed", 0)
    train_examples, dev_examples, _, heldout, _ = prepare_mixture(recipe, limit, log)
    nlp = ner.load(ours)
    component = nlp.get_pipe("zero_shot")
    sampler = make_sampler(recipe, train_examples, prompt_fits(recipe, component.model.encoder.tokenizer))
    dev = dev_items(dev_examples, sampler, seed)
    gliner = load_peer(peer_dir)
    gliner.model.eval()
    scorers = {
        "ours": (lambda items: item_scores(component.model, items, COMPARE_THRESHOLDS, component.cfg["decoding"]),
                 lambda records, labels, thresholds: held_out_scores(component, records, labels, thresholds)),
        "peer": (lambda items: peer_item_scores(gliner, items, COMPARE_THRESHOLDS),
                 lambda records, labels, thresholds: peer_held_out_scores(gliner, records, labels, thresholds)),
    }
    report = {"recipe": str(recipe_path), "ours": str(ours), "peer": str(peer_dir), "models": {}}
    for name, (score_dev, _) in scorers.items():
        scores = score_dev(dev)
        threshold = max(scores, key=lambda t: scores[t].micro["f1"])
        report["models"][name] = {"threshold": threshold, "dev_f1": round(scores[threshold].micro["f1"], 4),
                                  "held_out": {}, "words": 0, "seconds": 0.0}
        log(f"{name}: dev F1 {100 * scores[threshold].micro['f1']:.2f} at threshold {threshold}")
    for source in heldout:
        records, labels = held_out_records(source, limit)
        n_words = sum(len(r.tokens) for r in records)
        for name, (_, score_held_out) in scorers.items():
            model = report["models"][name]
            started = time.perf_counter()
            scores = score_held_out(records, labels, [model["threshold"]])[model["threshold"]]
            model["seconds"] += time.perf_counter() - started
            model["words"] += n_words
            model["held_out"][source.name] = scores
            log(f"{name} {source.name}: F1 {100 * scores.micro['f1']:.2f}")
    for model in report["models"].values():
        model["held_out"] = summarise(model["held_out"])
        model["words_per_second"] = round(model["words"] / max(model["seconds"], 1e-9))
    ours_f1, peer_f1 = (report["models"][n]["held_out"]["average_f1"] for n in ("ours", "peer"))
    report["difference"] = round(100 * (ours_f1 - peer_f1), 2)
    log(f"held-out average F1: ours {100 * ours_f1:.2f}, peer {100 * peer_f1:.2f} ({report['difference']:+.2f} points)")
    return report


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="train the gliner-library peer of a zero-shot recipe, "
                                                 "or compare a trained one with this suite's pipeline")
    parser.add_argument("recipe")
    parser.add_argument("-o", "--output", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--compare", metavar="PIPELINE", default=None,
                        help="no training: score PIPELINE and the peer saved in OUTPUT/model-best side by side")
    parser.add_argument("--json", dest="json_path", default=None, help="--compare: also write the report here")
    args = parser.parse_args(argv)
    if args.compare:
        peer_dir = Path(args.output or read_recipe(args.recipe).get("peer", {}).get("output", "runs/zero-shot-peer"))
        report = compare(args.recipe, args.compare, peer_dir / "model-best", limit=args.limit)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(report, indent=2))
        return 0
    result = train_peer(args.recipe, output=args.output, epochs=args.epochs, limit=args.limit)
    print(f"peer best dev F1 {100 * result['best_dev_f1']:.2f}; held-out average F1 "
          f"{100 * result['zero_shot']['at_threshold']['average_f1']:.2f}; saved to {result['output']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
