"""The README and docs/architecture.md quote real commands, code and output: keep them true."""

from __future__ import annotations

from pathlib import Path

import pytest

from scancc.backends.registry import get_backend
from scancc.ir import selective

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()


def code_blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks opened with ```` ```lang ```` (``""``: no language)."""
    blocks, body, current = [], [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, body = line[3:].strip(), []
            else:
                if current == lang:
                    blocks.append("".join(body))
                current = None
        elif current is not None:
            body.append(line)
    return blocks


def test_quickstart_is_two_commands_that_ci_runs() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    install, test = (block.strip() for block in code_blocks(quickstart, "bash"))
    assert "torch==2.13.0" in install and "scancc demo" in install
    ci = (REPO / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    assert 'pip install -q torch==2.13.0 -e ".[all,test]"' in ci and 'torch==2.13.0 -e ".[all,test]"' in install


def test_readme_python_examples_run() -> None:
    namespace: dict[str, object] = {}
    for block in code_blocks(README, "python"):
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own examples
    assert tuple(namespace["out"].shape) == (2, 16, 64)  # type: ignore[union-attr]
    assert tuple(namespace["res"].out.shape) == (2, 8, 64)  # type: ignore[union-attr]


def test_architecture_example_matches_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    program = selective()
    blocks = code_blocks(ARCHITECTURE, "")
    assert program.describe() + "\n" in blocks
    assert code_blocks(ARCHITECTURE, "json") == [program.to_json() + "\n"]
    triton = get_backend("triton")
    schedule = triton.default_schedule(program)
    python = code_blocks(ARCHITECTURE, "python")
    assert f"{schedule!r}\n" in python
    loop = next(block for block in python if "tl.store(out" in block)
    # the doc shows unrolled_scan's time-major tiles (Triton 3.9's), unrolling two entries
    monkeypatch.setenv("SCANCC_TRITON_TILE_ORDER", "time_major")
    assert loop in triton.lower(program, schedule.replace(algorithm="unrolled_scan", block_n=2, num_warps=1))
