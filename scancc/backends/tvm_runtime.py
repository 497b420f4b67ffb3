"""Parsing, compiling and caching TVMScript modules.

A kernel source is TVMScript text with a few free names (``DSTATE`` ...) bound when it is
parsed, so one source gives one module per state size. Compiled modules are cached in
this process and on disk under ``$SCANCC_CACHE_DIR`` (default ``~/.cache/scancc``) as
shared libraries, keyed by the SHA-256 of (source, bound names, target, TVM version).
Loading a cached library needs only TVM's runtime, not its compiler.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

TargetLike = Union[str, Mapping[str, Any]]

_modules: dict[str, Any] = {}
_lock = threading.Lock()


def tvm_available() -> bool:
    try:
        import tvm  # noqa: F401
        from tvm.script import tirx  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def empty(shape: tuple[int, ...]):
    """An output buffer: uninitialised, or NaN-filled when ``$SCANCC_POISON`` is set (tests set
    it so that elements a kernel fails to write cannot pass)."""
    import torch

    if os.environ.get("SCANCC_POISON"):
        return torch.full(shape, float("nan"))
    return torch.empty(shape)


def cache_dir() -> Path:
    return Path(os.environ.get("SCANCC_CACHE_DIR") or Path.home() / ".cache" / "scancc") / "tvm"


@functools.lru_cache(maxsize=None)
def host_target() -> dict[str, Any]:
    """The LLVM target of this CPU (``mcpu`` from LLVM's host detection, so AVX-512 is used
    where present)."""
    import tvm

    target: dict[str, Any] = {"kind": "llvm"}
    get_cpu = getattr(tvm.target.codegen, "llvm_get_system_cpu", None)
    cpu = get_cpu() if get_cpu is not None else ""
    if cpu and cpu != "generic":
        target["mcpu"] = str(cpu)
    return target


def normalize_target(target: TargetLike) -> dict[str, Any]:
    """A TVM target as a JSON dict; accepts a dict, ``"llvm"``, ``"cuda"`` or the older
    command-line form ``"cuda -arch=sm_90"`` (TVM 0.27 no longer parses that form itself)."""
    if isinstance(target, Mapping):
        if "kind" not in target:
            raise ValueError(f"target dict needs a 'kind', got {dict(target)!r}")
        return dict(target)
    if not isinstance(target, str) or not target.strip():
        raise TypeError(f"target must be a non-empty string or a dict, got {target!r}")
    kind, *opts = target.split()
    if kind == "llvm" and not opts:
        return dict(host_target())
    out: dict[str, Any] = {"kind": kind}
    for opt in opts:
        key, sep, value = opt.lstrip("-").partition("=")
        if not sep:
            raise ValueError(f"target option {opt!r} in {target!r} is not of the form -key=value")
        out[key] = value
    return out


def target_kind(target: Mapping[str, Any]) -> str:
    """``"cpu"`` or ``"gpu"``: which flavour of the templates a target needs."""
    return "cpu" if target["kind"] in ("llvm", "c") else "gpu"


def cache_key(source: str, meta: Mapping[str, Any], target: Mapping[str, Any],
              functions: Optional[Sequence[str]] = None) -> str:
    import tvm

    blob = json.dumps({"source": source, "meta": dict(meta), "target": dict(target), "tvm": tvm.__version__,
                       **({"functions": sorted(functions)} if functions else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def parse(source: str, meta: Mapping[str, Any]):
    """The ``IRModule`` of ``source`` with the free names of ``meta`` bound."""
    import tvm
    from tvm.script.parser.core.entry import _default_globals

    return tvm.script.from_source(source, extra_vars={**_default_globals(), **meta})


@functools.lru_cache(maxsize=32)
def _parse_once(source: str, meta: tuple[tuple[str, Any], ...]):
    """:func:`parse`, kept for the next function compiled from the same source and sizes."""
    return parse(source, dict(meta))


def select(module: Any, functions: Optional[Sequence[str]]) -> Any:
    """The ``IRModule`` with only the functions named (all of them for ``None``)."""
    if not functions:
        return module
    import tvm

    picked = {gv: module[gv] for gv in module.functions if gv.name_hint in functions}
    missing = set(functions) - {gv.name_hint for gv in picked}
    if missing:
        raise ValueError(f"the kernel source defines no function(s) {sorted(missing)}")
    return tvm.IRModule(picked)


def compile_module(source: str, meta: Mapping[str, Any], target: TargetLike, *, disk: bool = True,
                   functions: Optional[Sequence[str]] = None):
    """A runtime module for ``source`` (functions by name: ``module["forward"]``).

    ``functions`` compiles only those functions of the source (e.g. the forward alone, so
    inference never waits for the backward's code generation). Looked up in this process,
    then on disk; compiled and stored otherwise.
    """
    import tvm

    tgt = normalize_target(target)
    key = cache_key(source, meta, tgt, functions)
    with _lock:
        hit = _modules.get(key)
    if hit is not None:
        return hit
    path = cache_dir() / f"{key}.so"
    module = None
    if disk and path.exists():
        try:
            module = tvm.runtime.load_module(str(path))
        except Exception:  # a truncated or foreign file: rebuild it
            module = None
    if module is None:
        executable = tvm.compile(select(_parse_once(source, tuple(sorted(meta.items()))), functions), target=tgt)
        module = executable.mod
        if disk:
            module = _store(executable, path) or module
    with _lock:
        return _modules.setdefault(key, module)


def _store(executable: Any, path: Path):
    """Write ``executable`` to ``path`` atomically and load it back (None if the disk is not writable)."""
    import tvm

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    except OSError:
        return None
    os.close(fd)
    try:
        executable.export_library(tmp)  # TVM writes the library itself: renamed once complete
        os.replace(tmp, path)
        return tvm.runtime.load_module(str(path))
    except OSError:
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def clear_memory_cache() -> None:
    with _lock:
        _modules.clear()


def _load_cudart(runtime_dir: Path) -> None:
    """Make ``libcudart.so.13`` (needed by ``libtvm_runtime_cuda.so``) loadable: the system's,
    else a copy beside the runtime, else the one of the ``nvidia`` wheels torch depends on."""
    import ctypes
    import glob
    import sys

    candidates = ["libcudart.so.13", str(runtime_dir / "libcudart.so.13")]
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libcudart.so.13*")))
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_runtime", "lib", "libcudart.so.13*")))
    for candidate in candidates:
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
    raise FileNotFoundError("libcudart.so.13 not found (needed by libtvm_runtime_cuda.so); put it beside the "
                            f"runtime libraries in {runtime_dir}")


def load_exported(path: Union[str, Path], runtime_dir: Union[str, Path, None] = None, *, cuda: bool = False):
    """Load a library written by :func:`scancc.backends.tvm.export` with TVM's runtime only.

    Needs the ``tvm_ffi`` package and ``libtvm_runtime.so`` (+ ``libtvm_runtime_cuda.so`` for
    CUDA modules, which registers their loader) from ``runtime_dir`` (default: the installed
    ``tvm/lib``, found without importing ``tvm``); no LLVM and no ``libtvm_compiler.so``.
    Returns the module: ``module["forward"](*tensors)`` in the order of the ``.json``.
    """
    import ctypes
    import importlib.util

    import tvm_ffi

    if runtime_dir is None:
        spec = importlib.util.find_spec("tvm")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("runtime_dir not given and no installed tvm package to take libtvm_runtime.so from")
        runtime_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    names = ["libtvm_runtime.so"] + (["libtvm_runtime_cuda.so"] if cuda else [])
    if cuda:
        _load_cudart(Path(runtime_dir))
    for name in names:
        lib = Path(runtime_dir) / name
        if not lib.exists():
            raise FileNotFoundError(f"{lib} not found (TVM's runtime library is needed to load exported kernels)")
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    if cuda:
        _register_cubin(Path(path))
    return tvm_ffi.load_module(str(path))


_cubins: dict[str, bytes] = {}  # SHA-256 of a CUDA module's source -> its cubin from export


def _register_cubin(lib: Path) -> None:
    """Make ``lib``'s precompiled cubin (written by ``export`` beside it) what the runtime gets
    when it asks ``tvm_callback_cuda_compile`` to compile the module's embedded CUDA source:
    TVM 0.27 compiles that source at load time, through a callback only the full TVM defines."""
    import tvm_ffi

    meta = lib.with_suffix(".json")
    binary = json.loads(meta.read_text()).get("cuda_binary") if meta.exists() else None
    if not binary:
        raise FileNotFoundError(f"{meta} names no cubin: re-export {lib.name} with scancc.backends.tvm.export "
                                "(a runtime-only TVM cannot compile the CUDA source embedded in it)")
    _cubins[binary["source_sha256"]] = (lib.parent / binary["file"]).read_bytes()

    def compile_from_cubins(code: str, *_: object) -> bytes:
        digest = hashlib.sha256(str(code).encode()).hexdigest()
        if digest not in _cubins:
            raise RuntimeError(f"no precompiled cubin for this CUDA module (source sha256 {digest[:12]}); "
                               "re-export it with scancc.backends.tvm.export")
        return _cubins[digest]

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_from_cubins, override=True)
