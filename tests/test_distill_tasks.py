"""Prompt tasks: the shipped templates load and render, the parser reads and repairs answers."""
import json

import pytest

from ner.distill.rule_teacher import RuleTeacher, damage_answer
from ner.distill.tasks import AnswerRejected, list_tasks, load_task, read_json_answer

OPEN = load_task("universal_ner_v1")
TYPED = load_task("typed_v1")


def test_shipped_prompts_are_versioned_and_render_the_passage():
    assert {"universal_ner_v1", "typed_v1"} <= set(list_tasks())
    assert (OPEN.id, TYPED.id) == ("universal_ner_v1", "typed_v1")
    text = 'Ada said "{labels}" in {text} braces.'
    system, user = OPEN.messages(text)
    assert system["role"] == "system" and user["role"] == "user"
    assert f"<passage>\n{text}\n</passage>" in user["content"]  # placeholders in the text stay as they are
    typed_user = TYPED.messages("Ada Lovelace.", ["person", "location"])[1]["content"]
    assert "Entity types: person, location\n" in typed_user


def test_label_requirements_are_checked():
    with pytest.raises(ValueError, match="needs labels"):
        TYPED.messages("x")
    with pytest.raises(ValueError, match="takes no labels"):
        OPEN.messages("x", ["person"])
    with pytest.raises(ValueError, match="no prompt"):
        load_task("universal_ner_v999")


def test_typed_schema_restricts_types_to_the_labels():
    schema = TYPED.response_schema(["PER", "LOC"])
    assert schema["properties"]["entities"]["items"]["properties"]["type"]["enum"] == ["PER", "LOC"]
    assert "enum" not in OPEN.response_schema()["properties"]["entities"]["items"]["properties"]["type"]


def test_clean_answers_parse_without_repairs_in_every_accepted_shape():
    for answer in ('{"entities": [{"text": "Ada Lovelace", "type": "Person"}]}',
                   '[["Ada Lovelace", "person"]]',
                   '{"person": ["Ada Lovelace"]}',
                   '[{"entity": "Ada Lovelace", "label": "person"}, {"entity": "Ada Lovelace", "label": "person"}]'):
        parsed = OPEN.parse(answer)
        assert parsed.mentions == [("Ada Lovelace", "person")], answer  # lower-cased, deduplicated
        assert parsed.repairs == [] and parsed.rejected == []
    assert OPEN.parse('{"entities": []}').mentions == []


@pytest.mark.parametrize("damage, repair", [
    ("code fence", "code fence"), ("trailing comma", "trailing comma"), ("python literal", "python literal"),
    ("prose", "surrounding prose"), ("truncated", "truncated"),
])
def test_damaged_answers_are_repaired_and_say_how(damage, repair):
    entities = [("Ada Lovelace", "person"), ("London", "location")]
    parsed = OPEN.parse(damage_answer(entities, damage))
    assert parsed.mentions == entities
    assert repair in parsed.repairs


def test_truncation_inside_a_string_keeps_the_complete_items():
    value, repairs = read_json_answer('```json\n{"entities": [{"text": "A", "type": "x"}, {"text": "B", "ty')
    assert value == {"entities": [{"text": "A", "type": "x"}]}
    assert repairs == ["code fence", "truncated"]


def test_unreadable_answers_are_rejected_with_a_reason():
    for answer in ("I am sorry, I cannot help with that.", "", '"just a string"', '{"people": "Ada"}'):
        with pytest.raises(AnswerRejected) as caught:
            OPEN.parse(answer)
        assert caught.value.reason


def test_bad_items_and_unasked_types_are_rejected_one_by_one():
    answer = json.dumps({"entities": [{"text": "Ada", "type": "PERSON"}, {"text": "Paris", "type": "city"},
                                      ["only one"], {"text": "  ", "type": "person"}, {"text": 3, "type": "x"}]})
    parsed = TYPED.parse(answer, ["person", "location"])
    assert parsed.mentions == [("Ada", "person")]  # the label's own spelling
    reasons = [reason for _, reason in parsed.rejected]
    assert reasons == ["type 'city' was not asked for", "not a (mention, type) pair", "empty mention or type",
                       "mention and type must be strings"]


def test_rule_teacher_answers_the_prompt_it_is_given():
    teacher = RuleTeacher()
    answer = teacher.complete(TYPED.messages("Angela Merkel visited Paris in May 2019.", ["PER", "LOC"]))
    assert TYPED.parse(answer, ["PER", "LOC"]).mentions == [("Angela Merkel", "PER"), ("Paris", "LOC")]
    open_answer = OPEN.parse(teacher.complete(OPEN.messages("Angela Merkel visited Paris in May 2019.")))
    assert ("May 2019", "date") in open_answer.mentions
