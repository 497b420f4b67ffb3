"""The benchmark scripts' ``--smoke`` mode: tiny shapes on CPU under the Triton interpreter.

Peers (accelerated-scan, mamba-ssm) may be absent here (their rows then read
``unavailable: ...``); scancc's rows must be measured and within tolerance of float64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scancc.oracle import tolerance

REPO = Path(__file__).resolve().parents[2]


def run_smoke(script: str, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [json.loads(line) for line in (out / f"{script[len('bench_'):-len('.py')]}.jsonl").read_text().splitlines()]
    assert "meta" in lines[0] and lines[0]["meta"]["copy_tbps"] > 0
    return lines[1:]


@pytest.mark.parametrize("script, modes", [("bench_linear_scan.py", {"fwd"}),
                                           ("bench_selective_scan.py", {"fwd", "fwd+bwd"}),
                                           ("bench_ssd.py", {"fwd", "fwd+bwd", "decode"})])
def test_smoke_run_writes_checked_rows(script: str, modes: set[str], tmp_path: Path) -> None:
    rows = run_smoke(script, tmp_path)
    ours = [r for r in rows if r["impl"] == "scancc"]
    assert {r["mode"] for r in ours} == modes
    for r in ours:
        assert r["status"] == "ok" and r["time_ms"] > 0 and r["gbps"] > 0
        assert r["err"] <= tolerance(r["dtype"], chunked=True), r
    peers = [r for r in rows if r["impl"] != "scancc"]
    assert peers and all(r["status"] for r in peers)
    table = (tmp_path / f"{script[len('bench_'):-len('.py')]}.md").read_text()
    assert "| scancc |" in table and "Copy bandwidth" in table


def test_autotune_smoke_run_tunes_compares_and_exports(tmp_path: Path) -> None:
    """bench_autotune.py: budgeted and exhaustive phases per shape, side-by-side rows, the
    dispatch rows, and the exported records (the file that becomes defaults/h100.json)."""
    rows = run_smoke("bench_autotune.py", tmp_path)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    budgeted = [r for r in rows if r["impl"] == "budgeted"]
    assert len(budgeted) >= 3 and all(r["tune_s"] > 0 and r["tried"] >= 1 for r in budgeted)
    assert all(r["vs_exhaustive"] is not None for r in budgeted)
    sides = {(r["case"], r["impl"]) for r in rows if r["impl"].endswith("(side by side)")}
    assert {impl for _, impl in sides} == {"default (side by side)", "budgeted (side by side)",
                                           "exhaustive (side by side)"}
    dispatch = [r for r in rows if r["impl"] == "host us / call"]
    assert len(dispatch) == 2 and all(r["time_ms"] > 0 for r in dispatch)
    exported = json.loads((tmp_path / "autotune_defaults.json").read_text())
    assert exported["schema"] == "scancc.autotune" and len(exported["records"]) == len(budgeted)
    assert "| budgeted |" in (tmp_path / "autotune.md").read_text()


def _sass_mix(*args: str) -> tuple[str, dict[str, float]]:
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sass_mix.py"), *args],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    return res.stdout, {line.split()[0]: float(line.split()[-3]) for line in res.stdout.splitlines()[1:]}


def test_sass_mix_counts_the_selective_forward_instructions() -> None:
    """sass_mix.py compiles the selective forward for sm_90 without a GPU and reports per-element
    counts: the exp of the decay is one MUFU per state element at least."""
    out, per_element = _sass_mix("--algorithm", "sequential", "--block-d", "16", "--block-l", "16",
                                 "--num-warps", "1")
    assert "128 state elements per thread per tile" in out
    assert per_element["MUFU"] >= 1.0 and per_element["all"] > per_element["MUFU"], out


def test_unrolled_forward_scans_inside_threads() -> None:
    """The unrolled_scan selective forward keeps each channel's steps in one thread: no warp
    shuffles, and a few instructions per state element besides the exp's MUFU (the sequential
    forward takes 41, 12 of them shuffles)."""
    out, per_element = _sass_mix("--algorithm", "unrolled_scan", "--num-warps", "1")
    assert "unrolled_scan" in out and "512 state elements per thread per tile" in out, out
    assert per_element.get("SHFL", 0.0) == 0.0, out
    assert 1.0 <= per_element["MUFU"] < 1.5 and per_element["all"] < 20, out
