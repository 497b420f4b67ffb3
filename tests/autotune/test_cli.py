"""``scancc tune`` and ``scancc cache`` through their argparse entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import scancc.backends.registry as registry
from scancc.autotune import Record, ScheduleCache
from scancc.autotune.cache import CacheKey
from scancc.autotune.cli import add_tune_commands, parse_duration
from scancc.cli import main
from scancc.ir import Schedule, linear

from autotune_fakes import FakeBackend


def _records(n: int) -> list[Record]:
    return [Record(CacheKey("cpu", "cpu", "fake", "fake-1.0", "0.1.0", f"p{i}", "seqlen<=64 rows<=4 fp32"),
                   Schedule(block_l=64 << i), time_s=1e-3 * (i + 1), default_time_s=2e-3, program_name=f"prog{i}")
            for i in range(n)] + [
        Record(CacheKey("NVIDIA H100 80GB HBM3", "sm90", "triton", "triton-3.6.0", "0.1.0", "q", "rows<=8 bf16"),
               Schedule(algorithm="ssd_chunked", chunk=128))]


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    be = FakeBackend()
    real = registry.get_backend
    monkeypatch.setattr(registry, "get_backend", lambda name: be if name == "fake" else real(name))
    return be


def test_export_clear_import_round_trip(private_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ScheduleCache().put(_records(3))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["cache", "export", str(first)]) == 0
    assert "exported 4 records" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 2 cache files" in capsys.readouterr().out
    assert main(["cache", "list"]) == 0 and "(empty)" in capsys.readouterr().out
    assert main(["cache", "import", str(first)]) == 0
    assert "imported 4 records" in capsys.readouterr().out
    assert main(["cache", "export", str(second)]) == 0
    assert json.loads(first.read_text()) == json.loads(second.read_text())
    assert len(json.loads(second.read_text())["records"]) == 4


def test_list_show_and_clear_one_backend(private_cache: Path, capsys: pytest.CaptureFixture) -> None:
    ScheduleCache().put(_records(2))
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "cpu--fake.json" in out and "nvidia-h100-80gb-hbm3-sm90--triton.json" in out
    assert main(["cache", "show", "--backend", "fake"]) == 0
    out = capsys.readouterr().out
    assert "prog0 p0" in out and "block_l=128" in out and "2.00x" in out and "triton" not in out
    assert main(["cache", "show", "--program", "q"]) == 0
    assert "chunk=128" in capsys.readouterr().out
    assert main(["cache", "clear", "--backend", "triton"]) == 0
    assert [p.name for p in ScheduleCache().files()] == ["cpu--fake.json"]


def test_import_rejects_corrupt_and_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["cache", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "scancc cache: error:" in err and "not valid JSON" in err
    bad.write_text(json.dumps({"schema": "other", "records": []}))
    assert main(["cache", "import", str(bad)]) == 2
    assert main(["cache", "import", str(tmp_path / "missing.json")]) == 2
    assert not ScheduleCache().files()


def test_tune_command_prints_a_table_and_stores_the_winner(fake_backend: FakeBackend,
                                                          capsys: pytest.CaptureFixture) -> None:
    code = main(["tune", "linear", "--shape", "batch=1,dim=4,seqlen=128", "--backend", "fake", "--budget", "20s",
                 "--trials", "6", "--repeats", "3", "--warmup", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "config" in captured.out and "speedup" in captured.out and "(default)" in captured.out
    assert "[" in captured.err  # progress lines
    records = ScheduleCache().records()
    assert len(records) == 1 and records[0].program_name == "linear_scan"
    assert fake_backend.builds <= 1 + 6


def test_tune_no_save_and_bad_arguments(fake_backend: FakeBackend, capsys: pytest.CaptureFixture) -> None:
    assert main(["tune", "linear", "--shape", "batch=1,dim=4,seqlen=64", "--backend", "fake", "--no-save",
                 "--trials", "2", "--repeats", "2", "--device", "cpu"]) == 0
    assert not ScheduleCache().files()
    for argv, message in [
        (["linear", "--shape", "batch=1,dim=4"], "missing ['seqlen']"),
        (["linear", "--shape", "batch=1,dim=4,seqlen=64,heads=2"], "does not use"),
        (["linear", "--shape", "batch=1;dim=4"], "shape items"),
        (["linear", "--shape", "batch=1,dim=4,seqlen=64", "--dtype", "int8"], "dtype"),
        (["nonsense", "--shape", "batch=1"], "unknown preset"),
        (["selective", "--set", "colour=red", "--shape", "batch=1"], "no setting 'colour'"),
    ]:
        assert main(["tune", *argv, "--backend", "fake", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "scancc tune: error:" in err and message in err, (argv, err)
    assert main(["tune", "linear", "--shape", "batch=1,dim=4,seqlen=64", "--backend", "nope", "--device", "cpu"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "linear", "--shape", "batch=1,dim=4,seqlen=64", "--budget", "soon"])


def test_tune_a_program_file_with_the_oracle_as_reference(fake_backend: FakeBackend, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "prog.json"
    path.write_text(linear().to_json())
    assert main(["tune", str(path), "--shape", "batch=1,dim=2,seqlen=128", "--backend", "fake", "--trials", "3",
                 "--repeats", "2", "--device", "cpu", "--reference", "oracle", "--strategy", "exhaustive"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 4  # the default and three candidates agree with the oracle


def test_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("2m") == 120 and parse_duration("500ms") == 0.5
    assert parse_duration("1.5h") == 5400
    for bad in ("0s", "-1", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_commands_register_on_an_existing_parser() -> None:
    parser = argparse.ArgumentParser(prog="scancc")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("emit")
    add_tune_commands(sub)
    args = parser.parse_args(["cache", "export", "out.json"])
    assert args.file == "out.json" and callable(args.func)
    args = parser.parse_args(["tune", "ssd", "--shape", "batch=1", "--dtype", "bf16"])
    assert args.budget == 60.0 and args.backend == "triton" and args.strategy == "auto"
