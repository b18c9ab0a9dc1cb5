"""The answer cache: keyed by (model, prompt version, messages), persistent, thread-safe."""
from concurrent.futures import ThreadPoolExecutor

from ner.distill.cache import AnswerCache, answer_key
from ner.distill.tasks import load_task


def test_key_changes_with_model_prompt_text_and_labels():
    typed = load_task("typed_v1")
    base = answer_key("m", "typed_v1", typed.messages("Ada.", ["PER"]))
    assert base == answer_key("m", "typed_v1", typed.messages("Ada.", ["PER"]))
    others = {answer_key("m2", "typed_v1", typed.messages("Ada.", ["PER"])),
              answer_key("m", "typed_v2", typed.messages("Ada.", ["PER"])),
              answer_key("m", "typed_v1", typed.messages("Ada!", ["PER"])),
              answer_key("m", "typed_v1", typed.messages("Ada.", ["LOC"]))}
    assert base not in others and len(others) == 4


def test_answers_survive_reopening_and_concurrent_writers(tmp_path):
    path = tmp_path / "deep" / "answers.sqlite"
    with AnswerCache(path) as cache:
        assert cache.get("k0") is None
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: cache.put(f"k{i}", f"answer {i}", model="m", prompt="p"), range(200)))
    with AnswerCache(path) as reopened:
        assert len(reopened) == 200
        assert reopened.get("k137") == "answer 137"
