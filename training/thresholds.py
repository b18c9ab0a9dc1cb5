"""Decoding thresholds chosen on a recipe's dev data for a pipeline as it is: one for all
labels, then, with ``--per-label``, each label's own (coordinate ascent over the labels,
kept only where dev micro F1 rises; whether to, and how much rise to ask, is decided by
choosing on one half of dev and scoring on the other). The weights are not touched: OUT
is a copy of the pipeline whose ``ner/cfg.json`` and ``config.cfg`` name the thresholds.

    python -m ner.training.thresholds training/biomedical.toml pipelines/biomedical runs/biomedical-thresholds --per-label

One prediction pass over dev; every threshold is then tried on the stored probabilities.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ner.decoding import label_thresholds
from ner.evaluation import item_probabilities

GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class DevPredictions:
    """A model's probabilities over dev items ``(words, gold word spans, allowed labels or
    None)``, kept so that thresholds can be tried without running the model again."""

    def __init__(self, model, items, decoding: str = "flat", *, batch_size: int = 8):
        self.model, self.decoding = model, decoding
        predicted = list(item_probabilities(model, items, batch_size=batch_size))
        self.items = [item for item, _ in predicted]
        self.probs = [probs for _, probs in predicted]
        self.gold = [{tuple(span) for span in gold} for _, gold, _ in self.items]

    def counts(self, thresholds, which=None) -> np.ndarray:
        """(true positives, predicted, gold) per item at ``thresholds`` (a number or one
        per label), for the items ``which`` (default: all)."""
        which = range(len(self.items)) if which is None else which
        rows = []
        for i in which:
            _, _, allowed = self.items[i]
            found = self.model.decode(self.probs[i], thresholds, self.decoding, allowed)
            predicted = {(s, e, l) for s, e, l, _ in found}
            rows.append((len(predicted & self.gold[i]), len(predicted), len(self.gold[i])))
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def subset(self, which) -> "DevPredictions":
        """The same predictions for the items ``which`` only (no model run)."""
        part = object.__new__(DevPredictions)
        part.model, part.decoding = self.model, self.decoding
        part.items = [self.items[i] for i in which]
        part.probs = [self.probs[i] for i in which]
        part.gold = [self.gold[i] for i in which]
        return part

    def users(self, label: str) -> list[int]:
        """The items whose decoding can predict ``label``."""
        return [i for i, (_, _, allowed) in enumerate(self.items) if allowed is None or label in allowed]


def micro_f1(counts: np.ndarray) -> float:
    tp, predicted, gold = counts.sum(0)
    return 2 * tp / (predicted + gold) if predicted + gold else 0.0


def choose_thresholds(dev: DevPredictions, labels: list[str], grid=GRID, *, per_label: bool = True, passes: int = 2,
                      min_gain: float = 0.0, log=print) -> tuple[float, dict[str, float], float]:
    """(threshold, per-label thresholds, dev micro F1): the best single threshold of
    ``grid``, then each label's own where it raises dev micro F1 by more than ``min_gain``
    (a fraction: 0.001 is 0.1 point; ``passes`` rounds over the labels). Only items that
    can predict a label are decoded again when it changes."""
    single = {t: micro_f1(dev.counts(t)) for t in grid}
    threshold = max(grid, key=lambda t: single[t])
    log("dev F1 by threshold: " + ", ".join(f"{t}: {100 * f:.2f}" for t, f in single.items()) + f"; chosen {threshold}")
    own: dict[str, float] = {}
    counts = dev.counts(threshold)
    best = micro_f1(counts)
    if not per_label:
        return threshold, own, best
    users_of = {label: dev.users(label) for label in labels}
    tuned = [label for label in labels if users_of[label]]
    for round_ in range(passes):
        changed = False
        for label in tuned:
            users = users_of[label]
            current = own.get(label, threshold)
            for t in grid:
                if t == current:
                    continue
                trial = label_thresholds(labels, threshold, {**own, label: t})
                candidate = counts.copy()
                candidate[users] = dev.counts(trial, users)
                f1 = micro_f1(candidate)
                if f1 > best + min_gain + 1e-9:
                    best, counts, current, changed = f1, candidate, t, True
                    own[label] = t
            log(f"pass {round_ + 1}: {label} at {current}; dev F1 {100 * best:.2f}")
        if not changed:
            break
    own = {label: t for label, t in own.items() if t != threshold}
    return threshold, own, best


def cross_validated_gain(dev: DevPredictions, labels: list[str], gains=(0.0, 0.001, 0.002, 0.005), grid=GRID,
                         log=print) -> float | None:
    """The ``min_gain`` of ``gains`` whose thresholds, chosen on half of dev, score best on
    the other half (both ways round, counts pooled; a tie goes to the larger gain, which
    keeps fewer labels' own thresholds), or None where one threshold for all labels does
    at least as well there. Small dev sets reward thresholds that fit their noise; this is how
    much evidence a label's own threshold needs here, if any."""
    halves = [list(range(0, len(dev.items), 2)), list(range(1, len(dev.items), 2))]
    held_out = {}
    for gain in (None, *gains):
        counts = []
        for tune, check in (halves, halves[::-1]):
            threshold, own, _ = choose_thresholds(dev.subset(tune), labels, grid, per_label=gain is not None,
                                                  min_gain=gain or 0.0, log=lambda _: None)
            counts.append(dev.subset(check).counts(label_thresholds(labels, threshold, own)))
        held_out[gain] = micro_f1(np.concatenate(counts))
    chosen = max(held_out, key=lambda g: (round(held_out[g], 6), float("inf") if g is None else g))
    log("held-out dev F1: one threshold " + f"{100 * held_out[None]:.2f}; per label, by min gain: "
        + ", ".join(f"{100 * g:g}: {100 * held_out[g]:.2f}" for g in gains)
        + "; chosen " + ("one threshold" if chosen is None else f"per label, min gain {100 * chosen:g}"))
    return chosen


def write_thresholds(pipeline: str | Path, output: str | Path, component: str, threshold: float,
                     own: dict[str, float]) -> None:
    """Copy ``pipeline`` to ``output`` with ``component``'s thresholds set (weights untouched)."""
    from spacy.util import load_config

    from ner.loading import write_checksums

    pipeline, output = Path(pipeline), Path(output)
    if output.resolve() != pipeline.resolve():
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(pipeline, output)
    cfg_path = output / component / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["threshold"], cfg["label_thresholds"] = threshold, dict(own)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    config = load_config(output / "config.cfg", interpolate=False)
    config["components"][component]["threshold"] = threshold
    config["components"][component]["label_thresholds"] = dict(own)
    config.to_disk(output / "config.cfg")
    write_checksums(output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ner.training.thresholds", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="the recipe whose [data] dev sets choose the thresholds")
    parser.add_argument("pipeline", help="a pipeline directory or a shipped pipeline's name")
    parser.add_argument("output", help="where the pipeline goes with its new thresholds (may be PIPELINE itself)")
    parser.add_argument("--per-label", action="store_true", help="also choose each label's own threshold")
    parser.add_argument("--min-gain", default="auto", metavar="POINTS",
                        help="dev F1 points a label's own threshold must add to be kept; 'auto' (default): the one "
                             "of 0, 0.1, 0.2, 0.5 that does best across two halves of dev, or none at all where "
                             "one threshold for all labels does as well there")
    parser.add_argument("--dev", nargs="+", default=None, metavar="DATA",
                        help="dev sets to choose on instead of the recipe's (dataset:split[:range], read with "
                             "its [data] tables)")
    parser.add_argument("--backend", default=None, help="the backend whose probabilities decide (default: the pipeline's)")
    args = parser.parse_args(argv)

    import ner
    from ner.components import SpanNER
    from ner.evaluation import dev_items
    from ner.loading import pipeline_path
    from ner.training.loop import read_recipe, recipe_records
    from ner.zero_shot_component import ZeroShotNER

    recipe = read_recipe(args.recipe)
    records = recipe_records(recipe, "dev", names=args.dev)
    nlp = ner.load(args.pipeline, backend=args.backend)
    found = [(n, c) for n, c in nlp.pipeline if isinstance(c, SpanNER) and not isinstance(c, ZeroShotNER)]
    if not found:
        raise SystemExit(f"{args.pipeline}: no span_ner component (a zero-shot pipeline takes its threshold per call)")
    name, component = found[0]
    dev = DevPredictions(component.model, dev_items(records), component.cfg["decoding"])
    labels = list(component.model.labels)
    if not args.per_label:
        min_gain = 0.0
    elif args.min_gain == "auto":
        min_gain = cross_validated_gain(dev, labels)
    else:
        min_gain = float(args.min_gain) / 100
    threshold, own, f1 = choose_thresholds(dev, labels, per_label=min_gain is not None, min_gain=min_gain or 0.0)
    print(f"{name}: threshold {threshold}, per label {own or 'none'}; dev micro F1 {100 * f1:.2f} "
          f"over {len(records)} records")
    write_thresholds(pipeline_path(args.pipeline), args.output, name, threshold, own)
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
