"""The persistent schedule cache: JSON records, one file per device and backend.

Layout: ``$SCANCC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/scancc/autotune``, i.e.
``~/.cache/scancc/autotune``) holds ``<device>-<arch>--<backend>.json``, each::

    {"schema": "scancc.autotune", "version": 1, "records": [
        {"key": {"device": "NVIDIA H100 80GB HBM3", "arch": "sm90", "backend": "triton",
                 "backend_version": "triton-3.6.0", "scancc_version": "0.1.0",
                 "program": "<Program.hash>", "bucket": "seqlen<=4096 rows<=32768 dstate=16 bf16"},
         "schedule": {...}, "time_s": ..., "default_time_s": ..., "shape": {...}, "program_name": ...,
         "tuned_at": "..."}]}

The key's ``bucket`` rounds the sequence length and ``batch × dim`` (``batch × heads``)
up to powers of two, so a new length does not force a retune; dimensions that decide
which tiles fit (``dstate``, ``headdim``, ``groups``, ``rank``, ``pairs``) stay exact.

Concurrency: a writer takes an exclusive ``fcntl.flock`` on ``<file>.lock``, re-reads
the file, merges its records (same key: the new record wins), writes a temporary file
in the same directory and ``os.replace``-s it over the old one. Readers never lock: they
see either the old or the new file, never a partial one. Where ``fcntl`` is missing
(Windows) writes are still atomic, but two simultaneous writers may drop each other's
records. A corrupt file, or one with another schema or version, is reported with
``warnings.warn`` and treated as empty; the next write moves it to ``<file>.bad`` and
starts a fresh one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ..atomic_io import write_atomic
from ..ir import Schedule
from .problem import Problem

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

SCHEMA = "scancc.autotune"
SCHEMA_VERSION = 1


class CacheWarning(UserWarning):
    """A cache file could not be used (corrupt, foreign schema or version, bad record)."""


def cache_dir() -> Path:
    """``$SCANCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/scancc/autotune``, else ``~/.cache/scancc/autotune``."""
    explicit = os.environ.get("SCANCC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scancc" / "autotune"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def shape_bucket(problem: Problem) -> str:
    """The shape part of a cache key, e.g. ``"seqlen<=4096 rows<=32768 dstate=16 bf16"``.

    ``seqlen`` (at least 16) and rows (``batch × dim`` or ``batch × heads``) round up to a
    power of two; the other dimensions, and the dtype, are exact.
    """
    parts = []
    if "seqlen" in dict(problem.dims):
        parts.append(f"seqlen<={_next_pow2(max(16, problem.seqlen))}")
    parts.append(f"rows<={_next_pow2(problem.rows)}")
    skip = {"seqlen", "batch", "dim", "heads"}
    parts += [f"{k}={v}" for k, v in problem.dims if k not in skip]
    parts.append(problem.dtype_name)
    return " ".join(parts)


@dataclass(frozen=True)
class CacheKey:
    """What a tuned schedule is valid for."""

    device: str
    arch: str
    backend: str
    backend_version: str
    scancc_version: str
    program: str
    bucket: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"CacheKey.{f.name} must be a non-empty string, got {value!r}")

    @property
    def id(self) -> str:
        return "|".join(getattr(self, f.name) for f in fields(self))

    @property
    def file_name(self) -> str:
        """``nvidia-h100-80gb-hbm3-sm90--triton.json``; ``cpu--triton.json`` on the CPU."""
        device = re.sub(r"[^a-z0-9]+", "-", self.device.lower()).strip("-") or "device"
        stem = device if self.arch == device else f"{device}-{self.arch}"
        backend = re.sub(r"[^a-z0-9]+", "-", self.backend.lower()).strip("-")
        return f"{stem}--{backend}.json"

    @classmethod
    def from_dict(cls, data: Any) -> "CacheKey":
        if not isinstance(data, dict):
            raise ValueError(f"a cache key must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        if set(data) != set(names):
            raise ValueError(f"a cache key has fields {sorted(names)}, got {sorted(data)}")
        return cls(**data)


@dataclass(frozen=True)
class Record:
    """A tuned schedule and how it was measured (times in seconds, medians)."""

    key: CacheKey
    schedule: Schedule
    time_s: Optional[float] = None
    default_time_s: Optional[float] = None
    shape: dict[str, int] = field(default_factory=dict)
    program_name: str = ""
    tuned_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": asdict(self.key), "schedule": self.schedule.to_dict(), "time_s": self.time_s,
                "default_time_s": self.default_time_s, "shape": dict(self.shape),
                "program_name": self.program_name, "tuned_at": self.tuned_at}

    @classmethod
    def from_dict(cls, data: Any) -> "Record":
        if not isinstance(data, dict):
            raise ValueError(f"a cache record must be a JSON object, got {type(data).__name__}")
        extra = set(data) - {f.name for f in fields(cls)}
        if extra:
            raise ValueError(f"unknown cache record fields {sorted(extra)}")
        if "key" not in data or "schedule" not in data:
            raise ValueError("a cache record needs 'key' and 'schedule'")
        for name in ("time_s", "default_time_s"):
            value = data.get(name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"cache record {name} must be a number or null, got {value!r}")
        shape = data.get("shape", {})
        if not isinstance(shape, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in shape.items()):
            raise ValueError(f"cache record shape must map names to ints, got {shape!r}")
        return cls(CacheKey.from_dict(data["key"]), Schedule.from_dict(data["schedule"]), data.get("time_s"),
                   data.get("default_time_s"), dict(shape), str(data.get("program_name", "")),
                   str(data.get("tuned_at", "")))

    @property
    def speedup(self) -> Optional[float]:
        if not self.time_s or not self.default_time_s:
            return None
        return self.default_time_s / self.time_s


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- reading and writing one file ------------------------------------------------------------
class _Unusable(Exception):
    """The file exists but cannot be used: corrupt, or another schema/version."""


def _parse(text: str, origin: str) -> list[Record]:
    """Records of a cache document; raises ``_Unusable`` for a corrupt or foreign document and
    warns about (and drops) single bad records."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unusable(f"{origin} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _Unusable(f"{origin} is not a scancc autotune cache (expected schema {SCHEMA!r})")
    if doc.get("version") != SCHEMA_VERSION:
        raise _Unusable(f"{origin} has cache format version {doc.get('version')!r}; "
                        f"this scancc reads version {SCHEMA_VERSION}")
    if not isinstance(doc.get("records"), list):
        raise _Unusable(f"{origin} has no 'records' list")
    out = []
    for i, item in enumerate(doc["records"]):
        try:
            out.append(Record.from_dict(item))
        except (ValueError, TypeError) as exc:
            warnings.warn(f"ignoring record {i} of {origin}: {exc}", CacheWarning, stacklevel=3)
    return out


