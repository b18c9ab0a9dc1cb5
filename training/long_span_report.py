"""Issue 4's measurements in one run: the long-span pipeline against its width-12
baseline (same encoder, data, epochs), written as a table, a JSON file and a plot.

    python -m ner.training.long_span_report --long-span runs/long-span \\
        --baseline runs/long-span-baseline --out pipelines/long-span

1. Micro F1 per test set and F1 per entity-length bucket (1-3, 4-12, 13-50, >50 words).
2. Peak memory and time against document length (1k, 5k, 20k, 50k words), each in a
   fresh process, memory sampled while the pipeline runs.
3. A 50,000-word document whose last part holds an entity that the pipeline finds in
   that part alone: is it still found at the end? (also for ``en``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS = ["sener_long_ner/scholar-xl:test", "sener_long_ner/profiling-07:test", "scirex:test"]
LENGTHS = [1_000, 5_000, 20_000, 50_000]


def filler_words(n_words: int) -> list[str]:
    """Real words from the Scholar-XL test pages, repeated up to ``n_words``."""
    from ner.datasets import load_dataset

    words = [w for record in load_dataset("sener_long_ner/scholar-xl", "test") for w in record.words]
    return (words * (n_words // len(words) + 1))[:n_words]


def run_pipeline(nlp, words: list[str]):
    from spacy.tokens import Doc

    doc = Doc(nlp.vocab, words=words)
    for _, component in nlp.pipeline:
        doc = component(doc)
    return doc


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def measure(pipeline: str, n_words: int) -> dict:
    """Seconds and peak resident memory above the loaded pipeline for one document."""
    import torch

    import ner

    torch.set_num_threads(1)
    nlp = ner.load(pipeline)
    run_pipeline(nlp, filler_words(200))  # warm-up
    words = filler_words(n_words)
    before, peak, done = current_rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], current_rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    doc = run_pipeline(nlp, words)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {"pipeline": pipeline, "words": n_words, "seconds": seconds,
            "peak_mb_above_loaded": max(peak[0] - before, 0) / 2**20, "windows": doc._.ner_windows}


def measure_in_fresh_process(pipeline: str, n_words: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "ner.training.long_span_report", "--measure", pipeline, str(n_words)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def found_at_the_end(pipeline: str, dataset: str, n_words: int = 50_000) -> dict:
    """Find a test record whose entities the pipeline finds on their own, put it after
    ``n_words`` of other text, and check the same entities come back, shifted."""
    import ner
    from ner.datasets import load_dataset
    from ner.spans import char_spans_to_word_spans

    nlp = ner.load(pipeline)
    for record in load_dataset(*dataset.split(":")):
        gold = set(char_spans_to_word_spans(record.tokens, record.spans))
        alone = {(e.start, e.end, e.label_) for e in run_pipeline(nlp, record.words).ents} & gold
        if alone:
            break
    else:
        return {"pipeline": pipeline, "found": False, "why": "no test record whose entities it finds alone"}
    filler = filler_words(n_words - len(record.words))
    doc = run_pipeline(nlp, filler + record.words)
    shifted = {(s + len(filler), e + len(filler), l) for s, e, l in alone}
    at_end = {(e.start, e.end, e.label_) for e in doc.ents}
    last = max(shifted)
    return {"pipeline": pipeline, "words": len(doc), "last_entity": [doc[last[0]:last[1]].text, last[2], last[0]],
            "found": last in at_end, "found_of_alone": [len(shifted & at_end), len(shifted)],
            "windows": doc._.ner_windows}


def tune_threshold(nlp, data: str) -> float:
    """The decoding threshold with the best F1 on ``data`` (a dev split; the same
    procedure for every pipeline compared)."""
    from ner.components import SpanNER
    from ner.datasets import dataset_info, load_dataset
    from ner.evaluation import best_threshold

    name, split, *cap = data.split(":")
    records = list(load_dataset(name, split))[: int(cap[0]) if cap else None]
    for record in records:  # decode the dataset's own labels only, as in the test scores
        record.labels = dataset_info(name)["labels"]
    component = next(c for _, c in nlp.pipeline if isinstance(c, SpanNER))
    threshold, _ = best_threshold(component, records, thresholds=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5))
    component.cfg["threshold"] = threshold
    return threshold


def f1_table(pipelines: dict, tune_on: str | None) -> dict:
    import ner
    from ner.datasets import dataset_info, load_dataset
    from ner.evaluation import evaluate

    results = {}
    for name, path in pipelines.items():
        nlp = ner.load(path)
        if tune_on:
            results[f"{name}|threshold"] = tune_threshold(nlp, tune_on)
            print(name, "threshold", results[f"{name}|threshold"], flush=True)
        for data in TESTS:
            dataset, split = data.split(":")
            records = list(load_dataset(dataset, split))
            started = time.perf_counter()
            scores = evaluate(nlp, records, batch_size=4, labels=dataset_info(dataset)["labels"], by_length=True)
            results[f"{name}|{dataset}"] = {
                "micro": scores.micro, "seconds": time.perf_counter() - started,
                "words": sum(len(r.tokens) for r in records),
                "by_length": {bucket: s.micro for bucket, s in scores.by_length.items()}}
            print(name, dataset, f"{100 * scores.micro['f1']:.2f}", flush=True)
    return results


def plot(memory: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in sorted({m["name"] for m in memory}):
        rows = sorted((m for m in memory if m["name"] == name), key=lambda m: m["words"])
        left.plot([m["words"] for m in rows], [m["peak_mb_above_loaded"] for m in rows], marker="o", label=name)
        right.plot([m["words"] for m in rows], [m["seconds"] for m in rows], marker="o", label=name)
    left.set(xlabel="document length (words)", ylabel="peak memory above loaded pipeline (MB)")
    right.set(xlabel="document length (words)", ylabel="seconds (1 thread)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-span", default="runs/long-span")
    parser.add_argument("--baseline", default="runs/long-span-baseline")
    parser.add_argument("--en", default="en")
    parser.add_argument("--out", default="pipelines/long-span")
    parser.add_argument("--measure", nargs=2, metavar=("PIPELINE", "WORDS"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-f1", action="store_true")
    parser.add_argument("--cost-only", nargs="*", default=[], metavar="NAME",
                        help="pipelines measured for memory/time only (e.g. an untrained baseline)")
    parser.add_argument("--tune-on", default="scirex:dev:6", help="dev data to choose each pipeline's threshold on")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return 0
    pipelines = {"long-span": args.long_span, "baseline-w12": args.baseline}
    report = {"pipelines": pipelines}
    if not args.skip_f1:
        report["f1"] = f1_table({n: p for n, p in pipelines.items() if n not in args.cost_only}, args.tune_on)
    report["memory"] = []
    for n_words in LENGTHS:  # interleaved: both pipelines at each length
        for name, path in pipelines.items():
            row = measure_in_fresh_process(path, n_words) | {"name": name}
            report["memory"].append(row)
            print(json.dumps(row), flush=True)
    report["end_of_50k"] = [found_at_the_end(args.long_span, "sener_long_ner/scholar-xl:test"),
                            found_at_the_end(args.long_span, "scirex:test"),
                            found_at_the_end(args.en, "conll2003_en:test")]
    print(json.dumps(report["end_of_50k"], indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "long_documents.json").write_text(json.dumps(report, indent=2))
    plot(report["memory"], out / "long_documents.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
