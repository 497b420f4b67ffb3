"""Shared benchmark harness: device set-up, timing, copy bandwidth, isolated cases, result files.

Every benchmark script is both an orchestrator and a worker. The orchestrator measures the
device's copy bandwidth, then runs each ``(implementation, shape, mode)`` case in a fresh
subprocess of the same script (``--case JSON``), so a peer kernel that crashes the CUDA
context (an illegal memory access) or runs out of memory becomes one ``crash: ...`` row
instead of ending the run. Rows are appended to ``<out>/<name>.jsonl`` as they arrive and
the markdown table ``<out>/<name>.md`` is rewritten after each one, so a run cut short still
leaves its results.

``--smoke`` runs tiny shapes; without a CUDA GPU the Triton kernels then run under the
interpreter (``TRITON_INTERPRET=1`` is set before ``triton`` is imported).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "RESULT "


class Unavailable(Exception):
    """A peer implementation cannot run here (not installed, does not build)."""


# -- device ---------------------------------------------------------------------------------

def scancc_or_mamba_ssm(name: str, device: str, op: str, peer_module: str, hint: str = "") -> Callable[..., Any]:
    """The function ``op`` of ``scancc.ops`` (``name`` ``"scancc"``) or of mamba-ssm's Triton module
    ``peer_module`` (``"mamba_ssm"``, from ``.anchors``; :class:`Unavailable` without a CUDA GPU or
    when it does not import: ``hint`` adds what it needs)."""
    import importlib

    if name == "scancc":
        return getattr(importlib.import_module("scancc.ops"), op)
    if name == "mamba_ssm":
        if device != "cuda":
            raise Unavailable("mamba-ssm's Triton kernels need a CUDA GPU")
        try:
            return getattr(importlib.import_module(peer_module), op)
        except ImportError as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc} (put .anchors on PYTHONPATH{hint})") from None
    raise ValueError(f"unknown implementation {name!r}; expected 'scancc' or 'mamba_ssm'")


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def init_device(smoke: bool) -> str:
    """Return ``"cuda"`` or (smoke runs only) ``"cpu"``; on CPU switch Triton to its interpreter.

    Must run before anything imports ``triton``.
    """
    if has_cuda():
        return "cuda"
    if not smoke:
        raise SystemExit("no CUDA GPU found: full benchmarks need one (use --smoke for a CPU check)")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return "cpu"


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# -- timing ---------------------------------------------------------------------------------

def bench_ms(fn: Callable[[], Any], device: str, *, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median time of ``fn()`` in milliseconds.

    CUDA: ``triton.testing.do_bench`` (warm-up, L2 flushed between calls, median). CPU (smoke
    runs under the interpreter, where only "it runs" matters): one wall-clock timing; the
    callers have already run ``fn`` once for their correctness check.
    """
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def graph_ms(fn: Callable[[], Any], device: str) -> float:
    """:func:`bench_ms` of ``fn`` captured in a CUDA graph (as decode loops run it: the
    op's argument checks and launch cost leave the timed region), or of ``fn`` itself on CPU."""
    if device != "cuda":
        return bench_ms(fn, device)
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench_ms(graph.replay, device)


def copy_bandwidth(device: str, smoke: bool) -> dict[str, float]:
    """Device copy bandwidth from ``Tensor.copy_`` of a bf16 tensor (2 GiB, or 8 MiB in smoke runs).

    Returns ``{"copy_ms", "copy_bytes", "copy_tbps"}`` with bytes counted as read + write.
    """
    import torch

    def timed_copy() -> tuple[float, int]:  # the 4 GiB are freed when it returns
        src = torch.empty((4 << 20) if smoke else (1 << 30), dtype=torch.bfloat16, device=device).normal_()
        dst = torch.empty_like(src)
        return bench_ms(lambda: dst.copy_(src), device), 2 * src.numel() * src.element_size()

    ms, moved = timed_copy()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"copy_ms": ms, "copy_bytes": float(moved), "copy_tbps": moved / (ms * 1e-3) / 1e12}


# -- rows and result files ----------------------------------------------------------------

@dataclass
class Row:
    """One measured (or failed) case. ``status`` is ``ok``, ``crash: ...``, ``oom: ...``,
    ``unavailable: ...``, ``skipped: ...``, ``timeout ...`` or ``reference`` (a number quoted
    from ``anchors.md``, not measured in this run)."""

    bench: str
    case: str
    impl: str
    mode: str = "fwd"
    dtype: str = "float32"
    status: str = "ok"
    time_ms: Optional[float] = None
    bytes: Optional[float] = None
    gbps: Optional[float] = None
    pct_copy: Optional[float] = None
    err: Optional[float] = None
    vs_scancc: Optional[float] = None
    note: str = ""
    group: str = ""  # rows of one group (same shape and mode) are compared with each other

    def finish(self, copy_tbps: float) -> "Row":
        """Fill GB/s and % of copy bandwidth from ``time_ms`` and ``bytes``."""
        if self.time_ms and self.bytes:
            self.gbps = self.bytes / (self.time_ms * 1e-3) / 1e9
            self.pct_copy = 100.0 * self.gbps / (copy_tbps * 1e3)
        return self


