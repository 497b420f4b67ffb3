"""The ``scancc`` command line: emit, demo, info, and clean failures on bad input."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scancc import cli
from scancc.backends.registry import get_backend, known_backends
from scancc.ir import PRESETS, Program, selective

REPO = Path(__file__).resolve().parent.parent.parent
TRITON = get_backend("triton")
BACKENDS = [name for name in known_backends() if get_backend(name).available()]


def _supported(backend: str, name: str) -> bool:
    impl = get_backend(backend)
    program = PRESETS[name]()
    return impl.supports(program, impl.default_schedule(program))


SUPPORTED = [(b, name) for b in BACKENDS for name in PRESETS if _supported(b, name)]
UNSUPPORTED = [(b, name) for b in BACKENDS for name in PRESETS if not _supported(b, name)]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m scancc ARGS`` in a fresh interpreter (the console script's code path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, "-m", "scancc", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def test_help_lists_every_command() -> None:
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    for command in ("emit", "demo", "info"):
        assert command in res.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_the_triton_backend_supports_some_presets() -> None:
    assert ("triton", "selective") in SUPPORTED and ("triton", "linear") in SUPPORTED


@pytest.mark.parametrize("backend, name", SUPPORTED)
def test_emit_prints_the_backends_source(backend: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emit", name, "--backend", backend]) == 0
    source = capsys.readouterr().out
    impl = get_backend(backend)
    program = PRESETS[name]()
    assert source == impl.lower(program, impl.default_schedule(program))
    ast.parse(source)  # Triton kernels and TVMScript are both Python
    if backend == "triton":
        assert "@triton.jit" in source and program.name in source


@pytest.mark.parametrize("backend, name", UNSUPPORTED)
def test_emit_of_an_unsupported_preset_fails_cleanly(backend: str, name: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emit", name, "--backend", backend]) == 1
    captured = capsys.readouterr()
    assert f"backend {backend!r} cannot lower program" in captured.err and captured.out == ""


def test_emit_describe_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emit", "selective", "--describe"]) == 0
    assert capsys.readouterr().out.strip() == selective().describe()
    assert cli.main(["emit", "selective", "--json"]) == 0
    assert Program.from_json(capsys.readouterr().out) == selective()


def test_emit_set_passes_preset_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emit", "selective", "--set", "complex=true", "--set", "gate=false", "--json"]) == 0
    assert Program.from_json(capsys.readouterr().out) == selective(complex=True, gate=False)
    assert cli.main(["emit", "ssd", "--set", "dt_limit=0.001,0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"]["clamp"] == [0.001, 0.1]


def test_emit_reads_a_program_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = selective(gate=False)
    path = tmp_path / "prog.json"
    path.write_text(program.to_json())
    assert cli.main(["emit", str(path)]) == 0
    assert capsys.readouterr().out == TRITON.lower(program, TRITON.default_schedule(program))


def test_emit_schedule_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emit", "selective", "--schedule", "block_l=3"]) == 2
    assert "block_l" in capsys.readouterr().err
    assert cli.main(["emit", "selective", "--schedule", "no_such_field=1"]) == 2
    assert "num_warps" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["emit", "no_such_preset"], "unknown preset 'no_such_preset'; choose one of: linear"),
        (["emit", "selective", "--backend", "no_such_backend"], "unknown backend 'no_such_backend'; choose one of: triton"),
        (["emit", "selective", "--set", "no_such_arg=1"], "its settings: complex"),
        (["emit", "selective", "--set", "complex"], "expects KEY=VALUE"),
        (["emit", "lti", "--set", "discretization=euler"], "discretization"),
        (["emit", "missing.json"], "cannot read program file"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_bad_program_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"scancc_ir": 1, "name": "x"}')
    assert cli.main(["emit", str(path)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_bad_preset_from_the_console_entry_point() -> None:
    res = run_cli("emit", "mamba9")
    assert res.returncode == 2
    assert "unknown preset 'mamba9'" in res.stderr and "selective" in res.stderr


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("False", False), ("none", None), ("3", 3), ("0.5", 0.5), ("inf", float("inf")),
     ("0.001,0.1", (0.001, 0.1)), ("zoh", "zoh")],
)
def test_parse_value(text: str, value: object) -> None:
    assert cli.parse_value(text) == value


def test_info_names_versions_and_backends() -> None:
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    for word in ("scancc", "torch", "triton", "device", "backends"):
        assert word in res.stdout


def test_demo_quick_runs_and_passes() -> None:
    res = run_cli("demo", "--quick", "--device", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("selective") and " pass" in line for line in lines), res.stdout
    assert " 0 failed" in res.stdout


def test_demo_fails_when_a_kernel_disagrees_with_the_oracle(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import scancc.oracle

    real = scancc.oracle.sequential
    monkeypatch.setattr(scancc.oracle, "sequential", lambda program, inputs: real(program, inputs) * 1.01)
    monkeypatch.setattr(cli, "QUICK_PRESETS", ("linear",))
    assert cli.main(["demo", "--quick", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"0 passed, {len(BACKENDS)} failed" in out


def test_demo_lists_unsupported_programs_as_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "QUICK_PRESETS", ("linear", "mamba3"))
    monkeypatch.setattr(TRITON, "supports", lambda program, schedule: program.family != "mamba3")
    assert cli.main(["demo", "--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "not supported by triton" in out
