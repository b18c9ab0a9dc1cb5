"""Prompt tasks: a versioned template (``data/prompts/<name>_v<N>.toml``) and its parser.

A task is kept apart from the backend that answers it (spacy-llm's split): the same
``universal_ner_v1`` prompt goes to a vLLM server, OpenAI or a local SmolLM2, and the parser
reads whatever comes back. A released template never changes; its id (``typed_v1``) is part
of every cache key and dataset card, so a new wording is a new file.

Teachers answer JSON, and small ones damage it: code fences, prose around the JSON, trailing
commas, Python literals (single quotes, tuples), output cut off at the token limit. The
parser repairs those and says which repairs it made, so the run can count the answer as
"repaired" rather than "parsed"; what it cannot read is rejected with a reason, never
dropped quietly.
"""
from __future__ import annotations

import ast
import importlib.resources
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{(text|labels)\}")
_MENTION_KEYS = ("text", "entity", "mention", "name", "span", "value")
_TYPE_KEYS = ("type", "label", "entity_type", "category", "tag")
_FAILED = object()


class AnswerRejected(ValueError):
    """A teacher's answer that cannot be read as a list of mentions; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class ParsedAnswer:
    """``mentions``: (mention text, type) pairs, deduplicated, in answer order;
    ``rejected``: (item, reason) for answer items that are not a usable mention;
    ``repairs``: the fixes the JSON needed (empty: it parsed as it was)."""

    mentions: list[tuple[str, str]]
    rejected: list[tuple[object, str]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PromptTask:
    name: str
    version: int
    typed: bool
    system: str
    user: str
    lowercase_types: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}_v{self.version}"

    def check_labels(self, labels: list[str] | None) -> None:
        if self.typed and not labels:
            raise ValueError(f"prompt {self.id} is typed extraction: it needs labels")
        if not self.typed and labels:
            raise ValueError(f"prompt {self.id} is open extraction: it takes no labels")

    def messages(self, text: str, labels: list[str] | None = None) -> list[dict]:
        """The chat messages asking for the entities of ``text``."""
        self.check_labels(labels)
        values = {"text": text, "labels": ", ".join(labels or [])}
        # One pass, so a passage that itself contains "{labels}" is left as it is.
        user = _PLACEHOLDER.sub(lambda match: values[match.group(1)], self.user)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def response_schema(self, labels: list[str] | None = None) -> dict:
        """The JSON schema of the answer, for servers that constrain decoding to one."""
        type_schema = {"type": "string", "enum": list(labels)} if self.typed else {"type": "string"}
        entity = {"type": "object", "properties": {"text": {"type": "string"}, "type": type_schema},
                  "required": ["text", "type"], "additionalProperties": False}
        return {"type": "object", "properties": {"entities": {"type": "array", "items": entity}},
                "required": ["entities"], "additionalProperties": False}

    def parse(self, content: str, labels: list[str] | None = None) -> ParsedAnswer:
        """Read an answer into mentions; raise AnswerRejected when nothing can be read."""
        value, repairs = read_json_answer(content)
        answer = ParsedAnswer([], repairs=repairs)
        allowed = {label.casefold(): label for label in labels or []}
        seen = set()
        for item in _answer_items(value):
            try:
                mention, kind = _mention_and_type(item)
                kind = self._checked_type(kind, allowed)
            except ValueError as error:
                answer.rejected.append((item, str(error)))
                continue
            if (mention, kind) not in seen:
                seen.add((mention, kind))
                answer.mentions.append((mention, kind))
        return answer

    def _checked_type(self, kind: str, allowed: dict[str, str]) -> str:
        if self.typed:
            if kind.casefold() not in allowed:
                raise ValueError(f"type {kind!r} was not asked for")
            return allowed[kind.casefold()]
        return kind.lower() if self.lowercase_types else kind


def load_task(name_or_path: str) -> PromptTask:
    """A task by id (``universal_ner_v1``, ``typed_v1``: ``data/prompts/<id>.toml``) or by
    the path of a TOML file of the same form."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        source = path.read_text(encoding="utf-8")
    else:
        resource = importlib.resources.files("ner.data") / "prompts" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ValueError(f"no prompt {name_or_path!r}; known: {', '.join(list_tasks())}")
        source = resource.read_text(encoding="utf-8")
    raw = tomllib.loads(source)
    missing = {"name", "version", "typed", "system", "user"} - raw.keys()
    if missing:
        raise ValueError(f"prompt {name_or_path}: missing {sorted(missing)}")
    if "{text}" not in raw["user"]:
        raise ValueError(f"prompt {name_or_path}: the user template has no {{text}}")
    return PromptTask(raw["name"], int(raw["version"]), bool(raw["typed"]), raw["system"], raw["user"],
                      bool(raw.get("lowercase_types", False)))


