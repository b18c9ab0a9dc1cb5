"""LLM distillation: a teacher annotates raw text, the suite keeps what aligns, counts the rest.

- ``tasks``: versioned prompt templates (``data/prompts/``) and their parsers;
- ``backends``: the teachers (an OpenAI-compatible HTTP server, a local causal LM);
- ``rule_teacher``: a deterministic rule-based teacher for tests and measurements;
- ``server``: an OpenAI-compatible HTTP server for any of those teachers;
- ``cache``: answers on disk, keyed by (model, prompt version, passage);
- ``alignment``: answer strings → character offsets;
- ``annotate``: the run (concurrency, retries, counts, dataset card);
- ``command``: ``ner distill annotate`` and ``ner distill serve``.
"""
