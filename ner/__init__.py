"""ner-suite: named-entity recognition pipelines for spaCy.

    import ner
    nlp = ner.load("en")
"""
__version__ = "0.1.0"


def load(name_or_path="en", **options):
    """The pipeline ``name_or_path`` (a shipped name or a directory) as a spaCy Language."""
    from ner.loading import load as _load

    return _load(name_or_path, **options)
