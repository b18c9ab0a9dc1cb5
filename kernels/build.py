"""Building the C kernels: compiled at first use with the machine's own C compiler, for
the machine's own CPU (``-march=native``), cached, and loaded with ctypes.

A plain shared library (no Python or PyTorch headers) builds in seconds and needs nothing
but a C compiler. The cache key covers the source, the flags, the compiler and the CPU's
feature flags, so a home directory shared between different machines keeps one build per
kind of CPU. Where no library can be built (no compiler, no AVX2/FMA, not x86-64),
``load_library`` warns once and returns None; callers then run the pure PyTorch
reference (same results, slower).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "csrc" / "ner_kernels.c"
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fopenmp")
CACHE_VARIABLE = "NER_SUITE_CACHE"
COMPILER_VARIABLE = "CC"

_POINTER = ctypes.c_void_p
_SIGNATURES = {
    "nk_capabilities": ([], ctypes.c_int),
    "nk_activation_levels": ([], ctypes.c_int),
    "nk_linear_f32": ([_POINTER, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _POINTER, _POINTER,
                       _POINTER, _POINTER, _POINTER, ctypes.c_int32, _POINTER], None),
    "nk_quantize_rows": ([_POINTER, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, _POINTER, _POINTER], None),
    "nk_quantize_rows_static": ([_POINTER, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_float, _POINTER,
                                 _POINTER], None),
    "nk_linear_i8": ([_POINTER, _POINTER, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _POINTER,
                      _POINTER, _POINTER, ctypes.c_int32, _POINTER, _POINTER, _POINTER, _POINTER, ctypes.c_int32,
                      _POINTER], None),
    "nk_linear_i8_quantized": ([_POINTER, _POINTER, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                _POINTER, _POINTER, _POINTER, ctypes.c_int32, _POINTER, _POINTER, _POINTER,
                                ctypes.c_int32, ctypes.c_int32, _POINTER, _POINTER], ctypes.c_int),
    "nk_layer_norm": ([_POINTER, ctypes.c_int64, ctypes.c_int32, _POINTER, _POINTER, ctypes.c_float], None),
    "nk_gelu": ([_POINTER, ctypes.c_int64], None),
    "nk_attention": ([_POINTER, _POINTER, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _POINTER], ctypes.c_int),
    "nk_attention_i8": ([_POINTER, _POINTER, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _POINTER],
                        ctypes.c_int),
    "nk_span_head": ([_POINTER, _POINTER, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, _POINTER, ctypes.c_int32,
                      _POINTER, _POINTER, ctypes.c_int32, _POINTER], ctypes.c_int),
}


class BuildError(RuntimeError):
    pass


def cache_directory() -> Path:
    root = os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "ner-suite"
    return Path(root) / "kernels"


def find_compiler() -> str | None:
    for name in filter(None, (os.environ.get(COMPILER_VARIABLE), "cc", "gcc", "clang")):
        if shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(extra_flags: tuple[str, ...] = (), compiler: str | None = None) -> Path:
    """Where the build for this source, these flags, this compiler and this CPU lives."""
    compiler = compiler or find_compiler() or "cc"
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), repr(FLAGS + tuple(extra_flags)).encode(), compiler.encode(),
                 _compiler_version(compiler).encode(), _cpu_flags().encode(), platform.machine().encode()):
        key.update(part)
    return cache_directory() / f"ner_kernels-{key.hexdigest()[:16]}.so"


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build_library(extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile the kernels unless a build for this machine is cached; the library's path."""
    compiler = find_compiler()
    if compiler is None:
        raise BuildError("no C compiler found (looked for $CC, cc, gcc, clang)")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise BuildError(f"the kernels are written for x86-64 (AVX2 + FMA); this machine is {platform.machine()}")
    target = library_path(extra_flags, compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename: concurrent first uses never load half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        command = [compiler, *FLAGS, *extra_flags, str(SOURCE), "-o", str(output), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(output, target)
    return target


@lru_cache(maxsize=None)
def load_library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled kernels (built on first use), or None with a warning when they cannot be built."""
    try:
        library = ctypes.CDLL(str(build_library(tuple(extra_flags))))
    except (BuildError, OSError) as error:
        warnings.warn(
            f"ner.kernels: the C kernels are unavailable ({error}); the 'ner-kernels' backends run the pure "
            "PyTorch reference instead: same results, without the speed-up. Install a C compiler (gcc) to build them.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    for name, (arguments, result) in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes = arguments
        function.restype = result
    return library
