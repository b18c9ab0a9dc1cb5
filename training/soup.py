"""Average the weights of pipelines fine-tuned from one ancestor (a "model soup",
Wortsman et al. 2022): one pipeline, the cost of one at inference, often better than each.

    python -m ner.training.soup pipelines/en runs/en-self-training -o runs/en-soup
    python -m ner.training.soup pipelines/tweets runs/tweets-conll-all runs/tweets-stage4-tweets -o runs/tweets-soup \\
        --recipe training/tweets-conll.toml --tune-threshold --backend ner-kernels-int8

The pipelines must share their architecture, labels and vocabulary (runs that start from the
same pipeline with the embeddings frozen or the vocabulary kept do); anything else is an error.
The first pipeline gives the config and the metadata. ``--weights`` weighs the ingredients
(default: equal). ``--tune-threshold`` chooses the threshold again on the recipe's dev data.
"""
from __future__ import annotations

import argparse
import sys


def average_state(states: list[dict], weights: list[float]) -> dict:
    """The weighted mean of state dicts with the same keys and shapes; integer tensors
    (counters, ids) are taken from the first."""
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            missing = set(keys) ^ set(state)
            raise ValueError(f"ingredient {index} has different weights: {sorted(missing)[:5]}")
    total = sum(weights)
    averaged = {}
    for key in keys:
        first = states[0][key]
        for index, state in enumerate(states[1:], start=1):
            if state[key].shape != first.shape:
                raise ValueError(f"ingredient {index}: {key} has shape {tuple(state[key].shape)}, "
                                 f"not {tuple(first.shape)}")
        if not first.is_floating_point():
            averaged[key] = first.clone()
            continue
        averaged[key] = sum(w * state[key].float() for w, state in zip(weights, states)) / total
        averaged[key] = averaged[key].to(first.dtype)
    return averaged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--weights", default=None, help="comma-separated, one per pipeline (default: equal)")
    parser.add_argument("--recipe", default=None, help="the recipe whose dev data --tune-threshold uses")
    parser.add_argument("--tune-threshold", action="store_true")
    parser.add_argument("--backend", default=None, help="the inference backend of the output (default: the first's)")
    args = parser.parse_args(argv)
    if len(args.pipelines) < 2:
        parser.error("a soup needs at least two pipelines")
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * len(args.pipelines)
    if len(weights) != len(args.pipelines):
        parser.error(f"{len(weights)} weights for {len(args.pipelines)} pipelines")
    if args.tune_threshold and not args.recipe:
        parser.error("--tune-threshold needs --recipe (its dev data)")

    import ner
    from ner.loading import pipeline_backend
    from ner.training.loop import export_pipeline, read_recipe, recipe_records, retune_threshold, span_config

    nlps = [ner.load(path, backend="torch") for path in args.pipelines]
    soup = nlps[0]
    dev = recipe_records(read_recipe(args.recipe), "dev") if args.tune_threshold else None
    for name, component in soup.pipeline:
        if getattr(component, "model", None) is None:
            continue
        others = [nlp.get_pipe(name) for nlp in nlps[1:]]
        for path, other in zip(args.pipelines[1:], others):
            if other.cfg.get("labels") != component.cfg.get("labels"):
                raise SystemExit(f"{path}: labels {other.cfg.get('labels')} differ from {component.cfg.get('labels')}")
            if other.model.encoder.tokenizer.get_vocab() != component.model.encoder.tokenizer.get_vocab():
                raise SystemExit(f"{path}: its vocabulary differs from {args.pipelines[0]}'s")
        states = [component.model.state_dict()] + [other.model.state_dict() for other in others]
        component.model.load_state_dict(average_state(states, weights))
        print(f"{name}: averaged {len(states)} pipelines, weights {weights}")
        if args.tune_threshold:
            retune_threshold(component, dev, (0.3, 0.4, 0.5, 0.6, 0.7))
    soup.meta["soup"] = list(args.pipelines)
    export_pipeline(soup, args.output, span_config(soup, args.backend or pipeline_backend(args.pipelines[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
