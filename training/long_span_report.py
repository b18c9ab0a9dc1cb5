"""Issue 4's measurements in one run: the long-span pipeline against its width-12
baseline (same encoder, data, epochs), written as a table, a JSON file and a plot.

    python -m ner.training.long_span_report --long-span runs/long-span \\
        --baseline runs/long-span-baseline --out pipelines/long-span
    (F1 only, a few records per set: ... --skip-costs --limit 2 --out runs/ls-smoke-report)

1. Micro F1 per test set and F1 per entity-length bucket (1-3, 4-12, 13-50, >50 words,
   and >12, issue 4's target), written to long_span_f1.json as soon as they are known.
   Each pipeline's decoding threshold (and a boundary head's inside rule) is the one with
   the best mean per-dataset F1 on one shared dev set (default: long-span.toml's [data]
   dev, the carved in-domain dev of Scholar-XL, Profiling-07 and SciREX); every record is
   decoded on its own dataset's labels, nested for SeNER (its mentions nest), flat for
   SciREX. Spans are scored as decoded (not through ``doc.ents``, which would flatten
   the nested ones).
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
RECIPE = Path(__file__).parent / "long-span.toml"  # its [data] dev is the shared dev both models are tuned on
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the training loop's grid, and 0.9
LONG = (13, None)  # issue 4's target bucket, "longer than 12 words", beside the four length buckets


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


def decoding_for(dataset: str) -> str:
    """Each test set is decoded the way its gold is annotated: SeNER's mentions nest
    (education ⊃ highest_education, contactinfo ⊃ phone, ...), SciREX's never do."""
    return "nested" if dataset.startswith("sener_long_ner/") else "flat"


def dataset_records(data: str, limit: int | None = None):
    """Records of ``dataset:split[:N]``, each with ``labels`` = its dataset's labels, the
    only ones it is decoded on (``load_split``, as in training)."""
    from ner.training.loop import load_split

    return load_split([data], limit=limit)


def decode_settings(model) -> list[tuple]:
    """(threshold, inside rule) pairs chosen among on dev: a boundary head also chooses
    its inside rule (ner.boundary_model.INSIDE_RULES); a span head has none."""
    from ner.boundary_model import INSIDE_RULES, BoundaryModel

    rules = INSIDE_RULES if isinstance(model, BoundaryModel) else (None,)
    return [(threshold, rule) for threshold in THRESHOLDS for rule in rules]


def decode(model, probs, setting, decoding: str, labels):
    from ner.boundary_model import decode_boundaries

    threshold, rule = setting
    if rule is None:
        return model.decode(probs, threshold, decoding, labels)
    return decode_boundaries(probs, model.labels, threshold, model.spec.max_length, decoding, labels, inside=rule)


def score_settings(model, data: list[str], settings, *, limit=None, batch_size: int = 4) -> dict:
    """One prediction pass over every ``dataset:split`` in ``data``; each record decoded
    on its own dataset's labels and decoding at every setting. {setting: Scores} (with
    entity-length buckets), summed over ``data``."""
    import torch

    from ner.evaluation import LENGTH_BUCKETS, Scores, add_by_length
    from ner.spans import char_spans_to_word_spans

    scores = {setting: Scores() for setting in settings}
    model.eval()
    for name in data:
        decoding = decoding_for(name.split(":")[0])
        records = sorted(dataset_records(name, limit), key=lambda r: len(r.tokens))
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            with torch.inference_mode():
                probs, _, _ = model.predict([r.words for r in chunk])
            for record, doc_probs in zip(chunk, probs):
                gold = char_spans_to_word_spans(record.tokens, record.spans)
                for setting in settings:
                    predicted = [(s, e, l) for s, e, l, _ in decode(model, doc_probs, setting, decoding, record.labels)]
                    scores[setting].add(gold, predicted)
                    add_by_length(scores[setting], gold, predicted, (*LENGTH_BUCKETS, LONG))
    return scores


