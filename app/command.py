"""``ner demo``: start the Streamlit annotation page (``page.py``) on this machine.

The page learns its settings from environment variables (``NER_DEMO_DB``,
``NER_DEMO_PIPELINES``: set here, read by the page) rather than script arguments, so that
Streamlit's test harness runs the same page with other settings.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PAGE = Path(__file__).with_name("page.py")
# Streamlit refuses larger uploads itself; files between the page's own cap and this one
# reach the page, which says what to do instead.
STREAMLIT_UPLOAD_LIMIT_MB = 25


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--db", default="annotations.sqlite",
                        help="SQLite file keeping every decision (created when missing)")
    parser.add_argument("--pipeline", action="append", default=None, metavar="NAME|PATH",
                        help="a pipeline to offer, shipped name or directory; repeat for several "
                             "(default: every shipped pipeline)")


def run(args) -> int:
    try:
        environment = demo_environment(args)
    except ValueError as error:
        print(f"ner demo: {error}", file=sys.stderr)
        return 2
    os.environ.update(environment)
    from streamlit.web import cli as streamlit_cli

    print(f"ner demo: http://{args.host}:{args.port}  (decisions saved in {environment['NER_DEMO_DB']})",
          file=sys.stderr)
    # The same as `streamlit run page.py --server.port ...`, in this process, so that
    # stopping `ner demo` stops the server.
    streamlit_cli.main.main(["run", str(PAGE), *streamlit_options(args)], standalone_mode=False)
    return 0


def demo_environment(args) -> dict[str, str]:
    """The page's settings: the database path and the pipelines, checked now so that a
    typo fails here rather than in the browser."""
    from ner.loading import pipeline_path, shipped_pipelines

    shipped = shipped_pipelines()
    pipelines = []
    for name in args.pipeline or shipped:
        path = pipeline_path(name)  # ValueError naming the shipped ones when unknown
        pipelines.append(name if name in shipped and not Path(name).is_dir() else str(path.resolve()))
    if not pipelines:
        raise ValueError("no pipeline to offer: pass --pipeline NAME|PATH")
    database = Path(args.db).expanduser().resolve()
    if not database.parent.is_dir():
        raise ValueError(f"no folder {database.parent} for the database")
    return {"NER_DEMO_DB": str(database), "NER_DEMO_PIPELINES": os.pathsep.join(pipelines)}


def streamlit_options(args) -> list[str]:
    return [
        "--server.address", args.host,
        "--server.port", str(args.port),
        "--server.headless", "true",  # no browser opened on the server
        "--server.fileWatcherType", "none",  # a demo, not a development session
        "--server.maxUploadSize", str(STREAMLIT_UPLOAD_LIMIT_MB),
        "--browser.gatherUsageStats", "false",  # nothing leaves this machine
        "--client.toolbarMode", "viewer",  # no "Deploy" or developer menu for annotators
        "--theme.base", "light",
    ]