def _git_commit() -> str:
    """``$SCANCC_COMMIT`` when set (a copy of the tree whose ``.git`` may be stale or absent, e.g.
    on a GPU machine), else ``git rev-parse --short HEAD``, else ``unknown``."""
    if os.environ.get("SCANCC_COMMIT"):
        return os.environ["SCANCC_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def run_metadata(device: str, copy: dict[str, float]) -> dict[str, Any]:
    """Date, device, versions and commit of this run, plus its copy bandwidth."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "commit": _git_commit(),
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        **copy,
    }


def _fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


class Results:
    """Writes ``<out>/<name>.jsonl`` (first line: run metadata) and ``<out>/<name>.md``."""

    COLUMNS = ("case", "mode", "dtype", "impl", "status", "time (ms)", "GB/s", "% copy", "peer/scancc", "rel-L2", "note")

    def __init__(self, out_dir: Path, name: str, meta: dict[str, Any], title: str) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.meta, self.title = name, meta, title
        self.rows: list[Row] = []
        self.jsonl = self.out_dir / f"{name}.jsonl"
        self.markdown = self.out_dir / f"{name}.md"
        self.jsonl.write_text(json.dumps({"meta": meta}) + "\n")

    def add(self, row: Row) -> None:
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
        self.markdown.write_text(self.to_markdown())

    def to_markdown(self) -> str:
        m = self.meta
        lines = [
            f"# {self.title}",
            "",
            f"{m['date']} · {m['device']} · torch {m['torch']} · triton {m['triton']} · CUDA {m['cuda']} · "
            f"commit {m['commit']}{' · Triton interpreter' if m['interpreter'] else ''}",
            "",
            f"Copy bandwidth (`Tensor.copy_`, {m['copy_bytes'] / 2 / 2**30:g} GiB bf16): "
            f"{m['copy_ms']:.3f} ms = {m['copy_tbps']:.3g} TB/s read+write.",
            "",
            "| " + " | ".join(self.COLUMNS) + " |",
            "|" + "---|" * len(self.COLUMNS),
        ]
        for r in self.rows:
            cells = (r.case, r.mode, r.dtype, r.impl, r.status, _fmt(r.time_ms, ".3f"), _fmt(r.gbps, ".4g"),
                     _fmt(r.pct_copy, ".1f"), _fmt(r.vs_scancc, ".2f"), _fmt(r.err, ".1e"), r.note)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + "\n"


# -- isolated cases -------------------------------------------------------------------------

def _name_matches(text: str, name: str) -> bool:
    """`--only` filter: '=name' matches that name exactly, any other text matches names containing it."""
    return text[1:] == name if text.startswith("=") else text in name


def parser(
    description: str, add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
) -> argparse.ArgumentParser:
    """The options every benchmark script takes; ``add_arguments`` adds a script's own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-results"),
                   help="folder for <name>.jsonl and <name>.md (default: $OUT or ./bench-results)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU under the Triton interpreter")
    p.add_argument("--only", default="",
                   help="run only implementations whose name contains one of these comma-separated texts "
                        "(a text starting with '=' must equal the whole name)")
    p.add_argument("--cases", default="", help="run only cases whose name contains one of these comma-separated texts")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per isolated case")
    p.add_argument("--case", help=argparse.SUPPRESS)  # worker mode: one JSON case
    if add_arguments is not None:
        add_arguments(p)
    return p


def worker(run_case: Callable[[dict[str, Any], str], dict[str, Any]], case_json: str, smoke: bool) -> int:
    """Run one case in this process and print ``RESULT {json}``.

    ``run_case(case, device)`` returns measured fields of :class:`Row` (``time_ms``, ``err``,
    ``note``...). :class:`Unavailable` and out-of-memory errors become rows; anything else
    propagates so the orchestrator records a crash.
    """
    import torch

    case = json.loads(case_json)
    device = init_device(smoke)
    try:
        fields = run_case(case, device)
    except Unavailable as exc:
        fields = {"status": f"unavailable: {exc}"}
    except torch.cuda.OutOfMemoryError as exc:
        fields = {"status": f"oom: {str(exc).splitlines()[0][:160]}"}
    print(RESULT_TAG + json.dumps(fields), flush=True)
    return 0


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:200]
    return lines[-1][:200] if lines else "no output"


