"""The ``ner`` command: train, evaluate and tag."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ner", description="Named-entity recognition pipelines for spaCy.")
    commands = parser.add_subparsers(dest="command", required=True)

    tag = commands.add_parser("tag", help="tag a file (or stdin) with a pipeline")
    tag.add_argument("input", nargs="?", default="-", help="input file; - or nothing reads stdin")
    tag.add_argument("-o", "--output", default="-", help="output file; - or nothing writes stdout")
    tag.add_argument("--pipeline", default="en", help="shipped pipeline name or directory")
    tag.add_argument("--input-format", choices=["txt", "jsonl", "conll"], default=None)
    tag.add_argument("--output-format", choices=["jsonl", "conll", "docbin"], default=None)
    tag.add_argument("--text-field", default="text")
    tag.add_argument("--batch-size", type=int, default=16)

    train = commands.add_parser("train", help="train a pipeline from a recipe in training/")
    train.add_argument("recipe")
    train.add_argument("-o", "--output", default=None, help="pipeline directory (default: the recipe's)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--limit", type=int, default=None, help="records per dataset split (smoke runs)")

    evaluate = commands.add_parser("evaluate", help="strict entity-level P/R/F1 of a pipeline on data")
    evaluate.add_argument("pipeline")
    evaluate.add_argument("data", help="dataset:split from the manifest, or a file")
    evaluate.add_argument("--format", default=None, help="file format when DATA is a file")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.add_argument("--json", dest="json_path", default=None, help="also write the scores as JSON")

    args = parser.parse_args(argv)
    return {"tag": run_tag, "train": run_train, "evaluate": run_evaluate}[args.command](args)


def run_tag(args) -> int:
    import ner
    from ner.readers import read_records
    from ner.tagging import tag_records
    from ner.writers import write_records

    input_format = args.input_format or _format_from_name(args.input, "txt")
    output_format = args.output_format or _format_from_name(args.output, "jsonl")
    if output_format == "docbin" and args.output == "-":
        print("ner tag: --output-format docbin needs -o FILE", file=sys.stderr)
        return 2
    nlp = ner.load(args.pipeline)
    source = sys.stdin if args.input == "-" else args.input
    # Tags in a CoNLL input are ignored; the widest scheme accepts them all, and needs no
    # detection pass (stdin can be read once only).
    options = {"jsonl": {"text_field": args.text_field}, "conll": {"scheme": "BIOES"}}.get(input_format, {})
    records = read_records(source, format=input_format, **options)
    tagged = tag_records(nlp, records, batch_size=args.batch_size)
    if sys.stderr.isatty():
        from tqdm import tqdm

        tagged = tqdm(tagged, unit="doc", desc="tagging")
    destination = sys.stdout if args.output == "-" else args.output
    write_records(tagged, destination, format=output_format,
                  **({"nlp_or_vocab": nlp} if output_format == "docbin" else {}))
    return 0


def _format_from_name(name: str, default: str) -> str:
    for suffix, fmt in ((".jsonl", "jsonl"), (".conll", "conll"), (".spacy", "docbin"), (".txt", "txt")):
        if name.endswith(suffix):
            return fmt
    return default


def run_train(args) -> int:
    from ner.training.loop import train

    result = train(args.recipe, output=args.output, epochs=args.epochs, limit=args.limit)
    print(f"best dev F1 {100 * result['best_dev_f1']:.2f}; pipeline saved to {result['output']}")
    return 0


def run_evaluate(args) -> int:
    import json
    import time

    from tqdm import tqdm

    import ner
    from ner.evaluation import evaluate

    nlp = ner.load(args.pipeline)
    records = _evaluation_records(args)
    started = time.perf_counter()
    scores = evaluate(nlp, records, batch_size=args.batch_size,
                      progress=lambda it, total: tqdm(it, total=total, unit="doc", mininterval=5, file=sys.stderr))
    seconds = time.perf_counter() - started
    n_words = sum(len(r.tokens) for r in records)
    print(scores.table())
    print(f"{n_words} words in {seconds:.1f} s: {n_words / seconds:.0f} words/s")
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"micro": scores.micro, "per_label": scores.per_label, "words": n_words,
                       "seconds": seconds, "pipeline": args.pipeline, "data": args.data}, handle, indent=2)
    return 0


def _evaluation_records(args):
    from pathlib import Path

    if ":" in args.data and not Path(args.data).exists():
        from ner.datasets import load_dataset

        name, split = args.data.split(":")
        records = load_dataset(name, split)
    else:
        from ner.readers import read_records

        records = read_records(args.data, format=args.format)
    records = list(records)
    return records[: args.limit] if args.limit else records


if __name__ == "__main__":
    sys.exit(main())
