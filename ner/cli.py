"""The ``ner`` command: tag, train, evaluate, and the commands other parts of the suite own.

A command that lives elsewhere (the demo in ``app/``, distillation in ``data/``, ...) is a
module with ``add_arguments(parser)`` and ``run(args) -> int``; ``PLUGGED`` names it.
Those modules import their heavy dependencies inside ``run`` so ``ner --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

PLUGGED = {
    "distill": ("ner.distill.command", "annotate raw text with an LLM teacher"),
    "demo": ("ner.app.command", "start the Streamlit annotation demo (127.0.0.1 unless told)"),
    "bench": ("ner.benchmark", "words/s of a pipeline on each inference backend, side by side"),
    "export": ("ner.onnx_export", "export a pipeline's model to ONNX"),
    "gliner-import": ("ner.gliner_checkpoint", "a GLiNER.save_pretrained directory as a zero_shot pipeline"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ner", description="Named-entity recognition pipelines for spaCy.")
    commands = parser.add_subparsers(dest="command", required=True)

    tag = commands.add_parser("tag", help="tag a file (or stdin) with a pipeline",
                              description="Tag a file (or stdin) with a pipeline. Every input record is either "
                                          "tagged or rejected with its line number and the reason; see docs/batch-tagging.md.")
    tag.add_argument("input", nargs="?", default="-", help="input file; - or nothing reads stdin")
    tag.add_argument("-o", "--output", default="-", help="output file; - or nothing writes stdout")
    tag.add_argument("--pipeline", default="en", help="shipped pipeline name or directory (ner.loading.DEFAULT_PIPELINE)")
    tag.add_argument("--input-format", choices=["txt", "jsonl", "conll"], default=None)
    tag.add_argument("--output-format", choices=["jsonl", "conll", "docbin"], default=None)
    tag.add_argument("--text-field", default="text")
    tag.add_argument("--labels", default=None,
                     help="comma-separated entity types: what a zero-shot pipeline looks for "
                          "(--pipeline zero-shot --labels drug,disease, or LABEL=prompt pairs), "
                          "or a subset of a pipeline's labels")
    tag.add_argument("--batch-size", type=int, default=16)
    tag.add_argument("--errors", metavar="FILE", default=None,
                     help="write every rejected record here as JSON lines (line, reason, record); default: stderr")
    tag.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from its OUTPUT.progress.json")
    tag.add_argument("--n-process", type=int, default=1, metavar="N",
                     help="local worker processes, one torch thread each (default 1)")
    tag.add_argument("--max-chars", type=int, default=1_000_000, metavar="N",
                     help="reject a record longer than N characters (0: no cap; default 1,000,000)")
    tag.add_argument("--max-token-chars", type=int, default=1_000, metavar="N",
                     help="reject a record holding a whitespace-free run longer than N characters (0: no cap; default 1,000)")
    tag.add_argument("--device", default=None,
                     help="where the pipeline's models run: cpu (default), cuda, cuda:1 (a torch device; --engine local)")
    tag.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local (this machine) or ray (Ray Data; a local Ray cluster unless --address)")
    tag.add_argument("--address", default=None, help="Ray cluster address, e.g. ray://head:10001 (--engine ray)")
    tag.add_argument("--workers", type=int, default=None, metavar="N",
                     help="Ray actors, each loading the pipeline once (--engine ray; default: the cluster's CPUs)")

    train = commands.add_parser("train", help="train a pipeline from a recipe in training/")
    train.add_argument("recipe")
    train.add_argument("-o", "--output", default=None, help="pipeline directory (default: the recipe's)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--limit", type=int, default=None, help="records per dataset split (smoke runs)")
    train.add_argument("--seed", type=int, default=None, help="override the recipe's seed (a repeat of a run)")

    evaluate = commands.add_parser("evaluate", help="strict entity-level P/R/F1 of a pipeline on data")
    evaluate.add_argument("pipeline")
    evaluate.add_argument("data", nargs="+",
                          help="dataset:split from the manifest (a * in the name matches several: "
                               "'masakhaner2/*:test'; dataset:split:N or :A-B takes part of a split, as recipes do), "
                               "or a file; several are scored one by one and averaged")
    evaluate.add_argument("--format", default=None, help="file format when DATA is a file")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.add_argument("--sentences-per-doc", type=int, default=1, metavar="N",
                          help="join every N records in a row into one Doc (a sentence-level corpus that keeps "
                               "its texts' sentence order, scored with each sentence's neighbours as context)")
    evaluate.add_argument("--json", dest="json_path", default=None, help="also write the scores as JSON")
    evaluate.add_argument("--backend", default=None,
                          help="inference backend (torch, torch-int8, onnxruntime[-int8], ner-kernels[-int8], "
                               "ner-kernels-int8-fast, ...: ner.kernels.BACKENDS); "
                               "default: the one the pipeline's config names")
    evaluate.add_argument("--device", default=None,
                          help="where the models run: cpu (default), cuda, cuda:1 (a torch device)")
    evaluate.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                          help="a config override as spacy.load takes it, e.g. components.ner.model.stride=224 "
                               "(how documents are windowed) or components.ner.threshold=0.4; repeatable")
    evaluate.add_argument("--labels", default=None,
                          help="comma-separated labels to predict (default: the dataset's own, when DATA names one); "
                               "for a zero-shot pipeline LABEL=prompt pairs, e.g. PER=person,LOC=location")

    plugged = {}
    for name, (module_name, help_text) in PLUGGED.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not error.name or not module_name.startswith(error.name):
                raise
            continue  # that part of the suite is not in this checkout
        module.add_arguments(commands.add_parser(name, help=help_text))
        plugged[name] = module.run

    args = parser.parse_args(argv)
    builtin = {"tag": run_tag, "train": run_train, "evaluate": run_evaluate}
    return (builtin.get(args.command) or plugged[args.command])(args)


def run_tag(args) -> int:
    from ner.loading import PipelineError
    from ner.spans import FormatError
    from ner.tag_job import JobError, Limits, TagJob, run_local
    from ner.tagging import WorkerDied

    input_format = args.input_format or _format_from_name(args.input, "txt")
    output_format = args.output_format or _format_from_name(args.output, "jsonl")
    if output_format == "docbin" and args.output == "-":
        print("ner tag: --output-format docbin needs -o FILE", file=sys.stderr)
        return 2
    for option in ("batch_size", "n_process", "workers"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            print(f"ner tag: --{option.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.device and args.engine == "ray":
        print("ner tag: --device is for --engine local; on Ray, workers run where the cluster places them",
              file=sys.stderr)
        return 2
    job = TagJob(input=args.input, output=args.output, errors=args.errors, pipeline=args.pipeline,
                 input_format=input_format, output_format=output_format, text_field=args.text_field,
                 batch_size=args.batch_size, n_process=args.n_process, resume=args.resume,
                 labels=parse_labels(args.labels) if args.labels else None, device=args.device,
                 limits=Limits(max_chars=args.max_chars, max_token_chars=args.max_token_chars))
    try:
        if args.engine == "ray":
            from ner.ray_tagging import run_on_ray

            summary = run_on_ray(job, address=args.address, workers=args.workers)
        elif sys.stderr.isatty():
            from tqdm import tqdm

            with tqdm(unit="doc", desc="tagging") as bar:
                summary = run_local(job, progress_bar=bar)
        else:
            summary = run_local(job)
    except (JobError, FormatError, WorkerDied, PipelineError) as error:
        print(f"ner tag: {error}", file=sys.stderr)
        return 2
    print(summary.line(), file=sys.stderr)
    return 0


def parse_labels(text: str):
    """``--labels``: "a,b" → ["a", "b"]; "PER=person,LOC=location" → {"PER": "person", ...}
    (a zero-shot pipeline reads each prompt and names its entities by the label)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not any("=" in item for item in items):
        return items
    pairs = [item.split("=", 1) if "=" in item else (item, item) for item in items]
    return {label.strip(): prompt.strip() for label, prompt in pairs}


