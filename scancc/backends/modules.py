"""Generated source → importable module, through a file on disk.

Triton reads a kernel's source with ``inspect``, so generated kernels must live in a
real file. Files are named by the SHA-256 of their source (the same source is written
once and shared by processes) and written atomically (write, then rename).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from ..atomic_io import write_atomic

CACHE_ENV = "SCANCC_CACHE_DIR"

_lock = threading.Lock()


def cache_dir(backend: str) -> Path:
    """``$SCANCC_CACHE_DIR/<backend>``, else ``~/.cache/scancc/<backend>`` (created if missing).

    Falls back to a per-user folder under the system temporary directory when the home
    cache is not writable.
    """
    root = os.environ.get(CACHE_ENV)
    candidates = [Path(root)] if root else [Path.home() / ".cache" / "scancc"]
    candidates.append(Path(tempfile.gettempdir()) / f"scancc-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    for base in candidates:
        path = base / backend
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise RuntimeError(f"no writable cache directory for generated {backend} kernels; set ${CACHE_ENV}")


def load_source(source: str, backend: str, stem: str) -> ModuleType:
    """Import ``source`` as a module (one per distinct source per process).

    ``stem`` (an identifier, e.g. the program name) starts the file and module names.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    module_name = f"scancc_generated_{backend}_{stem}_{digest}"
    with _lock:
        module = sys.modules.get(module_name)
        if module is not None:
            return module
        path = cache_dir(backend) / f"{stem}_{digest}.py"
        if not path.exists() or path.read_text(encoding="utf-8") != source:
            write_atomic(path, source)
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import generated kernels from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module