def list_tasks() -> list[str]:
    folder = importlib.resources.files("ner.data") / "prompts"
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".toml"))


# --------------------------------------------------------------------------- JSON repair


def read_json_answer(content: str) -> tuple[object, list[str]]:
    """Parse JSON out of a teacher's answer; return (value, the repairs it took)."""
    text, repairs = content.strip(), []
    for name, repair in _REPAIRS:
        value = _load(text)
        if value is not _FAILED:
            return value, repairs
        fixed = repair(text)
        if fixed != text:
            text = fixed
            repairs.append(name)
    value = _load(text)
    if value is not _FAILED:
        return value, repairs
    try:
        return ast.literal_eval(text), repairs + ["python literal"]
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise AnswerRejected("not JSON, even after repairs") from None


def _load(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return _FAILED


def _strip_code_fence(text: str) -> str:
    match = re.search(r"```[\w-]*\s*\n?(.*?)(?:```|$)", text, re.DOTALL)
    return match.group(1).strip() if match else text


def _brackets(text: str):
    """(position, bracket) for each bracket outside a string literal ("..." or '...')."""
    quote, escaped = None, False
    for position, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[]{}()":
            yield position, char


def _strip_prose(text: str) -> str:
    """From the first bracket to the one closing it; an unclosed one keeps the rest, for
    the truncation repair."""
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        return text
    start, depth = min(starts), 0
    for position, bracket in _brackets(text[min(starts):]):
        depth += 1 if bracket in "[{(" else -1
        if depth == 0:
            return text[start:start + position + 1]
    return text[start:]


def _drop_trailing_commas(text: str) -> str:
    return re.sub(r",(\s*[\]}])", r"\1", text)


def _close_truncated(text: str) -> str:
    """An answer cut off at the token limit: keep its complete items, close the brackets."""
    closing = {"[": "]", "{": "}", "(": ")"}
    stack, last_item = [], None
    for position, bracket in _brackets(text):
        if bracket in closing:
            stack.append(bracket)
        elif stack:
            stack.pop()
            if stack:
                last_item = (position, list(stack))
    if not stack:
        return text
    if last_item is None:
        return text[: text.index(stack[0]) + 1] + closing[stack[0]]
    position, still_open = last_item
    return text[: position + 1] + "".join(closing[b] for b in reversed(still_open))


# Order matters: each repair is tried only when the text does not parse yet.
_REPAIRS = (
    ("code fence", _strip_code_fence),
    ("surrounding prose", _strip_prose),
    ("trailing comma", _drop_trailing_commas),
    ("truncated", _close_truncated),
)


# --------------------------------------------------------------------------- answer shapes


def _answer_items(value) -> list:
    """The entity items of an answer: {"entities": [...]}, a bare list, or {type: [mentions]}."""
    if isinstance(value, dict):
        if isinstance(value.get("entities"), list):
            return value["entities"]
        if value and all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in value.values()):
            return [(mention, kind) for kind, mentions in value.items() for mention in mentions]
        if not value or ("entities" in value and value["entities"] is None):
            return []
        raise AnswerRejected("a JSON object without an 'entities' list")
    if isinstance(value, (list, tuple)):
        return list(value)
    raise AnswerRejected(f"a JSON {type(value).__name__}, not a list of entities")


def _mention_and_type(item) -> tuple[str, str]:
    if isinstance(item, dict):
        mention = next((item[k] for k in _MENTION_KEYS if k in item), None)
        kind = next((item[k] for k in _TYPE_KEYS if k in item), None)
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        mention, kind = item
    else:
        raise ValueError("not a (mention, type) pair")
    if not isinstance(mention, str) or not isinstance(kind, str):
        raise ValueError("mention and type must be strings")
    mention, kind = mention.strip(), " ".join(kind.split())
    if not mention or not kind:
        raise ValueError("empty mention or type")
    return mention, kind
