"""``ner tag --engine ray``: the same tagging job on Ray Data, on a local Ray cluster
or an existing one (``--address``).

Input lines are read by Ray (``LineSource``, one read task per file, streaming), tagged by
a pool of actors that each load the pipeline once (``map_batches``), and come back to
the driver in input order, where the same ``JobFiles`` as the local engine write the
output, the errors file and the progress that ``--resume`` goes on from. The results
are small next to the time it takes to compute them (a core tags about a thousand
words a second), so streaming them through the driver costs nothing a cluster would
notice, and the output stays one file in input order.

Why not ``ray.data.read_json`` or ``read_text``: ``read_json`` fails a whole file on one
invalid line, and ``read_text`` decodes a whole file at once (one invalid UTF-8 byte
fails the file), splits on Unicode line breaks that JSON strings may hold (U+2028), and
keeps no line numbers. ``LineSource`` hands each line's bytes with its number to the
shared ``parse_line``, so a bad record is rejected exactly as the local engine rejects it.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import ray
from ray.data.datasource import FileBasedDatasource

from ner.tag_job import (
    LINE_FORMATS,
    Counts,
    JobError,
    Limits,
    Summary,
    TagJob,
    numbered_lines,
    parse_line,
    settle_chunk,
)


def run_on_ray(job: TagJob, *, address: str | None = None, workers: int | None = None) -> Summary:
    """Run ``job`` on Ray Data: a new local Ray cluster unless ``address`` (or
    ``RAY_ADDRESS``) names one; ``workers`` actors (default: one per CPU of the cluster)."""
    from ner.loading import check_pipeline

    if job.input == "-":
        raise JobError("--engine ray reads files (a path every Ray node can open), not stdin")
    if job.input_format not in LINE_FORMATS or job.output_format != "jsonl":
        raise JobError("--engine ray reads txt or jsonl and writes jsonl")
    if job.n_process != 1:
        raise JobError("--n-process is for the local engine; with --engine ray use --workers")
    check_pipeline(job.pipeline)  # here, before any actor starts; the actors load it
    # A directory is passed on as an absolute path: actors run in another directory.
    pipeline = str(Path(job.pipeline).resolve()) if Path(job.pipeline).is_dir() else job.pipeline
    source = job.input if "://" in job.input else str(Path(job.input).resolve())
    files = job.files(engine="ray")
    progress = files.start()
    if progress is None:
        return Summary(files.counts, complete_already=True)
    started_ray = not ray.is_initialized()
    try:
        if started_ray and address is None and not os.environ.get("RAY_ADDRESS"):
            # A local cluster for this job alone: no dashboard, and actors' logs stay in
            # /tmp/ray instead of interleaving with the summary on stderr.
            ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        elif started_ray:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-run INFO lines on stderr
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output in input order
        context.enable_progress_bars = sys.stderr.isatty()
        lines = ray.data.read_datasource(
            LineSource([source], max_line_bytes=job.limits.max_line_bytes, after=progress.done),
            **_no_cpu_reserved(ray.data.read_datasource))
        tagged = lines.map_batches(
            PipelineActor,
            fn_constructor_kwargs={"pipeline": pipeline, "input_format": job.input_format,
                                   "text_field": job.text_field, "limits": asdict(job.limits),
                                   "batch_size": job.batch_size, "labels": job.labels},
            batch_size=job.chunk_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
        )
        seconds, words = _drain(tagged, files)
    except BaseException:
        files.close()
        raise
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    counts = files.finish()
    return Summary(counts, seconds, words, progress.resumed, job.errors)


def _drain(tagged, files) -> tuple[float, int]:
    """Append each tagged batch to the job's files; the seconds from the first batch an
    actor started tagging to the last one it finished (so starting the actors and
    loading the pipeline are not counted as tagging, as in the local engine), and the
    words tagged."""
    started, finished, words = float("inf"), float("-inf"), 0
    for batch in tagged.iter_batches(batch_size=None, batch_format="numpy"):
        for row in range(len(batch["output"])):
            counts = Counts(**json.loads(batch["counts"][row]))
            files.append(bytes(batch["output"][row]), json.loads(batch["errors"][row]),
                         json.loads(batch["done"][row]), counts)
            words += counts.words
            started = min(started, float(batch["started"][row]))
            finished = max(finished, float(batch["finished"][row]))
    return max(finished - started, 0.0), words


def _no_cpu_reserved(read) -> dict:
    """Read tasks reserve no CPU: reading is cheap next to tagging, and a read task
    that asks for a whole CPU waits forever for one when the actors hold them all.
    (Ray 2.40 takes the option in ``ray_remote_args``; later versions by name.)"""
    if "num_cpus" in inspect.signature(read).parameters:
        return {"num_cpus": 0}
    return {"ray_remote_args": {"num_cpus": 0}}


class PipelineActor:
    """A Ray actor that loads the pipeline once and tags batches of input lines; each
    batch comes back as one row: its output bytes, its rejections, how far it reached
    in each input file, its counts, and when it was tagged."""

    def __init__(self, pipeline: str, input_format: str, text_field: str, limits: dict, batch_size: int,
                 labels: list[str] | None = None):
        import torch

        from ner.tagging import LongRunningPipeline

        torch.set_num_threads(1)  # one actor per CPU: more threads would only contend
        self.pipeline = LongRunningPipeline(pipeline, labels=labels)
        self.input_format, self.text_field = input_format, text_field
        self.limits, self.batch_size = Limits(**limits), batch_size

    def __call__(self, batch: dict) -> dict:
        from ner.tagging import tag_or_reject

        started = time.time()  # wall-clock time: comparable across the actors of a cluster
        entries, done = [], {}
        for path, line, data, size in zip(batch["path"], batch["line"], batch["data"], batch["size"]):
            path, line = str(path), int(line)
            done[path] = max(done.get(path, 0), line)
            entry = parse_line(path, line, None if data is None else bytes(data), int(size),
                               format=self.input_format, text_field=self.text_field, limits=self.limits)
            if entry is not None:
                entries.append(entry)
        records = [entry.record for entry in entries if entry.reason is None]
        results = tag_or_reject(self.pipeline.nlp, records, batch_size=self.batch_size)
        output, errors, counts = settle_chunk(entries, results, "jsonl", None)
        return {"output": [output], "errors": [json.dumps([e.error_json() for e in errors], ensure_ascii=False)],
                "done": [json.dumps(done)], "counts": [json.dumps(asdict(counts))],
                "started": [started], "finished": [time.time()]}


class LineSource(FileBasedDatasource):
    """Ray Data datasource: each line of each file as a row ``{path, line, data, size}``
    (``data`` None for a line over ``max_line_bytes``), skipping the lines at or before
    ``after[path]`` (a resumed job's progress)."""

    ROWS_PER_BLOCK = 1_000

    def __init__(self, paths, *, max_line_bytes: int | None, after: dict | None = None, **options):
        super().__init__(paths, **options)
        self.max_line_bytes, self.after = max_line_bytes, dict(after or {})

    def _read_stream(self, f, path: str):
        import pyarrow as pa

        skip = self.after.get(path, 0)
        rows = {"path": [], "line": [], "data": [], "size": []}
        for line_number, data, size in numbered_lines(f, self.max_line_bytes):
            if line_number <= skip:
                continue
            for key, value in zip(rows, (path, line_number, data, size)):
                rows[key].append(value)
            if len(rows["line"]) >= self.ROWS_PER_BLOCK:
                yield pa.table(rows, schema=_schema())
                rows = {key: [] for key in rows}
        if rows["line"]:
            yield pa.table(rows, schema=_schema())


def _schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("line", pa.int64()), ("data", pa.large_binary()), ("size", pa.int64())])
