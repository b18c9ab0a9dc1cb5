"""A deterministic rule-based teacher: capitalisation, a small gazetteer, dates.

It stands in for an LLM where the point is the machinery, not the labels: the tests and the
measured runs serve it over HTTP (``ner distill serve``) so that the client, the cache and
the counts are exercised in milliseconds per passage, with answers that never change.

It reads the passage between ``<passage>`` tags and the types after ``Entity types:`` in
the last user message, the layout of the prompts in ``data/prompts/``.

``noise`` (0..1) is the share of answers it damages the way real teachers do, chosen by a
hash of the passage so reruns damage the same ones: code fences, trailing commas, Python
literals, prose around the JSON, truncation (all repairable), a changed case (aligned
tolerantly), a made-up mention (unalignable), a malformed item (a rejected mention) and
an answer with no JSON at all (a rejected answer).
"""
from __future__ import annotations

import hashlib
import json
import re

_PASSAGE = re.compile(r"<passage>\n(.*)\n</passage>", re.DOTALL)
_TYPES_LINE = re.compile(r"^Entity types: (.+)$", re.MULTILINE)
_WORD = r"[A-Z][\w&'’.-]*"
# A name's final "." is the sentence's unless the word is an abbreviation or an initial.
_ABBREVIATIONS = set("Inc. Ltd. Co. Corp. Jr. Sr. St. Mr. Mrs. Ms. Dr. Prof.".split())
_RUN = re.compile(rf"(?<![\w'’-]){_WORD}(?:[ \t]+{_WORD})*")
# "X of Y" is one name only after these heads ("University of Oxford", not "Tim Cook of Apple").
_JOINER = re.compile(r"[ \t]+(?:of|of the|for|de|del|van|von)[ \t]+")
_OF_HEADS = set(("University Bank Institute Department Ministry Gulf Bay Duke Duchess Kingdom Republic Church "
                 "Museum College School Society Association Council Board Court Sea Isle Secretary "
                 "Academy Federation Union Order House Bureau Office State States").split())
_MONTHS = ("January February March April May June July August September October November December").split()
_DATE = re.compile(rf"\b(?:(?:\d{{1,2}}\s+)?(?:{'|'.join(_MONTHS)})(?:\s+\d{{1,2}})?(?:,?\s+\d{{4}})?"
                   r"|(?:1[5-9]|20)\d\d)\b")
_STOP = set(("A An And As At But By For From He Her His However I If In It Its Many Most No Not Of On Once "
             "One Or Our She So Some Such That The Their There These They This Those To We What When Where "
             "Which While Who Why With You Your Yes After Before During Since Although Also").split())
_TITLES = set("Mr Mr. Mrs Mrs. Ms Ms. Dr Dr. Prof Prof. President Sir Lady Lord King Queen Senator Minister".split())
_ORG_WORDS = set(("Inc Inc. Corp Corp. Corporation Ltd Ltd. LLC Company University Institute Association Party "
                  "Bank Council Committee Agency Ministry Department Group Foundation Club Times News Press "
                  "Union Organization Organisation Society College School Church FC Court Army Navy").split())
_PLACE_WORDS = set("City River Mountain Mountains Island Islands County State Street Lake Ocean Sea Valley".split())
_PLACES = set(("Africa America Asia Australia Austria Berlin Beijing Belgium Boston Brazil Britain California "
               "Canada Chicago China Egypt England Europe France Germany Greece India Iran Iraq Ireland Israel "
               "Italy Japan Kenya London Madrid Mexico Moscow Netherlands Nigeria Paris "
               "Poland Rome Russia Scotland Spain Sweden Texas Tokyo Turkey Ukraine Washington Wales").split()
              + ["New York", "Los Angeles", "United States", "United Kingdom", "Hong Kong", "South Africa"])
_FIRST_NAMES = set(("Adam Alice Andrew Angela Anna Barack Ben Bill Charles Chris Daniel David Donald Elizabeth "
                    "Emily Emma George Hillary Jack James Jane Jennifer John Joseph Karen Laura Linda Maria Mark "
                    "Mary Michael Nancy Paul Peter Richard Robert Sarah Steve Susan Thomas Tim Tom William").split())
_SYNONYMS = {
    "person": {"person", "per", "people", "name"},
    "organization": {"organization", "organisation", "org", "company", "corporation"},
    "location": {"location", "loc", "place", "gpe", "country", "city"},
    "date": {"date", "time"},
    "miscellaneous": {"misc", "miscellaneous"},
}
_DAMAGE = ("code fence", "trailing comma", "python literal", "prose", "truncated",
           "case", "made-up mention", "malformed item", "no json")


