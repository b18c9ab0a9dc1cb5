"""The OpenAI-compatible server and the HTTP teacher, talking over 127.0.0.1."""
import json

import httpx
import pytest

from ner.distill.backends import HttpTeacher, TeacherError, _api_base
from ner.distill.rule_teacher import RuleTeacher
from ner.distill.server import TeacherServer
from ner.distill.tasks import load_task

TYPED = load_task("typed_v1")


@pytest.fixture
def server():
    server = TeacherServer(RuleTeacher(), max_body=4096).start()
    yield server
    server.stop()


def test_binds_loopback_and_lists_its_model(server):
    assert server.server_address[0] == "127.0.0.1"
    models = httpx.get(f"{server.url}/models").json()
    assert [m["id"] for m in models["data"]] == ["rules-v1"]


def test_chat_completion_over_http_is_a_valid_openai_response(server):
    messages = TYPED.messages("Tim Cook met Angela Merkel in Berlin.", ["PER", "LOC"])
    schema = TYPED.response_schema(["PER", "LOC"])
    reply = httpx.post(f"{server.url}/chat/completions", json={
        "model": "rules-v1", "messages": messages, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "e", "schema": schema}},
    })
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert answer["entities"] == [{"text": "Tim Cook", "type": "PER"}, {"text": "Angela Merkel", "type": "PER"},
                                  {"text": "Berlin", "type": "LOC"}]
    assert httpx.get(server.url.replace("/v1", "/stats")).json() == {"chat_completions": 1, "answered": 1}


def test_bad_requests_get_openai_style_errors(server):
    url = f"{server.url}/chat/completions"
    too_big = httpx.post(url, json={"messages": [{"role": "user", "content": "x" * 5000}]})
    assert too_big.status_code == 413
    assert httpx.post(url, content=b"not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.post(url, json={"messages": []}).status_code == 400
    wrong_model = httpx.post(url, json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert wrong_model.status_code == 404 and wrong_model.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server.url.replace("/v1", "/nowhere")).status_code == 404


def test_client_steps_down_to_what_the_server_offers():
    server = TeacherServer(RuleTeacher(), response_formats=("text",)).start()
    try:
        teacher = HttpTeacher(server.url.removesuffix("/v1"))  # the /v1 is optional
        assert teacher.model == "rules-v1" and teacher.response_format == "json_schema"
        answer = teacher.complete(TYPED.messages("Angela Merkel met Tim Cook.", ["person"]),
                                  schema=TYPED.response_schema(["person"]))
        assert TYPED.parse(answer, ["person"]).mentions == [("Angela Merkel", "person"), ("Tim Cook", "person")]
        assert teacher.response_format == "none"
        assert server.counts["chat_completions"] == 3  # json_schema refused, json_object refused, plain
        teacher.close()
    finally:
        server.stop()


def test_busy_teacher_is_a_retryable_503_and_a_dead_server_a_retryable_error(server):
    class Busy(RuleTeacher):
        def complete(self, messages, **options):
            raise TeacherError("queue full", retryable=True, retry_after=2)

    busy = TeacherServer(Busy()).start()
    teacher = HttpTeacher(busy.url)
    with pytest.raises(TeacherError) as caught:
        teacher.complete([{"role": "user", "content": "hi"}])
    assert caught.value.retryable and caught.value.retry_after == 2 and "503" in str(caught.value)
    busy.stop()
    teacher.close()
    with pytest.raises(TeacherError) as caught:
        HttpTeacher(busy.url, model="rules-v1").complete([{"role": "user", "content": "hi"}])
    assert caught.value.retryable and "connection" in str(caught.value)


def test_api_base_accepts_host_with_or_without_v1():
    assert _api_base("http://h:1") == _api_base("http://h:1/v1/") == "http://h:1/v1"
    assert _api_base("http://h:1/openai/v1") == "http://h:1/openai/v1"


def test_a_request_the_teacher_can_never_answer_is_not_retried():
    class TooLong(RuleTeacher):
        def complete(self, messages, **options):
            raise TeacherError("passage past the context", retryable=False)

    server = TeacherServer(TooLong()).start()
    try:
        with pytest.raises(TeacherError) as caught:
            HttpTeacher(server.url).complete([{"role": "user", "content": "hi"}], schema={"type": "object"})
    finally:
        server.stop()
    assert not caught.value.retryable and "422" in str(caught.value)
    assert server.counts["chat_completions"] == 1  # not mistaken for a refused response_format
