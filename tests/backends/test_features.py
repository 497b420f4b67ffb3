"""The capability query and the generated feature matrix (docs/features.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from scancc import ir
from scancc.backends import capabilities as caps_mod
from scancc.backends.capabilities import capabilities, features_markdown, query, supported
from scancc.backends.registry import known_backends
from scancc.cli import main

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "docs" / "features.md"


def test_docs_features_md_is_up_to_date() -> None:
    assert FEATURES.exists(), "docs/features.md is missing: scancc features --markdown --output docs/features.md"
    assert FEATURES.read_text() == features_markdown(), (
        "docs/features.md is out of date: run scancc features --markdown --output docs/features.md")


def test_every_registered_backend_is_in_the_matrix() -> None:
    caps = capabilities()
    assert {c.backend for c in caps} == set(known_backends())
    text = features_markdown(caps)
    for name in known_backends():
        assert f"## `{name}`" in text


def test_known_answers() -> None:
    assert supported("triton", ir.ssd()) == {"forward": True, "backward": True, "step": True}
    assert supported("tvm", ir.gla())["backward"]
    assert not query("triton", ir.gla(), "ssd_chunked").forward
    assert query("triton", ir.gla(), "ssd_chunked").reason
    assert not query("tvm", ir.ssd(), "ssd_chunked").forward


class _ForwardOnly:
    """A backend that lowers SSD forward only, with the optional backward hook."""

    name = "fwdonly"

    def available(self) -> bool:
        return False  # no runtime: the query must not need one

    def supports(self, program: ir.Program, schedule: ir.Schedule) -> bool:
        return self.unsupported_reason(program, schedule) is None

    def unsupported_reason(self, program: ir.Program, schedule: ir.Schedule) -> Optional[str]:
        return None if program.family == "ssd" and schedule.algorithm == "sequential" else "only SSD, sequential"

    def backward_unsupported_reason(self, program: ir.Program, schedule: ir.Schedule) -> Optional[str]:
        return "forward only"

    def default_schedule(self, program: ir.Program) -> ir.Schedule:
        return ir.Schedule(algorithm="sequential")


def test_query_is_generic_over_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    real = caps_mod.get_backend
    monkeypatch.setattr(caps_mod, "get_backend", lambda name: _ForwardOnly() if name == "fwdonly" else real(name))
    caps = capabilities(["triton", "fwdonly"], programs=[("ssd", ir.ssd()), ("linear", ir.linear())])
    mine = {(c.program, c.algorithm): c for c in caps if c.backend == "fwdonly"}
    assert mine[("ssd", "sequential")].forward and not mine[("ssd", "sequential")].backward
    assert not mine[("linear", "sequential")].forward
    assert mine[("linear", "sequential")].reason == "only SSD, sequential"
    text = features_markdown(caps)
    assert "## `fwdonly`" in text and "| ssd | ssd | — | fwd |" in text
    assert "- linear: only SSD, sequential" in text


def test_query_needs_no_gpu_runtime() -> None:
    """Asking every backend imports no CuPy and initialises no CUDA context."""
    script = ("import sys, torch\n"
              "from scancc.backends.capabilities import capabilities\n"
              "capabilities()\n"
              "assert 'cupy' not in sys.modules, 'the capability query imported cupy'\n"
              "assert not torch.cuda.is_initialized()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_cli(capsys: Any, tmp_path: Path) -> None:
    assert main(["features"]) == 0
    assert "ssd" in capsys.readouterr().out
    out = tmp_path / "features.md"
    assert main(["features", "--markdown", "--output", str(out)]) == 0
    assert out.read_text() == features_markdown()
    assert main(["features", "--markdown", "--check", str(out)]) == 0
    out.write_text("stale\n")
    assert main(["features", "--markdown", "--check", str(out)]) == 1
    assert "out of date" in capsys.readouterr().err
