"""A document as HTML with its entities marked in their label's colour, score beside the
label (displaCy's look, without a dependency on it). Everything from the text is escaped:
the text is the user's, and Streamlit renders this HTML as it is."""
from __future__ import annotations

import hashlib
from html import escape

from ner.spans import Span

# Light backgrounds that keep black text readable; a label always gets the same one.
PALETTE = ("#7aecec", "#feca74", "#aa9cfc", "#bfe1d9", "#ff9561", "#c887fb", "#9cc9cc", "#ffeb80",
           "#e4e7d2", "#f0d0ff", "#bfeeb7", "#ffb3b3")


def label_colour(label: str) -> str:
    # A hash rather than the order labels appear in, so colours stay put across documents.
    return PALETTE[int(hashlib.md5(label.encode("utf-8")).hexdigest(), 16) % len(PALETTE)]


def score_text(score: float | None) -> str:
    return "" if score is None else f"{score:.2f}"


def label_badge(label: str, score: float | None = None) -> str:
    score_html = f' <span style="opacity:0.7">{score_text(score)}</span>' if score is not None else ""
    return (f'<span style="font-size:0.75em;font-weight:600;padding:0 0.3em;border-radius:0.25em;'
            f'background:rgba(255,255,255,0.6);white-space:nowrap">{escape(label)}{score_html}</span>')


def render_entities(text: str, spans: list[Span]) -> str:
    """``text`` as HTML, each span a coloured ``<mark>`` with its label and score. Where
    spans overlap (nested input), the first one wins on the page; all stay in the list."""
    parts, cursor = [], 0
    for span in sorted(spans):
        if span.start < cursor:
            continue
        parts.append(escape(text[cursor:span.start]))
        parts.append(
            f'<mark data-label="{escape(span.label)}" style="background:{label_colour(span.label)};'
            f'padding:0.1em 0.3em;border-radius:0.35em;line-height:2">'
            f"{escape(text[span.start:span.end])} {label_badge(span.label, span.score)}</mark>"
        )
        cursor = span.end
    parts.append(escape(text[cursor:]))
    style = "white-space:pre-wrap;line-height:2.2;font-size:1.1rem"  # pre-wrap: the text's own line breaks
    return f'<div class="ner-document" style="{style}">{"".join(parts)}</div>'
