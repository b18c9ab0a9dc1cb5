"""Peers trained on the same data, for side-by-side comparison with a span pipeline:

- ``token-classifier``: the recipe's encoder (vocabulary trimmed the same way) as a
  transformers ``AutoModelForTokenClassification`` (BIO softmax on each word's first
  subword), trained on the same document segments for the same number of epochs;
- ``spacy-cnn``: spaCy's own ``spacy train`` with the default CNN NER config (capped at
  6,000 steps so it ends on a 2-core machine; its default stops on patience or 20,000).

``compare`` then measures every pipeline on the same test records in one process,
interleaved, so the words/s ratios hold on a shared, noisy machine.

    python -m ner.training.peers token-classifier training/en.toml runs/peers/en-token-classifier
    python -m ner.training.peers spacy-cnn training/en.toml runs/peers/en-spacy-cnn
    python -m ner.training.peers compare training/en.toml --span en \
        --token-classifier runs/peers/en-token-classifier --spacy-cnn runs/peers/en-spacy-cnn/model-best
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from ner.evaluation import Scores, evaluate, predict_docs, record_to_doc
from ner.spans import char_spans_to_word_spans, tags_to_word_spans, word_spans_to_tags
from ner.training.batches import length_batches, make_segments
from ner.training.loop import linear_schedule, load_split, optimizer_step, read_recipe, vocabulary_pieces


class TokenClassifier:
    """BIO tagging over first subwords with a transformers token-classification model."""

    def __init__(self, model, tokenizer, tags: list[str]):
        self.model, self.tokenizer, self.tags = model, tokenizer, tags

    def encode(self, batch_words, batch_tags=None):
        encoded = self.tokenizer(batch_words, is_split_into_words=True, padding=True, return_tensors="pt")
        labels = []
        for b in range(len(batch_words)):
            seen, row = set(), []
            for word in encoded.word_ids(b):
                if word is None or word in seen:
                    row.append(-100)
                else:
                    seen.add(word)
                    row.append(self.tags.index(batch_tags[b][word]) if batch_tags else 0)
            labels.append(row)
        return encoded, torch.tensor(labels)

    def predict_spans(self, batch_words):
        encoded, labels = self.encode(batch_words)
        with torch.inference_mode():
            best = self.model(**encoded).logits.argmax(-1)
        out = []
        for b in range(len(batch_words)):
            tags = [self.tags[t] for t, l in zip(best[b].tolist(), labels[b].tolist()) if l != -100]
            out.append(tags_to_word_spans(tags))
        return out

    def save(self, path):
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (Path(path) / "tags.json").write_text(json.dumps(self.tags))

    @classmethod
    def load(cls, path):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        tags = json.loads((Path(path) / "tags.json").read_text())
        return cls(AutoModelForTokenClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), tags)


def segment_test_records(recipe, count_pieces):
    """Test documents cut into the same sentence-packed segments used in training."""
    records = load_split(recipe["data"]["test"], recipe["data"].get("label_map"))
    return records, [make_segments(r, count_pieces, recipe["training"].get("segment_subwords", 200)) for r in records]


def evaluate_token_classifier(classifier, records, segmented, batch_size=16) -> tuple[Scores, float]:
    scores, started = Scores(), time.perf_counter()
    for record, segments in zip(records, segmented):
        predicted, offset = [], 0
        for start in range(0, len(segments), batch_size):
            chunk = segments[start : start + batch_size]
            for segment, spans in zip(chunk, classifier.predict_spans([s.words for s in chunk])):
                predicted += [(s + offset, e + offset, l) for s, e, l in spans]
                offset += len(segment.words)
        scores.add(char_spans_to_word_spans(record.tokens, record.spans), predicted)
    return scores, time.perf_counter() - started


def train_token_classifier(recipe_path, output):
    from transformers import AutoModelForTokenClassification

    from ner.e5_converter import trim_vocabulary
    from ner.encoders import load_pretrained

    recipe = read_recipe(recipe_path)
    settings, labels = recipe["training"], recipe["pipeline"]["labels"]
    random.seed(settings.get("seed", 0))
    torch.manual_seed(settings.get("seed", 0))
    train = load_split(recipe["data"]["train"], recipe["data"].get("label_map"))
    dev = load_split(recipe["data"]["dev"], recipe["data"].get("label_map"))
    transformer, tokenizer = load_pretrained(recipe["encoder"]["name"])
    if recipe["encoder"].get("trim_vocabulary"):
        keep = vocabulary_pieces(tokenizer, train + dev, recipe["encoder"].get("extra_pieces", 0))
        transformer, tokenizer = trim_vocabulary(transformer, tokenizer, keep)
    tags = ["O"] + [f"{p}-{l}" for l in labels for p in "BI"]
    config = copy.deepcopy(transformer.config)
    config.id2label = dict(enumerate(tags))  # num_labels follows id2label
    config.label2id = {tag: i for i, tag in enumerate(tags)}
    model = AutoModelForTokenClassification.from_config(config)
    getattr(model, model.base_model_prefix).load_state_dict(transformer.state_dict(), strict=False)
    classifier = TokenClassifier(model, tokenizer, tags)
    count = lambda w: len(tokenizer([w], is_split_into_words=True, add_special_tokens=False)["input_ids"])
    segments = [s for r in train for s in make_segments(r, count, settings.get("segment_subwords", 200))]
    epochs = settings.get("epochs", 3)
    rng = random.Random(settings.get("seed", 0))
    n_steps = len(length_batches(segments, settings.get("batch_words", 1500), random.Random(0))) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.get("peer_learning_rate", 5e-5), weight_decay=0.01)
    warmup = int(n_steps * settings.get("warmup", 0.1))
    schedule = linear_schedule(optimizer, n_steps, warmup)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        started, total = time.time(), 0.0
        batches = length_batches(segments, settings.get("batch_words", 1500), rng)
        for step, batch in enumerate(batches, 1):
            encoded, targets = classifier.encode([s.words for s in batch], [word_spans_to_tags(len(s.words), s.spans) for s in batch])
            total += optimizer_step(model, optimizer, schedule, model(**encoded, labels=targets).loss)
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{len(batches)} loss {total / step:.4f}", flush=True)
        history.append({"epoch": epoch, "loss": total / len(batches), "seconds": round(time.time() - started, 1)})
        print(json.dumps(history[-1]), flush=True)
    model.eval()
    classifier.save(output)
    (Path(output) / "training.json").write_text(json.dumps({"recipe": str(recipe_path), "epochs": history}, indent=2))


def train_spacy_cnn(recipe_path, output):
    """spaCy's default CNN NER config (``spacy init config --pipeline ner``), trained by
    ``spacy train`` on the recipe's data written as DocBin files."""
    import spacy
    from spacy.tokens import DocBin

    recipe = read_recipe(recipe_path)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    nlp = spacy.blank(recipe["pipeline"].get("lang", "en"))
    for split in ("train", "dev"):
        docbin = DocBin()
        for record in load_split(recipe["data"][split], recipe["data"].get("label_map")):
            doc = record_to_doc(nlp.vocab, record)
            doc.ents = [spacy.tokens.Span(doc, s, e, label=l) for s, e, l in char_spans_to_word_spans(record.tokens, record.spans)]
            docbin.add(doc)
        docbin.to_disk(output / f"{split}.spacy")
    lang = recipe["pipeline"].get("lang", "en")
    subprocess.run([sys.executable, "-m", "spacy", "init", "config", str(output / "config.cfg"), "--lang", lang,
                    "--pipeline", "ner", "--optimize", "efficiency", "--force"], check=True)
    subprocess.run([sys.executable, "-m", "spacy", "train", str(output / "config.cfg"), "--output", str(output),
                    "--paths.train", str(output / "train.spacy"), "--paths.dev", str(output / "dev.spacy"),
                    "--training.max_steps", "6000"], check=True)


