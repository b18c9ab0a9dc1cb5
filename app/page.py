"""The annotation page. ``ner demo`` starts it; by hand:
``NER_DEMO_DB=annotations.sqlite NER_DEMO_PIPELINES=en streamlit run app/page.py``.

Streamlit reruns this script top to bottom on every click. Everything that must survive
a reload lives in the SQLite store; buttons act through callbacks, which run (and write
their decision) before the rerun draws the page again. The page holds no logic of its
own beyond layout: see store.py, corrections.py, predictions.py, exports.py, charts.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

import ner
from ner.app import charts, corrections, predictions
from ner.app.exports import FORMATS, export_bytes
from ner.app.highlight import label_badge, label_colour, render_entities
from ner.app.store import ACCEPTED, FROM_FILE, PENDING, REJECTED, Store
from ner.app.uploads import MAX_UPLOAD_BYTES, SUFFIXES, UploadError, pasted_record, read_upload
from ner.loading import shipped_pipelines

PASTED = "pasted"
# Documents tagged in one pipeline call ahead of the annotator: the next ones are ready
# when the current one is accepted, and the file's charts fill as the annotator goes.
LOOKAHEAD = 8


# --------------------------------------------------------------------------- resources


@st.cache_resource(show_spinner="Loading the pipeline…")
def load_pipeline(name: str):
    return ner.load(name)


@st.cache_resource
def open_store(path: str) -> Store:
    return Store(path)


@st.cache_data(max_entries=16, show_spinner=False)
def exported(database: str, source: str | None, format: str, version: tuple, _nlp) -> tuple[bytes, int]:
    # ``version`` changes with every decision, so a cached file is never stale.
    records = open_store(database).reviewed(source)
    return export_bytes(records, format, _nlp), len(records)


def configured_pipelines() -> list[str]:
    return [p for p in os.environ.get("NER_DEMO_PIPELINES", "").split(os.pathsep) if p] or shipped_pipelines()


# --------------------------------------------------------------------------- callbacks


def changed(message: str | None = None, icon: str = ":material/check_circle:") -> None:
    # New widget keys after every decision: a widget drawn for the old spans must not
    # carry its value over to the new ones.
    st.session_state["revision"] = st.session_state.get("revision", 0) + 1
    if message:
        st.session_state["toast"] = (message, icon)


def decide(store: Store, document_id: int, action: str, status: str) -> None:
    document = store.decide(document_id, action, status=status)
    changed(f"{action.capitalize()}ed {document.key}")


def delete(store: Store, document_id: int, span) -> None:
    document = store.document(document_id)
    if span in document.spans:
        store.decide(document_id, "delete", spans=corrections.delete_span(document.spans, span))
        changed(f"Deleted “{document.text[span.start:span.end]}”", ":material/delete:")


def relabel(store: Store, document_id: int, span, widget: str) -> None:
    label = (st.session_state.get(widget) or "").strip()
    document = store.document(document_id)
    if label and label != span.label and span in document.spans:
        store.decide(document_id, "relabel", spans=corrections.relabel_span(document.spans, span, label))
        changed(f"“{document.text[span.start:span.end]}” is now {label}", ":material/label:")


def add(store: Store, document_id: int, words_widget: str, label_widget: str) -> None:
    document = store.document(document_id)
    first, last = st.session_state[words_widget]
    try:
        span = corrections.span_over_words(document.tokens, first, last, st.session_state.get(label_widget) or "")
    except ValueError as error:
        st.session_state["toast"] = (str(error), ":material/warning:")
        return
    store.decide(document_id, "add", spans=corrections.add_span(document.spans, span))
    changed(f"Added “{document.text[span.start:span.end]}” as {span.label}", ":material/add_circle:")


def undo(store: Store, source: str) -> None:
    document = store.undo(source)
    if document is not None:
        changed(f"Undone: back to {document.key}", ":material/undo:")


# --------------------------------------------------------------------------- sections


def sidebar(pipelines: list[str]):
    with st.sidebar:
        st.title("Annotate")
        st.caption("Look at entities, correct them, export them.")
        st.header("Pipeline")
        name = st.selectbox("Pipeline", pipelines, key="pipeline", label_visibility="collapsed",
                            format_func=lambda p: Path(p).name if os.sep in p else p)
        nlp = load_pipeline(name)
        labels = []
        if predictions.is_zero_shot(nlp):
            defaults = predictions.pipeline_labels(nlp)  # what the pipeline looks for when told nothing
            typed = st.text_input("Labels", key="zero_shot_labels",
                                  placeholder=", ".join(defaults) or "person, city, drug",
                                  help="The entity types to look for, separated by commas.")
            labels = predictions.parse_labels(typed) or defaults
        threshold = st.slider("Threshold", 0.05, 0.95, predictions.default_threshold(nlp), 0.05,
                              key=f"threshold-{name}",
                              help="Entities scoring below it are not shown. Documents you have not "
                                   "touched are tagged again when it moves.")
        options = predictions.tagging_options(nlp, round(threshold, 2), labels)
    return name, nlp, labels, options


def take_input(store: Store) -> None:
    paste, upload = st.tabs(["Paste text", "Upload a file"])
    with paste:
        with st.form("paste", clear_on_submit=True, border=False):
            text = st.text_area("Text", height=90, placeholder="Paste a text to tag…", label_visibility="collapsed")
            submitted = st.form_submit_button("Tag this text", type="primary")
        if submitted:
            take_pasted(store, text)
    with upload:
        file = st.file_uploader(
            f".txt (one document per line) or .jsonl (one {{\"text\": …}} per line, entities optional); "
            f"up to {MAX_UPLOAD_BYTES // 2**20} MB", type=list(SUFFIXES), key="upload")
        if file is not None:
            take_upload(store, file)


def take_pasted(store: Store, text: str) -> None:
    try:
        record = pasted_record(text)
    except UploadError as error:
        st.error(str(error))
        return
    known = store.find(record.text)
    if known is not None and known.status != PENDING:
        st.warning(f"This text was already reviewed ({known.status}, in {known.source}); it is not offered again.")
        return
    if known is not None:
        st.info(f"This text is already waiting in {known.source}.")
        st.session_state["source"] = known.source
        return
    store.add(PASTED, [record])
    ahead = store.progress(PASTED).pending - 1
    if ahead:
        st.info(f"Queued after {ahead} pasted text(s) still to review.")
    st.session_state["source"] = PASTED


def take_upload(store: Store, file) -> None:
    # A file is read once per upload; the uploader hands it back on every rerun.
    messages = st.session_state.setdefault("uploads", {})
    if file.file_id not in messages:
        try:
            added = store.add(file.name, read_upload(file.name, file.getvalue()))
        except UploadError as error:
            messages[file.file_id] = ("error", str(error))
        else:
            skipped = f"; {added.duplicates} already seen, not offered again" if added.duplicates else ""
            messages[file.file_id] = ("success", f"{file.name}: {added.added} new document(s){skipped}.")
            st.session_state["source"] = file.name
    kind, message = messages[file.file_id]
    (st.error if kind == "error" else st.success)(message)


def choose_source(store: Store) -> str | None:
    sources = store.sources()
    if not sources:
        return None
    if st.session_state.get("source") not in sources:
        st.session_state["source"] = sources[0]  # after a reload: where the last decision was made
    with st.sidebar:
        st.header("Reviewing")
        return st.selectbox("File", sources, key="source", label_visibility="collapsed")


def tag_ahead(store: Store, nlp, source: str, name: str, options: dict) -> None:
    """Tag the next documents with the current settings, unless the annotator has touched
    them or their spans came with the file."""
    key = predictions.settings_key(name, options)
    upcoming = store.pending(source, LOOKAHEAD)
    stale = [d for d in upcoming if d.decisions == 0 and d.tagged_with not in (key, FROM_FILE)]
    if stale:
        with st.spinner(f"Tagging {len(stale)} document(s)…"):
            for document, tagged in zip(stale, predictions.tag(nlp, [d.text for d in stale], options)):
                store.save_tagging(document.id, tagged.tokens, tagged.spans, key)
    for document in upcoming:
        if document.tokens is None and document.tagged_with == FROM_FILE:
            store.save_tagging(document.id, predictions.words(nlp, document.text), None, FROM_FILE)


def show_document(store: Store, document, labels: list[str], position: int, total: int) -> None:
    st.subheader(f"Document {position} of {total}")
    st.caption(document.key)
    st.markdown(render_entities(document.text, document.spans), unsafe_allow_html=True)
    revision = st.session_state.get("revision", 0)

    st.markdown("**Entities**" if document.spans else "**Entities** — none found; add one below.")
    for index, span in enumerate(document.spans):
        # A keyed container per row: the browser test (and CSS) find row i as .st-key-entity-i.
        row = st.container(key=f"entity-{index}")
        text_column, label_column, delete_column = row.columns([5, 3, 1], vertical_alignment="center")
        text_column.markdown(f"{document.text[span.start:span.end]} {label_badge(span.label, span.score)}",
                             unsafe_allow_html=True)
        options = list(dict.fromkeys([span.label, *labels]))
        widget = f"label-{document.id}-{index}-{revision}"
        label_column.selectbox("Label", options, key=widget, label_visibility="collapsed", accept_new_options=True,
                               on_change=relabel, args=(store, document.id, span, widget))
        delete_column.button("Delete", key=f"delete-{document.id}-{index}-{revision}", on_click=delete,
                             args=(store, document.id, span))

    words = [document.text[start:end] for start, end in document.tokens]
    with st.form(f"add-{document.id}-{revision}", border=True):
        st.markdown("**Add an entity**: choose its first and last word")
        words_widget, label_widget = f"words-{document.id}-{revision}", f"new-label-{document.id}-{revision}"
        st.select_slider("Words", options=range(len(words)), value=(0, 0), key=words_widget,
                         format_func=lambda i: f"{i + 1}: {words[i]}", label_visibility="collapsed")
        st.selectbox("Label of the new entity", labels or ["ENTITY"], key=label_widget, accept_new_options=True)
        st.form_submit_button("Add entity", on_click=add, args=(store, document.id, words_widget, label_widget))


def show_actions(store: Store, document, source: str) -> None:
    """Accept, reject (when a document is open) and undo (also once the file is done)."""
    accept_column, reject_column, undo_column = st.columns(3)
    if document is not None:
        revision = st.session_state.get("revision", 0)
        accept_column.button("Accept", type="primary", shortcut="A", key=f"accept-{document.id}-{revision}",
                             on_click=decide, args=(store, document.id, "accept", ACCEPTED), width="stretch")
        reject_column.button("Reject", shortcut="X", key=f"reject-{document.id}-{revision}",
                             on_click=decide, args=(store, document.id, "reject", REJECTED), width="stretch")
    last = store.last_decision(source)
    undo_column.button("Undo" + (f" ({last[1]})" if last else ""), shortcut="Z", disabled=last is None,
                       on_click=undo, args=(store, source), key="undo", width="stretch")


def show_charts(documents) -> None:
    st.subheader("This file at a glance")
    tagged = sum(1 for d in documents if d.tagged_with is not None or d.decisions)
    st.caption(f"{tagged} of {len(documents)} document(s) tagged so far (each is tagged as you reach it); "
               "rejected ones left out.")
    counts = charts.label_counts(documents)
    histogram = charts.score_histogram(documents)
    left, right = st.columns(2)
    with left:
        st.markdown("**Entities per label**")
        if counts:
            # One column per label so that each bar takes its label's colour from the text above.
            frame = pd.DataFrame({label: [count if other == label else 0 for other in counts]
                                  for label, count in counts.items()}, index=list(counts))
            st.bar_chart(frame, color=[label_colour(label) for label in frame.columns], height=240,
                         horizontal=True, x_label="", y_label="entities")  # x: the frame's index, drawn upright
        else:
            st.caption("No entities yet.")
    with right:
        st.markdown("**Scores per label**")
        if histogram:
            frame = pd.DataFrame(histogram, index=charts.bin_names())
            st.bar_chart(frame, color=[label_colour(label) for label in frame.columns], height=240,
                         x_label="score (from)", y_label="entities")
        else:
            st.caption("No scored entities yet.")


def show_exports(store: Store, nlp, source: str) -> None:
    st.subheader("Export the accepted documents")
    everything = st.toggle("All files, not only this one", key="export_all")
    scope = None if everything else source
    stem = "annotations" if everything else Path(source).stem
    columns = st.columns(len(FORMATS))
    for column, export in zip(columns, FORMATS):
        try:
            data, count = exported(str(store.path), scope, export.name, store.version(), nlp)
        except ValueError as error:
            column.error(f"{export.title}: {error}")
            continue
        column.download_button(f"{export.title} ({count})", data, file_name=stem + export.suffix, mime=export.mime,
                               key=f"export-{export.name}", disabled=count == 0, on_click="ignore",
                               width="stretch")


# --------------------------------------------------------------------------- the page


def main() -> None:
    st.set_page_config(page_title="ner-suite · annotate", page_icon=":material/label:", layout="wide")
    store = open_store(os.environ.get("NER_DEMO_DB", "annotations.sqlite"))
    name, nlp, zero_shot_labels, options = sidebar(configured_pipelines())
    if "toast" in st.session_state:
        message, icon = st.session_state.pop("toast")
        st.toast(message, icon=icon)

    take_input(store)
    source = choose_source(store)
    if source is None:
        st.info("Paste a text or upload a file to start.")
        return
    zero_shot = predictions.is_zero_shot(nlp)
    if zero_shot and not zero_shot_labels:
        st.info("This pipeline finds the entity types you name: type some labels in the sidebar.")
        return

    tag_ahead(store, nlp, source, name, options)
    documents = store.documents(source)
    progress = store.progress(source)
    st.progress(progress.reviewed / progress.total,
                text=f"**{source}**: {progress.reviewed} of {progress.total} reviewed · "
                     f"{progress.accepted} accepted · {progress.rejected} rejected")
    current = next((d for d in documents if d.status == PENDING), None)
    # Labels offered when correcting: asked for, known to the pipeline, or already used here.
    labels = list(dict.fromkeys([*zero_shot_labels, *predictions.pipeline_labels(nlp),
                                 *charts.label_counts(documents)]))
    if current is None:
        st.success("Every document here is reviewed. Export them below, or add more.")
    else:
        show_document(store, current, labels, documents.index(current) + 1, len(documents))
    show_actions(store, current, source)

    show_charts(documents)
    show_exports(store, nlp, source)


main()
