"""CUDA C source → loaded kernels (NVRTC through CuPy), cached on disk, launched on torch tensors.

CuPy is imported lazily: rendering sources (``lower``) needs neither CuPy nor a GPU.

Compilation: :func:`load_kernels` compiles a source with NVRTC for the device's ``sm_XY``
into a cubin and loads it with ``cupy.RawModule(path=...)``. Cubins are cached in
``$SCANCC_CACHE_DIR/cuda`` (see :func:`scancc.backends.modules.cache_dir`) under the
SHA-256 of (source, options, arch, NVRTC version); each entry is a ``.cubin`` and a
``.json`` record holding the cubin's own SHA-256, both written atomically (temporary
file, then rename). An entry that is missing, unreadable or whose hash does not match is
rebuilt; a cache that cannot be written only costs a recompile next time. If the direct
NVRTC route is unavailable (an older CuPy without ``getCUBIN``, headers not found), the
source is compiled by ``cupy.RawModule(code=...)`` instead, which keeps its own cache.

Launching: :func:`launch` runs a kernel on torch's current stream of the tensors' device
(``torch.cuda.current_stream().cuda_stream`` wrapped in ``cupy.cuda.ExternalStream``), so
kernels order correctly with torch work and under CUDA graph capture. Arguments are passed
as NumPy scalars of the kernel's parameter types: pointers (``data_ptr``) as uint64.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import write_atomic
from .modules import cache_dir

INSTALL_HINT = "pip install 'scancc[cuda]' (CuPy for CUDA 12/13, e.g. cupy-cuda12x or cupy-cuda13x)"
CACHE_FORMAT = 1

_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def cupy_module() -> Any:
    """``import cupy``, or ``ImportError`` naming the extra to install."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"the CUDA backend needs CuPy: {INSTALL_HINT}") from exc
    return cupy


def unavailable_reason() -> str | None:
    """Why CUDA kernels cannot run here (no CuPy, no GPU), or ``None``."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return f"CuPy is not importable ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


# -- the disk cache ------------------------------------------------------------------------------
def cache_key(source: str, options: Sequence[str], arch: str, nvrtc_version: str) -> str:
    """SHA-256 over everything that changes the cubin."""
    blob = json.dumps({"format": CACHE_FORMAT, "source": source, "options": list(options), "arch": arch,
                       "nvrtc": nvrtc_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class CubinCache:
    """Cubins on disk by :func:`cache_key`: ``<key>.cubin`` + ``<key>.json``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir("cuda")

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.cubin", self.root / f"{key}.json"

    def get(self, key: str) -> Path | None:
        """The cubin's path if the entry is complete and intact, else ``None``."""
        cubin, meta = self.paths(key)
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
            data = cubin.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
            return None
        if record.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        return cubin

    def put(self, key: str, data: bytes, info: dict[str, Any]) -> Path | None:
        """Store a cubin (cubin first, then its record); ``None`` if the cache is not writable."""
        cubin, meta = self.paths(key)
        record = {"format": CACHE_FORMAT, "sha256": hashlib.sha256(data).hexdigest(), **info}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(cubin, data)
            write_atomic(meta, json.dumps(record, sort_keys=True, indent=1).encode())
        except OSError as exc:
            warnings.warn(f"scancc: cannot write the CUDA kernel cache at {self.root}: {exc}", stacklevel=3)
            return None
        return cubin

    def get_or_build(self, key: str, build: Callable[[], bytes], info: dict[str, Any]) -> tuple[Path | None, bytes]:
        """``(path, cubin)``: a cached entry, or ``build()`` stored (path ``None`` if not stored)."""
        hit = self.get(key)
        if hit is not None:
            return hit, hit.read_bytes()
        data = build()
        return self.put(key, data, info), data


# -- compiling -----------------------------------------------------------------------------------
def device_arch(device_index: int) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return f"sm_{major}{minor}"


def _nvrtc() -> Any:
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError:  # older CuPy layouts
        from cupy.cuda import nvrtc  # type: ignore[no-redef]
    return nvrtc


def nvrtc_version() -> str:
    return ".".join(str(v) for v in _nvrtc().getVersion())