def read_records(path: Path) -> list[Record]:
    """Records of the file at ``path``; ``[]`` (with a :class:`CacheWarning`) when it is unusable,
    ``[]`` silently when it does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"ignoring cache file {path}: {exc}", CacheWarning, stacklevel=2)
        return []
    try:
        return _parse(text, str(path))
    except _Unusable as exc:
        warnings.warn(f"ignoring {exc}", CacheWarning, stacklevel=2)
        return []


def dumps(records: Iterable[Record]) -> str:
    ordered = sorted(records, key=lambda r: r.key.id)
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, "records": [r.to_dict() for r in ordered]}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (no-op without ``fcntl``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def merge_into(path: Path, records: Iterable[Record]) -> None:
    """Add ``records`` to the file at ``path`` under its lock (same key: the new record wins)."""
    path = Path(path)
    new = list(records)
    with _locked(path):
        existing: list[Record] = []
        try:
            existing = _parse(path.read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            pass
        except (_Unusable, OSError, UnicodeDecodeError) as exc:
            backup = path.with_name(path.name + ".bad")
            warnings.warn(f"rebuilding {path}: {exc}; the old file is kept as {backup}", CacheWarning, stacklevel=2)
            with contextlib.suppress(OSError):
                os.replace(path, backup)
        merged = {r.key.id: r for r in existing}
        merged.update((r.key.id, r) for r in new)
        write_atomic(path, dumps(merged.values()), fsync=True)


# -- the cache directory ------------------------------------------------------------------
class ScheduleCache:
    """The cache files in ``directory`` (default :func:`cache_dir`, read when the object is made).

    Parsed files are kept in memory and re-read when their size or mtime changes.
    """

    _index: dict[Path, tuple[tuple[int, int], dict[str, Record]]] = {}

    def __init__(self, directory: Optional[os.PathLike[str] | str] = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir()

    def path_for(self, key: CacheKey) -> Path:
        return self.directory / key.file_name

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.json") if p.is_file())

    def _records_by_id(self, path: Path) -> dict[str, Record]:
        try:
            st = path.stat()
        except FileNotFoundError:
            ScheduleCache._index.pop(path, None)
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        cached = ScheduleCache._index.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        records = {r.key.id: r for r in read_records(path)}
        ScheduleCache._index[path] = (stamp, records)
        return records

    def lookup(self, key: CacheKey) -> Optional[Record]:
        return self._records_by_id(self.path_for(key)).get(key.id)

    def put(self, records: Iterable[Record]) -> int:
        """Merge ``records`` into their files; returns how many were written."""
        by_file: dict[Path, list[Record]] = {}
        for r in records:
            if not isinstance(r, Record):
                raise TypeError(f"put() takes Record objects, got {type(r).__name__}")
            by_file.setdefault(self.path_for(r.key), []).append(r)
        for path, group in by_file.items():
            merge_into(path, group)
        return sum(len(g) for g in by_file.values())

    def records_in(self, path: Path) -> list[Record]:
        """The usable records of one cache file."""
        return list(self._records_by_id(Path(path)).values())

    def records(self) -> list[Record]:
        """Every usable record of every file, sorted by key."""
        out = [r for p in self.files() for r in self.records_in(p)]
        return sorted(out, key=lambda r: r.key.id)

    def clear(self, backend: Optional[str] = None) -> list[Path]:
        """Delete the cache files (of one backend only, if given); returns the files removed."""
        removed = []
        for path in self.files():
            if backend is not None and not path.name.endswith(f"--{backend}.json"):
                continue
            with _locked(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            with contextlib.suppress(FileNotFoundError):
                path.with_name(path.name + ".lock").unlink()
            removed.append(path)
        return removed

    def export(self, dest: os.PathLike[str] | str) -> int:
        """Write every record into one file of the same format; returns the record count."""
        records = self.records()
        write_atomic(Path(dest), dumps(records), fsync=True)
        return len(records)

    def import_file(self, src: os.PathLike[str] | str) -> int:
        """Merge the records of an exported file into the cache; a corrupt or foreign file is an error."""
        path = Path(src)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        try:
            records = _parse(text, str(path))
        except _Unusable as exc:
            raise ValueError(str(exc)) from None
        return self.put(records)


# -- shipped defaults -------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def shipped_records() -> tuple[Record, ...]:
    """Records in the package's ``autotune/defaults/*.json`` (tuned on the named GPUs)."""
    out: list[Record] = []
    folder = resources.files("scancc.autotune").joinpath("defaults")
    if not folder.is_dir():
        return ()
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            try:
                out.extend(_parse(item.read_text(encoding="utf-8"), f"shipped defaults {item.name}"))
            except _Unusable as exc:
                warnings.warn(f"ignoring {exc}", CacheWarning, stacklevel=2)
    return tuple(out)


def shipped_lookup(key: CacheKey, records: Optional[Iterable[Record]] = None) -> Optional[Record]:
    """A shipped record for ``key``: same backend, program and bucket; the same GPU name if
    one was tuned, else the same architecture. Versions are not compared: a shipped
    schedule is a starting point that beats the backend default, not a measurement."""
    same_arch = None
    for r in shipped_records() if records is None else records:
        k = r.key
        if (k.backend, k.program, k.bucket) != (key.backend, key.program, key.bucket):
            continue
        if k.device == key.device and k.arch == key.arch:
            return r
        if k.arch == key.arch and key.arch != "cpu" and same_arch is None:
            same_arch = r
    return same_arch