def run_isolated(script: str, case: dict[str, Any], smoke: bool, timeout: float) -> dict[str, Any]:
    """Run ``script --case JSON`` in a subprocess and return the fields it reported.

    A non-zero exit (an illegal memory access, a segfault, an exception) gives
    ``{"status": "crash: <last error line>"}``; a timeout gives ``{"status": "timeout ..."}``.
    """
    cmd = [sys.executable, script, "--case", json.dumps(case)] + (["--smoke"] if smoke else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            if proc.returncode == 0:
                return json.loads(line[len(RESULT_TAG):])
            break
    return {"status": f"crash: {_last_error_line(proc.stderr or proc.stdout)}"}


def orchestrate(
    script: str,
    args: argparse.Namespace,
    *,
    name: str,
    title: str,
    cases: Iterable[dict[str, Any]],
    make_row: Callable[[dict[str, Any]], Row],
    reference_rows: Iterable[Row] = (),
) -> Results:
    """Measure copy bandwidth, run every case isolated, write the result files.

    ``make_row(case)`` gives the row a case fills in. Rows that share ``Row.group`` are
    compared: each non-scancc row gets
    ``vs_scancc = its time / scancc's time`` (above 1: scancc is faster).
    ``reference_rows`` (quoted numbers from anchors.md) are added at the end.
    """
    device = init_device(args.smoke)
    copy = copy_bandwidth(device, args.smoke)
    meta = run_metadata(device, copy)
    results = Results(args.out, name, meta, title)
    print(f"{title}: {meta['device']}, copy {copy['copy_tbps']:.3g} TB/s; results in {results.markdown}", flush=True)
    scancc_ms: dict[str, float] = {}
    for case in cases:
        if args.only and not any(_name_matches(text, case["impl"]) for text in args.only.split(",")):
            continue
        row = make_row(case)
        wanted = getattr(args, "cases", "")
        if wanted and not any(text in row.case for text in wanted.split(",")):
            continue
        started = time.perf_counter()
        fields = run_isolated(script, case, args.smoke, args.timeout)
        for key, value in fields.items():
            setattr(row, key, value)
        row.finish(copy["copy_tbps"])
        if row.time_ms is not None:
            if row.impl == "scancc":
                scancc_ms[row.group] = row.time_ms
            elif row.group in scancc_ms:
                row.vs_scancc = row.time_ms / scancc_ms[row.group]
        results.add(row)
        took = time.perf_counter() - started
        timing = f" {row.time_ms:.3f} ms, {row.pct_copy:.0f}% of copy" if row.time_ms and row.pct_copy else ""
        print(f"  {row.case} {row.mode} {row.impl}: {row.status}{timing} ({took:.1f} s)", flush=True)
    for ref in reference_rows:
        if ref.time_ms is not None and ref.group in scancc_ms:
            ref.vs_scancc = ref.time_ms / scancc_ms[ref.group]
        results.add(ref.finish(copy["copy_tbps"]))
    return results


def main_for(
    script: str,
    description: str,
    run_case: Callable[[dict[str, Any], str], dict[str, Any]],
    plan: Callable[[argparse.Namespace], dict[str, Any]],
    argv: Optional[list[str]] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> int:
    """Entry point shared by the benchmark scripts: worker when ``--case`` is given, else orchestrator.

    ``plan(args)`` returns the keyword arguments of :func:`orchestrate` (name, title, cases, ...);
    ``add_arguments(parser)`` adds the script's own options (workers get their defaults).
    The exit code is 1 when a scancc case did not run or exceeded its error tolerance
    (``scancc.oracle.tolerance``).
    """
    args = parser(description, add_arguments).parse_args(argv)
    # Peers autotune with Triton's autotuner on their first call (mamba-ssm's Mamba-3 kernels
    # for over 100 s); cached on disk, the choice made in one case's process serves the next.
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    if args.case:
        try:
            return worker(run_case, args.case, args.smoke)
        except Exception:
            traceback.print_exc()
            return 1
    results = orchestrate(script, args, **plan(args))
    from scancc.oracle import tolerance

    # scancc's kernels may use tiled/chunked schedules: recurrences.md's chunked fp32 figure
    bad = [r for r in results.rows if r.impl == "scancc" and not (
        r.status == "ok" and r.err is not None and r.err <= tolerance(r.dtype, chunked=True))]
    for r in bad:
        print(f"scancc case failed: {r.case} {r.mode} {r.dtype}: {r.status}, rel-L2 {r.err}", file=sys.stderr)
    return 1 if bad else 0