def include_dirs() -> list[str]:
    """Folders that may hold ``cuda_fp16.h``/``cuda_bf16.h`` for NVRTC."""
    found: list[str] = []
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    try:
        import cupy

        roots.insert(0, cupy.cuda.get_cuda_path())
    except Exception:  # no CuPy or no CUDA path known to it
        pass
    for root in roots:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_fp16.h")):
            found.append(os.path.join(root, "include"))
    try:  # the pip wheels of the CUDA runtime (nvidia-cuda-runtime-cu12 / cu13)
        import nvidia  # type: ignore[import-not-found]

        for base in getattr(nvidia, "__path__", []):
            for sub in ("cuda_runtime/include", "cu13/include", "cuda_nvrtc/include"):
                path = os.path.join(base, sub)
                if os.path.isfile(os.path.join(path, "cuda_fp16.h")):
                    found.append(path)
    except ImportError:
        pass
    return list(dict.fromkeys(found))


def compile_cubin(source: str, options: Sequence[str], arch: str, name: str = "scancc.cu") -> bytes:
    """NVRTC: ``source`` → cubin for ``arch`` (``sm_90``); ``RuntimeError`` with the log on failure."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source, name, (), ())
    try:
        opts = [f"--gpu-architecture={arch}", "--std=c++17", *options]
        opts += [f"--include-path={d}" for d in include_dirs()]
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception as exc:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(f"NVRTC failed to compile {name} for {arch}:\n{log}") from exc
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


def load_kernels(source: str, names: Sequence[str], options: Sequence[str], device_index: int,
                 cache: CubinCache | None = None) -> dict[str, Any]:
    """The kernels ``names`` (``extern "C"``) of ``source`` compiled with ``options`` for the
    device ``device_index``: ``{name: cupy.RawKernel}`` (memoised per process)."""
    cupy = cupy_module()
    arch = device_arch(device_index)
    try:
        version = nvrtc_version()
    except Exception:
        version = "unknown"
    key = cache_key(source, options, arch, version)
    memo = f"{key}:{device_index}"
    with _lock:
        hit = _loaded.get(memo)
    if hit is not None:
        return hit
    with cupy.cuda.Device(device_index):
        try:
            store = cache or CubinCache()
            path, data = store.get_or_build(key, lambda: compile_cubin(source, options, arch),
                                            {"arch": arch, "nvrtc": version, "options": list(options),
                                             "kernels": list(names)})
            if path is not None:
                module = cupy.RawModule(path=str(path))
            else:
                with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
                    f.write(data)
                module = cupy.RawModule(path=f.name)
            kernels = {n: module.get_function(n) for n in names}
        except Exception as direct_error:
            # CuPy's own compile path (its include handling and its cache) before giving up
            try:
                module = cupy.RawModule(code=source, options=tuple(["--std=c++17", *options]), backend="nvrtc")
                kernels = {n: module.get_function(n) for n in names}
            except Exception as fallback_error:
                raise RuntimeError(f"cannot build CUDA kernels {list(names)} for {arch}: {fallback_error}\n"
                                   f"(direct NVRTC route: {direct_error})") from fallback_error
    with _lock:
        return _loaded.setdefault(memo, kernels)


def clear_memory_cache() -> None:
    with _lock:
        _loaded.clear()


# -- launching -----------------------------------------------------------------------------------
def pointer(t: Any) -> np.uint64:
    """A tensor's device address as a kernel argument (``None`` → null)."""
    return np.uint64(0 if t is None else t.data_ptr())


ARG_TYPES: dict[str, Callable[[Any], Any]] = {
    "ptr": pointer,
    "long long": np.int64,
    "int": np.int32,
    "float": np.float32,
}


def pack_args(params: Sequence[tuple[str, str]], values: dict[str, Any]) -> tuple[Any, ...]:
    """Kernel arguments in the order of ``params`` (``(ctype, name)``; pointer ctypes end in ``*``)."""
    missing = [name for _, name in params if name not in values]
    if missing:
        raise KeyError(f"kernel arguments missing: {missing}")
    args = []
    for ctype, name in params:
        kind = "ptr" if ctype.endswith("*") else ctype
        args.append(ARG_TYPES[kind](values[name]))
    return tuple(args)


def launch(kernel: Any, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], device: Any,
           shared_mem: int = 0) -> None:
    """Launch on torch's current stream of ``device`` (a CUDA torch.device)."""
    import torch

    cupy = cupy_module()
    if any(g <= 0 for g in grid):
        return
    if grid[0] >= 2 ** 31 or any(g >= 65536 for g in grid[1:]):
        raise ValueError(f"grid {grid} exceeds CUDA's limits")
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
    with cupy.cuda.Device(index), stream:
        kernel(grid, block, args, shared_mem=shared_mem)