def compare(recipe_path, span=None, token_classifier=None, spacy_cnn=None, rounds=2):
    """F1 and words/s on the recipe's test data for whichever of the three are given,
    measured in one process, interleaved over ``rounds`` rounds (words/s: best round)."""
    import spacy

    import ner

    recipe = read_recipe(recipe_path)
    records = load_split(recipe["data"]["test"], recipe["data"].get("label_map"))
    runners = {}
    if span:
        span_nlp = ner.load(span)
        runners["span pipeline (this suite)"] = lambda: _timed(evaluate, span_nlp, records)
    if token_classifier:
        classifier = TokenClassifier.load(token_classifier)
        count = lambda w: len(classifier.tokenizer([w], is_split_into_words=True, add_special_tokens=False)["input_ids"])
        _, segmented = segment_test_records(recipe, count)
        runners["token classifier (same encoder)"] = lambda: evaluate_token_classifier(classifier, records, segmented)
    if spacy_cnn:
        cnn = spacy.load(spacy_cnn)
        runners["spaCy CNN (spacy train, default config)"] = lambda: _timed(evaluate, cnn, records)
    n_words = sum(len(r.tokens) for r in records)
    results = {}
    for _ in range(rounds):
        for name, run in runners.items():
            scores, seconds = run()
            best = results.get(name, {}).get("words_per_second", 0)
            results[name] = {"f1": round(100 * scores.micro["f1"], 2), "words_per_second": round(max(best, n_words / seconds))}
    for name, row in results.items():
        print(f"| {name} | {row['f1']:.2f} | {row['words_per_second']} |")
    return results


def _timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ner.training.peers")
    parser.add_argument("what", choices=["token-classifier", "spacy-cnn", "compare"])
    parser.add_argument("recipe")
    parser.add_argument("output", nargs="?", help="where a trained peer goes")
    parser.add_argument("--span", help="compare: span pipeline name or directory")
    parser.add_argument("--token-classifier", help="compare: trained token-classifier directory")
    parser.add_argument("--spacy-cnn", help="compare: trained spaCy pipeline directory")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.what == "token-classifier":
        train_token_classifier(args.recipe, args.output)
    elif args.what == "spacy-cnn":
        train_spacy_cnn(args.recipe, args.output)
    else:
        print(json.dumps(compare(args.recipe, args.span, args.token_classifier, args.spacy_cnn, args.rounds), indent=2))


if __name__ == "__main__":
    main()
