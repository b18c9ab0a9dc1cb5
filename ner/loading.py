"""``ner.load``: a shipped pipeline by name, or any pipeline directory by path.

A pipeline directory may carry ``checksums.sha256`` (``sha256sum`` format, written by
``write_checksums`` when a pipeline is exported). When it does, every listed file is
verified before spaCy reads anything, so a truncated download or a flipped byte is
reported by file name instead of surfacing later as an error from deep inside torch,
tokenizers or msgpack, or, worse, as a pipeline that loads and predicts garbage.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import spacy

from ner.weights import file_sha256

CHECKSUMS = "checksums.sha256"
# The model card lists the checksums, so it cannot be one of the files they cover.
_UNCHECKED = (CHECKSUMS, "README.md")


class PipelineError(ValueError):
    """A pipeline that cannot be found or loaded; the message names the file at fault."""


DEFAULT_PIPELINE = "en"  # what `ner tag` and the demo use unless told otherwise


def shipped_pipelines() -> list[str]:
    """The shipped pipelines' names: the default one first, then the others by name."""
    root = resources.files("ner.pipelines")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.cfg").is_file())
    return sorted(names, key=lambda name: name != DEFAULT_PIPELINE)


def pipeline_path(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = resources.files("ner.pipelines") / str(name_or_path)
    if candidate.is_dir() and (candidate / "config.cfg").is_file():
        return Path(str(candidate))
    raise PipelineError(
        f"no pipeline {name_or_path!r}: give a directory or one of {shipped_pipelines()}"
    )


SPAN_FACTORIES = ("span_ner",)  # the components with a backend setting


def load(name_or_path="en", *, backend: str | None = None, labels: list[str] | None = None,
         device: str | None = None, **options) -> spacy.language.Language:
    """The pipeline ``name_or_path`` (e.g. "en", "biomedical") as a spaCy Language.
    Nothing is fetched from a network. Checksums are verified when the directory has
    them; a damaged directory raises ``PipelineError`` naming the file. ``backend``
    runs its span components on another inference backend than the one its config.cfg
    names (``ner.kernels.BACKENDS``; "torch" is the fp32 reference). ``labels`` are what
    its components predict when a call names none: the entity types a ``zero_shot``
    component is asked for, or the subset of its labels a ``span_ner`` one predicts.
    ``device`` ("cpu", "cuda", "cuda:1") is where its models run (``to_device``)."""
    path = check_pipeline(name_or_path)
    if backend is not None:
        from ner.kernels import BACKENDS

        if backend not in BACKENDS:
            raise PipelineError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        config = options.setdefault("config", {}).setdefault("components", {})
        for name in _span_components(path):
            config.setdefault(name, {})["backend"] = backend
    try:
        nlp = spacy.load(path, **options)
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(_diagnose(path, error)) from None
    if labels is not None:
        _use_labels(nlp, labels)
    if device is not None:
        to_device(nlp, device)
    return nlp


CPU_ONLY_BACKENDS = ("torch-int8", "onnxruntime", "onnxruntime-int8")  # fbgemm int8, ONNX Runtime sessions


def check_device(device: str):
    """``device`` as a ``torch.device``, or a ``PipelineError`` saying why it cannot be used here."""
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise PipelineError(f"device {device!r}: {error}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {device!r}: PyTorch sees no CUDA device here (torch.cuda.is_available() is "
                            "False); leave device out to run on the CPU")
    return target


def to_device(nlp, device: str) -> None:
    """Run the pipeline's span and zero-shot models on ``device`` (a ``torch.device`` name).
    Windows, tokenisation and decoding stay on the CPU; on a CUDA device the ``ner-kernels``
    backends run their PyTorch reference on packed tokens (the C kernels are CPU-only)."""
    from ner.components import SpanNER

    target = check_device(device)
    for name, component in nlp.pipeline:
        if not isinstance(component, SpanNER):
            continue
        backend = getattr(component.model, "backend", "torch")
        if target.type != "cpu" and backend in CPU_ONLY_BACKENDS:
            raise PipelineError(f"component {name!r} runs on backend {backend!r}, which runs on the CPU only; "
                                f"load it with backend='torch' or 'ner-kernels' for device {device!r}")
        component.model.to(target)


def _use_labels(nlp, labels: list[str]) -> None:
    """Make ``labels`` what the pipeline's components predict when a call names none: the
    types a ``zero_shot`` component looks for, or the subset of its labels a ``span_ner``
    one predicts. (Set on the loaded components: their saved settings are read after the
    config, so a config override would not hold.)"""
    from ner.components import SpanNER
    from ner.zero_shot_component import ZeroShotNER, set_default_labels

    set_default_labels(nlp, labels)
    for name, component in nlp.pipeline:
        if isinstance(component, SpanNER) and not isinstance(component, ZeroShotNER):
            unknown = sorted(set(labels) - set(component.labels))
            if unknown:
                raise PipelineError(f"component {name!r} has no labels {unknown}; it has {list(component.labels)}")
            component.cfg["active_labels"] = list(labels)


def pipeline_backend(name_or_path) -> str:
    """The inference backend a pipeline's config.cfg names for its span components."""
    backends = {c.get("backend", "torch") for c in _span_components(pipeline_path(name_or_path)).values()}
    return backends.pop() if len(backends) == 1 else "torch"


def _span_components(path: Path) -> dict:
    """Name → settings of the components in ``path``'s config.cfg that have a backend."""
    components = spacy.util.load_config(path / "config.cfg")["components"]
    return {name: c for name, c in components.items() if c.get("factory") in SPAN_FACTORIES}


def check_pipeline(name_or_path) -> Path:
    """The pipeline's directory, after the checks that need no torch: it exists, has a
    ``config.cfg``, and matches its checksums (when it has them)."""
    path = pipeline_path(name_or_path)
    if not (path / "config.cfg").is_file():
        raise PipelineError(f"pipeline {path}: config.cfg is missing; is this a pipeline directory?")
    verify_checksums(path)
    return path


# --------------------------------------------------------------------------- checksums


def write_checksums(directory) -> Path:
    """Write ``checksums.sha256`` listing the sha256 of every file under ``directory``
    but the model card (``sha256sum -c checksums.sha256`` verifies it too); return its path."""
    directory = Path(directory)
    lines = [f"{file_sha256(file)}  {file.relative_to(directory).as_posix()}\n" for file in _pipeline_files(directory)]
    target = directory / CHECKSUMS
    target.write_text("".join(lines), encoding="utf-8")
    return target


def verify_checksums(directory) -> bool:
    """Check every file ``checksums.sha256`` lists; False when there is no such file.
    A missing or changed file raises ``PipelineError`` naming it."""
    directory = Path(directory)
    listing = directory / CHECKSUMS
    if not listing.is_file():
        return False
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        expected, separator, name = line.partition("  ")
        if not separator or len(expected) != 64:
            raise PipelineError(f"pipeline {directory}: {CHECKSUMS} line {number} is not '<sha256>  <file>'")
        file = directory / name
        if not file.is_file():
            raise PipelineError(f"pipeline {directory}: {name} is missing (listed in {CHECKSUMS})")
        actual = file_sha256(file)
        if actual != expected:
            raise PipelineError(
                f"pipeline {directory}: {name} is damaged or was changed "
                f"(sha256 {actual[:12]}…, {CHECKSUMS} expects {expected[:12]}…); re-copy or re-export the pipeline"
            )
    return True


def _pipeline_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*")
        if p.is_file() and p.name not in _UNCHECKED and "__pycache__" not in p.parts and not p.name.startswith(".")
    )


