"""Shrink a trained pipeline's vocabulary after training, to fit the 30 MB budget: keep the
pieces the recipe's train and dev words use plus the ``extra`` most probable Latin-script
pieces (fewer than the recipe kept while training), slice the embedding table, re-export.

    python -m ner.training.shrink training/tweets.toml runs/tweets pipelines/tweets --extra-pieces 2000
    python -m ner.training.shrink training/multilingual.toml runs/multilingual pipelines/multilingual --most-frequent 20000
    python -m ner.training.shrink training/en.toml runs/en pipelines/en --extra-pieces 1500 --backend ner-kernels-int8
    python -m ner.training.shrink training/long-span-stage3.toml runs/long-span-stage3 pipelines/long-span --extra-pieces 1500 --threshold 0.7 --backend ner-kernels-int8
    python -m ner.training.shrink training/en.toml runs/en-wikineural4 pipelines/en --extra-pieces 1500 --calibrate 200 --backend ner-kernels-int8
    python -m ner.training.shrink training/en.toml pipelines/en runs/en-w7 --keep-vocabulary --calibrate 200 --weight-levels 63 --backend ner-kernels-int8-w7

Only the embedding rows of dropped pieces go; every other weight is unchanged. Words made
of kept pieces tokenise as before; the model card's scores are measured after shrinking.
With ``--calibrate N`` (int8 storage of a run saved in fp32) the linear layers are rounded
to their int8 grid error-aware, on the first N training records (``--calibration-sample
spread``: N spread evenly over them) (``ner.rounding``), rather
than entry by entry when saved; ``--weight-levels 63`` rounds them that way to 63 levels each
side of zero, for the 7-bit weight kernels (``ner-kernels-int8-w7``), which then pack exactly
those weights instead of rounding the stored ones a second time.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("pipeline")
    parser.add_argument("output")
    parser.add_argument("--extra-pieces", type=int, default=0)
    parser.add_argument("--most-frequent", type=int, default=None, metavar="N",
                        help="keep only the N pieces the recipe's text uses most (others re-segment into kept pieces)")
    parser.add_argument("--tune-threshold", action="store_true",
                        help="choose the decision threshold again on the recipe's dev data, after shrinking")
    parser.add_argument("--threshold", type=float, default=None,
                        help="set the decision threshold (e.g. the one a report chose on dev for the backend)")
    parser.add_argument("--storage", default=None, choices=["fp32", "fp16", "int8", "int8-emb4"],
                        help="weights storage of the output (default: the pipeline's)")
    parser.add_argument("--backend", default=None,
                        help="the inference backend the output loads on (ner.kernels.BACKENDS; default: the pipeline's)")
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="round the linear layers to int8 error-aware, calibrated on the first N training records")
    parser.add_argument("--calibration-sample", default="first", choices=["first", "spread"],
                        help="the N calibration records: the first N training records, or N spread evenly over them "
                             "(every k-th: all of a recipe's datasets, languages and domains)")
    parser.add_argument("--weight-levels", type=int, default=127, choices=[127, 63],
                        help="with --calibrate: the levels each side of zero the linear layers are rounded to "
                             "(63: for ner-kernels-int8-w7)")
    parser.add_argument("--act-order", action="store_true",
                        help="with --calibrate: round each layer's columns of the most energetic inputs first")
    parser.add_argument("--keep-vocabulary", action="store_true",
                        help="keep every piece (a pipeline shrunk before: only its weights are rounded again)")
    args = parser.parse_args(argv)
    if (args.weight_levels != 127 or args.act_order) and not args.calibrate:
        parser.error("--weight-levels and --act-order shape what --calibrate does: give --calibrate N too")
    if args.threshold is not None and args.tune_threshold:
        parser.error("--threshold sets the threshold, --tune-threshold chooses it: give one")

    import ner
    from ner.e5_converter import trim_vocabulary
    from ner.training.loop import (export_pipeline, read_recipe, recipe_records, retune_threshold, span_config,
                                   vocabulary_pieces)

    recipe = read_recipe(args.recipe)
    dev = recipe_records(recipe, "dev")
    records = recipe_records(recipe, "train") + dev
    nlp = ner.load(args.pipeline, backend="torch")  # the fp32 reference weights are what is trimmed and saved
    for _, component in nlp.pipeline:
        encoder = getattr(getattr(component, "model", None), "encoder", None)
        if encoder is None:
            continue
        before = len(encoder.tokenizer)
        if not args.keep_vocabulary:
            keep = vocabulary_pieces(encoder.tokenizer, records, args.extra_pieces, args.most_frequent)
            transformer, tokenizer = trim_vocabulary(encoder.transformer, encoder.tokenizer, keep)
            head = component.model.head
            component.set_model(transformer, tokenizer)
            component.model.head = head
        if args.storage:
            component.cfg["storage"] = args.storage
        print(f"{component.name}: {before} → {len(component.model.encoder.tokenizer)} pieces")
        if args.calibrate:
            calibrate(component, calibration_records(records[: len(records) - len(dev)], args.calibrate,
                                                     args.calibration_sample), args.weight_levels, args.act_order)
        if args.threshold is not None:
            component.cfg["threshold"] = args.threshold
        if args.tune_threshold:
            retune_threshold(component, dev)
    from ner.loading import pipeline_backend

    config = span_config(nlp, args.backend or pipeline_backend(args.pipeline))  # the output is built from it
    nlp.meta["license"] = recipe["pipeline"].get("license", nlp.meta.get("license", ""))
    if recipe["data"].get("label_map"):
        nlp.meta["label_map"] = dict(recipe["data"]["label_map"])
    export_pipeline(nlp, args.output, config)
    return 0


def calibration_records(train, n: int, sample: str = "first"):
    """``n`` of the ``train`` records: the first ``n``, or ``n`` spread evenly over them."""
    if sample == "first" or n >= len(train):
        return train[:n]
    return [train[i * len(train) // n] for i in range(n)]


def calibrate(component, records, levels: int = 127, act_order: bool = False) -> None:
    from ner.rounding import round_for_int8

    if not component.cfg["storage"].startswith("int8"):
        raise SystemExit(f"--calibrate rounds for int8 storage; {component.name} stores {component.cfg['storage']}")
    report = round_for_int8(component.model, [r.words for r in records], levels=levels, act_order=act_order)
    plain = sum(layer["plain"] for layer in report.values())
    calibrated = sum(layer["calibrated"] for layer in report.values())
    print(f"{component.name}: {len(report)} linear layers rounded to {levels} levels on {len(records)} records; summed output "
          f"error {plain:.3g} (plain rounding) → {calibrated:.3g}")


if __name__ == "__main__":
    sys.exit(main())