class RuleTeacher:
    def __init__(self, *, noise: float = 0.0):
        if not 0.0 <= noise <= 1.0:
            raise ValueError("noise must lie in [0, 1]")
        self.noise = noise
        self.model = "rules-v1" if noise == 0 else f"rules-v1-noise{noise:g}"

    def complete(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 512) -> str:
        prompt = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        passage = _PASSAGE.search(prompt)
        text = passage.group(1) if passage else ""
        types_line = _TYPES_LINE.search(prompt)
        labels = [label.strip() for label in types_line.group(1).split(",")] if types_line else None
        entities = find_entities(text)
        if labels is not None:
            entities = [(mention, _label_for(kind, labels)) for mention, kind in entities]
            entities = [(mention, label) for mention, label in entities if label is not None]
        damage = self._damage_for(text)
        return damage_answer(entities, damage) if damage else _as_json(entities)

    def _damage_for(self, text: str) -> str | None:
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 >= self.noise:
            return None
        return _DAMAGE[digest[4] % len(_DAMAGE)]

    def close(self) -> None:
        pass


def find_entities(text: str) -> list[tuple[str, str]]:
    """(mention, type) pairs: dates, then capitalised names typed by the gazetteer."""
    found, taken = [], []
    for match in _DATE.finditer(text):
        found.append((match.group(), "date"))
        taken.append(match.span())
    for start, end in _names(text):
        if any(start < other_end and other_start < end for other_start, other_end in taken):
            continue
        words = text[start:end].split()
        while words and words[0] in _STOP:
            words.pop(0)
        kind = None
        if words and words[0] in _TITLES and len(words) > 1:
            words, kind = words[1:], "person"
        if not words or (len(words) == 1 and len(words[0]) < 2):
            continue
        mention = " ".join(words)
        if mention not in text:  # the name ran over a line break; keep to what aligns
            continue
        found.append((mention, kind or _type_of(words)))
    return list(dict.fromkeys(found))


def _names(text: str) -> list[tuple[int, int]]:
    """(start, end) of capitalised runs, split after a sentence's full stop, joined across
    "of" after the heads that take it."""
    names = []
    for start, end in _runs(text):
        if names:
            previous_start, previous_end = names[-1]
            joiner = _JOINER.fullmatch(text, previous_end, start)
            if joiner and text[previous_start:previous_end].split()[-1] in _OF_HEADS:
                names[-1] = (previous_start, end)
                continue
        names.append((start, end))
    return names


def _runs(text: str):
    for match in _RUN.finditer(text):
        start = match.start()
        for word in re.finditer(r"\S+", match.group()):
            end = match.start() + word.end()
            if word.group().endswith(".") and not _keeps_dot(word.group()):
                if end - 1 > start:
                    yield start, end - 1
                start = None
            elif start is None:
                start = match.start() + word.start()
        if start is not None:
            yield start, match.end()


def _keeps_dot(word: str) -> bool:
    return word in _ABBREVIATIONS or len(word) == 2 or "." in word[:-1]


def _type_of(words: list[str]) -> str:
    name = " ".join(words)
    if words[-1] in _ORG_WORDS or (len(words) > 2 and words[0] in _OF_HEADS and words[1] == "of"):
        return "organization"
    if name in _PLACES or words[-1] in _PLACE_WORDS:
        return "location"
    if words[0] in _FIRST_NAMES and len(words) > 1:
        return "person"
    if len(words) == 1 and words[0].isupper() and 2 <= len(words[0]) <= 6:
        return "organization"
    return "miscellaneous"


def _label_for(kind: str, labels: list[str]) -> str | None:
    return next((label for label in labels if label.casefold() in _SYNONYMS[kind]), None)


def _as_json(entities) -> str:
    return json.dumps({"entities": [{"text": mention, "type": kind} for mention, kind in entities]},
                      ensure_ascii=False)


def damage_answer(entities: list[tuple[str, str]], damage: str) -> str:
    """The answer for ``entities`` damaged one way (see the module docstring)."""
    if damage == "code fence":
        return f"```json\n{_as_json(entities)}\n```"
    if damage == "trailing comma":
        items = "".join(json.dumps({"text": m, "type": k}, ensure_ascii=False) + ", " for m, k in entities)
        return '{"entities": [' + items.rstrip(" ") + "]}"
    if damage == "python literal":
        return repr([(mention, kind) for mention, kind in entities])
    if damage == "prose":
        return f"Sure! Here are the entities I found:\n{_as_json(entities)}\nLet me know if you need more."
    if damage == "truncated":
        answer = _as_json(entities + [("a mention cut off", "miscellaneous")])
        return answer[: answer.rindex("cut off")]
    if damage == "case" and entities:
        return _as_json([(entities[0][0].upper(), entities[0][1])] + entities[1:])
    if damage == "made-up mention":
        return _as_json(entities + [("Zorblax Quintessence", entities[0][1] if entities else "miscellaneous")])
    if damage == "malformed item":
        return json.dumps({"entities": [{"text": m, "type": k} for m, k in entities] + [["only one"]]})
    if damage == "no json":
        return "I am sorry, I cannot help with that passage."
    return _as_json(entities)