# --------------------------------------------------------------------------- diagnosis

# Files spaCy and the span component need; a missing one fails far from where it is read.
_REQUIRED = ("config.cfg", "meta.json")
_COMPONENT_REQUIRED = ("cfg.json", "model.safetensors", "encoder/config.json", "encoder/tokenizer.json")


def _diagnose(path: Path, error: Exception) -> str:
    """A one-line reason naming the file at fault, for a pipeline spaCy failed to load.

    Without checksums the loader's own exception rarely names a file (a truncated
    ``tokenizer.json`` reads "EOF while parsing a string"), so the directory is checked
    for the usual damage (missing files, truncated JSON or msgpack) before giving up."""
    for name in _REQUIRED:
        if not (path / name).is_file():
            return f"pipeline {path}: {name} is missing"
    for component in sorted(p.parent for p in path.glob("*/cfg.json")):
        for name in _COMPONENT_REQUIRED:
            if not (component / name).is_file():
                return f"pipeline {path}: {(component / name).relative_to(path)} is missing"
    for file in _pipeline_files(path):
        problem = _unreadable(file)
        if problem:
            return f"pipeline {path}: {file.relative_to(path)} {problem}"
    if str(path) in str(error):  # the loader named the file itself
        return f"pipeline {path}: {_first_line(error)}"
    return (f"pipeline {path} could not be loaded ({type(error).__name__}: {_first_line(error)}); "
            f"the directory may be damaged: add {CHECKSUMS} with ner.loading.write_checksums to find the file")


def _unreadable(file: Path) -> str | None:
    """Why a JSON or msgpack file of a pipeline cannot be read, or None."""
    if file.name == "config.cfg":
        from thinc.api import Config

        try:
            Config().from_disk(file)
        except Exception as error:  # confection reports parse errors as several types
            return f"cannot be parsed (truncated?): {' '.join(str(error).split())[:300]}"
    elif file.suffix == ".json":
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            return f"is not valid JSON (truncated?): {_first_line(error)}"
    elif file.suffix in ("", ".bin") and file.name in ("tokenizer", "lookups.bin", "key2row"):
        import srsly

        try:
            srsly.msgpack_loads(file.read_bytes())
        except Exception as error:  # msgpack raises several types for damaged input
            return f"is damaged (truncated?): {_first_line(error)}"
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