def f1_table(pipelines: dict, tune_on: list[str], limit: int | None = None, backend: str | None = None) -> dict:
    """Per pipeline: the decoding setting with the best mean over the dev sets ``tune_on``
    of their micro F1 (so SciREX's dense mentions do not outvote SeNER's long ones; the
    same procedure for every pipeline), then strict micro F1 and F1 per entity-length
    bucket on each test set at that setting. ``backend``: run every pipeline on it instead
    of the one its config names (e.g. "torch", the fp32 reference)."""
    import ner
    from ner.components import SpanNER

    results = {}
    for name, path in pipelines.items():
        model = next(c for _, c in ner.load(path, backend=backend).pipeline if isinstance(c, SpanNER)).model
        started = time.perf_counter()
        settings = decode_settings(model)
        dev = {data: score_settings(model, [data], settings, limit=limit) for data in tune_on}
        mean_f1 = {s: sum(scores[s].micro["f1"] for scores in dev.values()) / len(dev) for s in settings}
        setting = max(settings, key=lambda s: mean_f1[s])
        results[f"{name}|threshold"] = setting[0]
        results[f"{name}|dev"] = {"data": tune_on, "threshold": setting[0], "inside": setting[1],
                                  "mean_f1": mean_f1[setting], "seconds": time.perf_counter() - started,
                                  "f1": {data: scores[setting].micro["f1"] for data, scores in dev.items()},
                                  "mean_f1_by_setting": {f"{t}/{r}": f for (t, r), f in mean_f1.items()}}
        print(name, "dev mean F1", f"{100 * mean_f1[setting]:.2f}", "threshold", setting[0], "inside", setting[1],
              flush=True)
        for data in TESTS:
            started = time.perf_counter()
            scores = score_settings(model, [data], [setting], limit=limit)[setting]
            dataset = data.split(":")[0]
            results[f"{name}|{dataset}"] = {
                "micro": scores.micro, "seconds": time.perf_counter() - started, "decoding": decoding_for(dataset),
                "by_length": {bucket: s.micro for bucket, s in scores.by_length.items()}}
            print(name, dataset, f"{100 * scores.micro['f1']:.2f}", flush=True)
    return results


def markdown_table(f1: dict, names: list[str]) -> str:
    """Test F1 per dataset and pipeline, overall and per entity-length bucket."""
    from ner.evaluation import LENGTH_BUCKETS, bucket_name

    buckets = [bucket_name(b) for b in (*LENGTH_BUCKETS, LONG)]
    rows = ["| dataset | pipeline | F1 | " + " | ".join(buckets) + " |", "|---|---|---|" + "---|" * len(buckets)]
    for data in TESTS:
        dataset = data.split(":")[0]
        for n in names:
            entry = f1[f"{n}|{dataset}"]
            cells = [f"{100 * entry['micro']['f1']:.2f}"] + [f"{100 * entry['by_length'][b]['f1']:.1f}" for b in buckets]
            rows.append("| " + " | ".join([dataset, n, *cells]) + " |")
    return "\n".join(rows)


def plot(memory: list[dict], path: Path) -> None:
    import matplotlib  # pip install -e ".[report]"

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
    parser.add_argument("--tune-on", nargs="+", default=None, metavar="DATASET:SPLIT[:N]",
                        help="dev data to choose each pipeline's threshold on (default: long-span.toml's [data] dev)")
    parser.add_argument("--limit", type=int, default=None, help="records per dev/test set (smoke runs)")
    parser.add_argument("--skip-costs", action="store_true", help="F1 only: no memory/time curves, no 50k-word check")
    parser.add_argument("--backend", default=None,
                        help="F1 of every pipeline on this inference backend (default: each one's config)")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return 0
    pipelines = {"long-span": args.long_span, "baseline-w12": args.baseline}
    report = {"pipelines": pipelines}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_f1:
        from ner.training.loop import read_recipe

        scored = [n for n in pipelines if n not in args.cost_only]
        report["f1"] = f1_table({n: pipelines[n] for n in scored}, args.tune_on or read_recipe(RECIPE)["data"]["dev"],
                                args.limit, args.backend)
        report["f1_table"] = markdown_table(report["f1"], scored)
        print(report["f1_table"], flush=True)
        (out / "long_span_f1.json").write_text(json.dumps(report, indent=2))
    if args.skip_costs:
        return 0
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
    (out / "long_documents.json").write_text(json.dumps(report, indent=2))
    plot(report["memory"], out / "long_documents.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