def config_overrides(items: list[str]) -> dict:
    """``["components.ner.model.stride=224"]`` → ``{"components": {"ner": {"model": {"stride": 224}}}}``:
    dotted config keys as spacy.load takes them; a value is read as JSON where it parses."""
    import json

    from spacy.util import dot_to_dict

    dotted = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise ValueError(f"--config {item!r}: expected SECTION.KEY=VALUE, e.g. components.ner.model.stride=224")
        try:
            dotted[key] = json.loads(value)
        except json.JSONDecodeError:
            dotted[key] = value  # a plain string
    return dot_to_dict(dotted)


def _format_from_name(name: str, default: str) -> str:
    for suffix, fmt in ((".jsonl", "jsonl"), (".conll", "conll"), (".spacy", "docbin"), (".txt", "txt")):
        if name.endswith(suffix):
            return fmt
    return default


def run_train(args) -> int:
    from ner.training.loop import train

    result = train(args.recipe, output=args.output, epochs=args.epochs, limit=args.limit, seed=args.seed)
    print(f"best dev F1 {100 * result['best_dev_f1']:.2f}; pipeline saved to {result['output']}")
    return 0


def run_evaluate(args) -> int:
    import json
    import time

    from tqdm import tqdm

    import ner
    from ner.evaluation import evaluate
    from ner.loading import PipelineError

    try:
        overrides = config_overrides(args.config)
    except ValueError as error:
        print(f"ner evaluate: {error}", file=sys.stderr)
        return 2
    try:
        nlp = ner.load(args.pipeline, backend=args.backend, config=overrides, device=args.device)
    except PipelineError as error:
        print(f"ner evaluate: {error}", file=sys.stderr)
        return 2
    label_map = nlp.meta.get("label_map") or {}  # dataset label → pipeline label, e.g. GENE → Gene
    sources = _evaluation_sources(args.data)
    results = {}
    for source in sources:
        records = _evaluation_records(source, args, label_map)
        labels = _evaluation_labels(nlp, source, args, label_map)
        started = time.perf_counter()
        scores = evaluate(nlp, records, batch_size=args.batch_size, labels=labels,
                          progress=lambda it, total: tqdm(it, total=total, unit="doc", mininterval=5, file=sys.stderr))
        seconds = time.perf_counter() - started
        n_words = sum(len(r.tokens) for r in records)
        if len(sources) > 1:
            print(f"== {source}")
        print(scores.table())
        print(f"{n_words} words in {seconds:.1f} s: {n_words / seconds:.0f} words/s")
        results[source] = {"micro": scores.micro, "per_label": scores.per_label, "words": n_words, "seconds": seconds}
    backends = sorted({getattr(getattr(c, "model", None), "backend", "torch") for _, c in nlp.pipeline if hasattr(c, "model")})
    summary = {"pipeline": args.pipeline, "backend": ",".join(backends) or "torch", "data": sources, "results": results}
    if len(sources) > 1:
        f1s = [r["micro"]["f1"] for r in results.values()]
        summary["average_f1"] = sum(f1s) / len(f1s)
        print(f"\n{'data':<28} {'F1':>7}")
        for source, r in results.items():
            print(f"{source:<28} {100 * r['micro']['f1']:7.2f}")
        print(f"{'average of ' + str(len(f1s)):<28} {100 * summary['average_f1']:7.2f}")
    if args.json_path:
        if len(sources) == 1:  # one dataset: the flat form earlier versions wrote
            summary = {**results[sources[0]], "pipeline": args.pipeline, "backend": summary["backend"], "data": sources[0]}
        with open(args.json_path, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0


def _evaluation_sources(data: list[str]) -> list[str]:
    """``dataset:split`` names and files, with ``*`` in a dataset name expanded."""
    import fnmatch
    from pathlib import Path

    sources = []
    for item in data:
        if "*" in item and ":" in item and not Path(item).exists():
            from ner.datasets import list_datasets

            pattern, split = item.split(":", 1)
            matched = [f"{name}:{split}" for name in list_datasets() if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise SystemExit(f"ner evaluate: no dataset matches {pattern!r}")
            sources.extend(matched)
        else:
            sources.append(item)
    return sources


def _evaluation_labels(nlp, source, args, label_map=None):
    """The labels to predict: --labels, else the dataset's own when the pipeline knows them
    all (a pipeline trained on several label schemes is scored on the dataset's scheme)."""
    if args.labels:
        return parse_labels(args.labels)
    from pathlib import Path

    if ":" not in source or Path(source).exists():
        return None
    from ner.components import SpanNER
    from ner.datasets import dataset_info
    from ner.decoding import dataset_labels
    from ner.zero_shot_component import ZeroShotNER

    labels = [(label_map or {}).get(l, l) for l in dataset_info(source.split(":")[0])["labels"] or []]
    if any(isinstance(c, ZeroShotNER) for _, c in nlp.pipeline):
        return labels or None  # a zero-shot pipeline is asked for the dataset's own types, by name
    known = {l for _, c in nlp.pipeline if isinstance(c, SpanNER) for l in c.labels}
    labels = dataset_labels(labels, source.split(":")[0], known)  # a corpus variant where one was trained
    return labels if known and labels and set(labels) <= known else None


def _evaluation_records(source, args, label_map=None):
    from pathlib import Path

    if ":" in source and not Path(source).exists():
        from ner.datasets import load_source

        records = load_source(source)  # dataset:split, or its first N records (:N) or records A to B (:A-B)
    else:
        from ner.readers import read_records

        records = read_records(source, format=args.format)
    records = list(records)[: args.limit] if args.limit else list(records)
    if label_map:
        for record in records:
            record.spans = [type(s)(s.start, s.end, label_map.get(s.label, s.label)) for s in record.spans]
    if args.sentences_per_doc != 1:  # group_records rejects sizes under 1 with a clear error
        from ner.spans import group_records

        records = list(group_records(records, args.sentences_per_doc))
    return records


if __name__ == "__main__":
    sys.exit(main())
