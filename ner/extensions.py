"""The Doc and Span extension attributes the suite sets, installed once, idempotently."""
from spacy.tokens import Doc, Span


def install_extensions() -> None:
    if not Doc.has_extension("ner_windows"):
        # How the encoder saw the document: windows used, window size, stride (subwords).
        Doc.set_extension("ner_windows", default=None)
    if not Span.has_extension("score"):
        Span.set_extension("score", default=None)
