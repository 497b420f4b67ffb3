"""The schedule cache: keys and buckets, merge-on-write, concurrent writers, damaged files, shipped defaults."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

import scancc
import scancc.ir as ir
from scancc.autotune import CacheKey, CacheWarning, DeviceLimits, Problem, Record, ScheduleCache, cache_dir
from scancc.autotune import cache_key, shape_bucket, shipped_records
from scancc.autotune.cache import SCHEMA, SCHEMA_VERSION, shipped_lookup
from scancc.ir import Schedule

from autotune_fakes import FakeBackend

H100 = DeviceLimits(name="NVIDIA H100 80GB HBM3", capability=(9, 0), sm_count=132, l2_bytes=50 << 20)


def _bucket(dtype: str = "bf16", **dims: int) -> str:
    shape = {"batch": 4, "dim": 5120, "dstate": 16, "seqlen": 4096, **dims}
    return shape_bucket(Problem.make(ir.selective(), shape, dtype))


def _key(program: str = "p0", bucket: str = "seqlen<=64 rows<=8 fp32", device: str = "cpu", arch: str = "cpu",
         backend: str = "fake") -> CacheKey:
    return CacheKey(device=device, arch=arch, backend=backend, backend_version="fake-1.0", scancc_version="0.1.0",
                    program=program, bucket=bucket)


def _record(i: int = 0, **key: str) -> Record:
    return Record(_key(program=f"p{i}", **key), Schedule(block_l=64 << (i % 4), num_warps=4), time_s=1e-3,
                  default_time_s=2e-3, shape={"seqlen": 64}, program_name="linear_scan",
                  tuned_at="2026-01-01T00:00:00Z")


def test_shape_buckets_round_seqlen_and_rows_up_to_powers_of_two() -> None:
    base = _bucket()
    assert base == "seqlen<=4096 rows<=32768 dstate=16 groups=1 bf16"
    assert _bucket(seqlen=3000) == _bucket(seqlen=2049) == base
    assert _bucket(seqlen=4097) != base
    assert _bucket(batch=2, dim=10240) == _bucket(batch=8, dim=2560) == base  # batch × dim, not each
    assert _bucket(batch=8) != base
    assert _bucket(dstate=32) != base and _bucket("fp32") != base
    assert _bucket(seqlen=1) == _bucket(seqlen=16)  # short sequences share one bucket
    step = Problem.make(ir.selective().as_step(), {"batch": 4, "dim": 5120, "dstate": 16}, "bf16")
    assert shape_bucket(step) == "rows<=32768 dstate=16 groups=1 bf16"
    head = Problem.make(ir.ssd(), {"batch": 2, "seqlen": 100, "heads": 24, "headdim": 64, "dstate": 128}, "bf16")
    assert shape_bucket(head) == "seqlen<=128 rows<=64 dstate=128 groups=1 headdim=64 bf16"


def test_cache_key_composition() -> None:
    problem = Problem.make(ir.selective(), {"batch": 4, "dim": 5120, "dstate": 16, "seqlen": 4096}, "bf16")
    key = cache_key(problem, FakeBackend(), H100)
    assert key == CacheKey(device="NVIDIA H100 80GB HBM3", arch="sm90", backend="fake", backend_version="fake-1.0",
                           scancc_version=scancc.__version__, program=ir.selective().hash, bucket=shape_bucket(problem))
    assert key.file_name == "nvidia-h100-80gb-hbm3-sm90--fake.json"
    assert cache_key(problem, FakeBackend(), DeviceLimits.cpu()).file_name == "cpu--fake.json"
    other = cache_key(problem, FakeBackend(version="fake-2.0"), H100)
    assert other.id != key.id and other.file_name == key.file_name  # versions share a file, not a record
    with pytest.raises(ValueError, match="CacheKey.bucket"):
        CacheKey("cpu", "cpu", "fake", "1", "0.1.0", "p", "")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANCC_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("SCANCC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "scancc" / "autotune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "scancc" / "autotune"


def test_put_lookup_merge_and_replace(private_cache: Path) -> None:
    cache = ScheduleCache()
    assert cache.directory == private_cache and cache.lookup(_key()) is None
    cache.put([_record(0), _record(1)])
    cache.put([_record(2)])
    assert [r.key.program for r in cache.records()] == ["p0", "p1", "p2"]
    newer = Record(_key(program="p1"), Schedule(block_l=1024), time_s=5e-4)
    cache.put([newer])
    assert cache.lookup(_key(program="p1")) == newer
    assert len(cache.records()) == 3
    # One file per device + backend.
    cache.put([_record(3, device="NVIDIA H100 80GB HBM3", arch="sm90")])
    assert [p.name for p in cache.files()] == ["cpu--fake.json", "nvidia-h100-80gb-hbm3-sm90--fake.json"]
    doc = json.loads((private_cache / "cpu--fake.json").read_text())
    assert doc["schema"] == SCHEMA and doc["version"] == SCHEMA_VERSION and len(doc["records"]) == 3
    assert not list(private_cache.glob("*.tmp"))


def _writer(directory: str, worker: int, count: int) -> None:
    cache = ScheduleCache(directory)
    for i in range(count):
        cache.put([_record(worker * 100 + i)])


def test_concurrent_writers_lose_nothing(private_cache: Path) -> None:
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        pytest.skip("needs fork")
    workers, each = 6, 8
    procs = [ctx.Process(target=_writer, args=(str(private_cache), w, each)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    doc = json.loads((private_cache / "cpu--fake.json").read_text())  # valid JSON
    programs = {r["key"]["program"] for r in doc["records"]}
    assert programs == {f"p{w * 100 + i}" for w in range(workers) for i in range(each)}
    assert not list(private_cache.glob(".*.tmp"))


def test_corrupt_file_warns_and_is_rebuilt(private_cache: Path) -> None:
    private_cache.mkdir(parents=True)
    path = private_cache / "cpu--fake.json"
    path.write_text('{"schema": "scancc.autotune", "version": 1, "records": [')  # truncated
    cache = ScheduleCache()
    with pytest.warns(CacheWarning, match="not valid JSON"):
        assert cache.lookup(_key()) is None
    with pytest.warns(CacheWarning, match="rebuilding"):
        cache.put([_record(0)])
    assert (private_cache / "cpu--fake.json.bad").exists()
    assert json.loads(path.read_text())["records"][0]["key"]["program"] == "p0"
    assert cache.lookup(_key()) == _record(0)


@pytest.mark.parametrize("doc, match", [
    ({"schema": "someone.else", "version": 1, "records": []}, "not a scancc autotune cache"),
    ({"schema": SCHEMA, "version": 99, "records": []}, "version 99"),
    ({"schema": SCHEMA, "version": SCHEMA_VERSION}, "no 'records' list"),
    ([1, 2, 3], "not a scancc autotune cache"),
])
def test_foreign_files_are_ignored_with_a_warning(private_cache: Path, doc: object, match: str) -> None:
    private_cache.mkdir(parents=True)
    (private_cache / "cpu--fake.json").write_text(json.dumps(doc))
    with pytest.warns(CacheWarning, match=match):
        assert ScheduleCache().lookup(_key()) is None


def test_a_bad_record_is_skipped_and_the_rest_kept(private_cache: Path) -> None:
    private_cache.mkdir(parents=True)
    good = _record(0).to_dict()
    bad = {**_record(1).to_dict(), "schedule": {"block_l": 3}}
    (private_cache / "cpu--fake.json").write_text(json.dumps({"schema": SCHEMA, "version": 1, "records": [bad, good]}))
    with pytest.warns(CacheWarning, match="ignoring record 0"):
        assert [r.key.program for r in ScheduleCache().records()] == ["p0"]


def test_cache_rereads_a_file_changed_by_another_process(private_cache: Path) -> None:
    cache = ScheduleCache()
    cache.put([_record(0)])
    assert cache.lookup(_key()) is not None
    ScheduleCache(private_cache).clear()
    assert cache.lookup(_key()) is None
    ScheduleCache(private_cache).put([_record(0)])
    assert cache.lookup(_key()) == _record(0)


def test_shipped_defaults_parse_and_match_by_device_then_arch() -> None:
    shipped = shipped_records()  # the package's defaults/*.json all load cleanly
    assert isinstance(shipped, tuple)
    h100 = json.loads((Path(scancc.__file__).parent / "autotune" / "defaults" / "h100.json").read_text())
    assert h100["schema"] == SCHEMA and h100["version"] == SCHEMA_VERSION and isinstance(h100["records"], list)

    exact = Record(_key(device="NVIDIA H100 80GB HBM3", arch="sm90"), Schedule(block_l=512))
    sibling = Record(_key(device="NVIDIA H100 PCIe", arch="sm90"), Schedule(block_l=256))
    want = CacheKey("NVIDIA H100 80GB HBM3", "sm90", "fake", "fake-9.9", "9.9.9", "p0", exact.key.bucket)
    assert shipped_lookup(want, [sibling, exact]) is exact  # versions are not compared
    pcie_only = CacheKey("NVIDIA H200", "sm90", "fake", "x", "y", "p0", exact.key.bucket)
    assert shipped_lookup(pcie_only, [sibling]) is sibling
    assert shipped_lookup(_key(), [sibling, exact]) is None  # a CPU never borrows a GPU's schedule
    other_bucket = CacheKey("NVIDIA H100 80GB HBM3", "sm90", "fake", "x", "y", "p0", "seqlen<=128 fp32")
    assert shipped_lookup(other_bucket, [exact]) is None
