"""Autotuner: budgeted search vs an exhaustive one vs the untuned default, and a cached op call's host cost.

Shapes (program, sizes, dtype; the SSD chunk is pinned as ``mamba_chunk_scan_combined`` fixes it):

- ``selective``: ``ir.selective()`` (z, D, delta_bias, softplus: ``selective_scan_fn`` as Mamba-1
  calls it) bf16 B4 D5120 N16 L4096;
- ``scan``: ``ir.linear()`` (``linear_scan``) fp32 B8 D1536 L4096;
- ``ssd``: ``ir.ssd(gate=False)`` (bench_ssd.py's call) bf16 B4 L4096 H80 P64 N128 G1, chunk 256;
- ``decode``: ``ir.ssd(gate=False).as_step()`` bf16 B16 H80 P64 N128 (Mamba-2 decode, the
  kernel ``selective_state_update`` launches, timed in place on copies of the state);
- ``decode1``: ``ir.selective().as_step()`` bf16 B16 D5120 N16 (Mamba-1 decode; run only when
  named, ``--only decode1``, to keep the default run within its deadline; ``--only`` takes
  comma-separated names).

For each shape two isolated processes share one fresh Triton cache directory: ``budgeted``
runs ``scancc.autotune.tune`` as ``scancc tune --budget`` does (strategy ``auto``: successive
halving over the pruned space, or all of it when that fits), from a cold compile cache,
so its wall time is what a user waits; then ``exhaustive`` tries every point of a
*reduced* grid (:data:`EXHAUSTIVE`; the full pruned spaces, 100-200 points at several
seconds of compiling each, do not fit a run of a few minutes) with the compile cache
the first phase left, and re-times the budgeted winner, the exhaustive winner and the
default side by side (medians, best of three rounds). Rows: ``default`` (the backend's
untuned schedule), ``budgeted`` and ``exhaustive`` with their speedup over the default and,
for ``budgeted``, its time over the exhaustive best (target: at most 1.05).

``dispatch``: host time per call of ``selective_scan_fn`` and ``mamba_chunk_scan_combined``
at tiny shapes, after warm-up (compiled, schedule memoised): calls are issued back to back
without synchronising, so the host's time per call is the op's cost (the GPU, with
microsecond kernels, is never the bottleneck). It is reported next to the same kernel's
``CompiledScan.forward`` called directly (the launch alone) and ``best_schedule`` alone;
the op's overhead is the difference (target: at most 20 µs).

Every winner is stored in ``<out>/autotune-cache`` (a scancc cache directory), and at the end
exported to ``<out>/autotune_defaults.json``, the file that becomes
``scancc/autotune/defaults/h100.json``. ``--deadline`` (seconds, default 450) bounds the
whole run: cases that would start after it are recorded as skipped.

    python benchmarks/bench_autotune.py --out results/
    python benchmarks/bench_autotune.py --smoke --out /tmp/bench   # CPU, interpreter, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "autotune"
TITLE = "Autotuner: budgeted vs exhaustive search vs the default schedule; cached op dispatch"
CACHE_SUBDIR = "autotune-cache"
DEFAULTS_FILE = "autotune_defaults.json"
ROUNDS = 3  # side-by-side re-timing rounds in the exhaustive phase (1 in smoke runs)


@dataclass(frozen=True)
class Shape:
    """A program (``preset`` name and keyword arguments, ``step`` for its decode form) at ``dims``."""

    preset: str
    kwargs: tuple[tuple[str, Any], ...]
    step: bool
    dims: tuple[tuple[str, int], ...]
    dtype: str
    pin: tuple[tuple[str, Any], ...] = ()

    def program(self) -> Any:
        from scancc import ir

        prog = getattr(ir, self.preset)(**dict(self.kwargs))
        return prog.as_step() if self.step else prog

    def label(self) -> str:
        short = {"batch": "B", "dim": "D", "dstate": "N", "seqlen": "L", "heads": "H", "headdim": "P", "groups": "G"}
        dims = " ".join(f"{short.get(k, k)}{v}" for k, v in self.dims)
        pins = "".join(f" {k}={v}" for k, v in self.pin)
        return f"{self.preset}{' step' if self.step else ''} {dims}{pins}"


FULL_SHAPES: dict[str, Shape] = {
    "selective": Shape("selective", (), False, (("batch", 4), ("dim", 5120), ("dstate", 16), ("seqlen", 4096)),
                       "bf16"),
    "scan": Shape("linear", (), False, (("batch", 8), ("dim", 1536), ("seqlen", 4096)), "fp32"),
    "ssd": Shape("ssd", (("gate", False),), False, (("batch", 4), ("seqlen", 4096), ("heads", 80), ("headdim", 64),
                                                     ("dstate", 128), ("groups", 1)), "bf16", (("chunk", 256),)),
    "decode": Shape("ssd", (("gate", False),), True, (("batch", 16), ("heads", 80), ("headdim", 64), ("dstate", 128),
                                                      ("groups", 1)), "bf16"),
    "decode1": Shape("selective", (), True, (("batch", 16), ("dim", 5120), ("dstate", 16)), "bf16"),
}
SMOKE_SHAPES: dict[str, Shape] = {  # the plain scan is left out: its 2048-step default tile is slow to interpret
    "selective": Shape("selective", (), False, (("batch", 1), ("dim", 4), ("dstate", 4), ("seqlen", 16)), "fp32"),
    "ssd": Shape("ssd", (("gate", False),), False, (("batch", 1), ("seqlen", 64), ("heads", 2), ("headdim", 16),
                                                     ("dstate", 16), ("groups", 1)), "fp32", (("chunk", 32),)),
    "decode": Shape("ssd", (("gate", False),), True, (("batch", 2), ("heads", 2), ("headdim", 16), ("dstate", 16),
                                                      ("groups", 1)), "fp32"),
}

# The reduced grids the exhaustive phase tries (candidate values replacing the full space's;
# the fields not named keep all their values). The full pruned spaces, for the record:
# selective 320 points, scan 119, ssd 89 (chunk pinned), decode 24, decode1 23 (H100 limits).
EXHAUSTIVE: dict[str, dict[str, tuple[Any, ...]]] = {
    "selective": {"block_d": (8, 16, 32), "block_l": (8, 16, 32), "num_warps": (1, 2, 4)},
    "scan": {"block_l": (1024, 2048, 4096), "block_d": (1, 2), "num_warps": (2, 4, 8)},
    "ssd": {"block_l": (32, 64), "block_d": (32, 64), "num_warps": (4, 8), "num_stages": (1, 2)},
    "decode": {},
    "decode1": {},
}
SMOKE_EXHAUSTIVE: dict[str, dict[str, tuple[Any, ...]]] = {
    "selective": {"algorithm": ("chunked_scan",), "block_d": (2, 4), "block_l": (8,), "num_warps": (1,)},
    "ssd": {"block_l": (16, 32), "block_d": (16,), "num_warps": (4,), "num_stages": (1,)},
    "decode": {"block_d": (8, 16), "num_warps": (1, 4)},
}


ON_REQUEST = ("decode1",)  # shapes run only when --only names them


def shapes_for(smoke: bool) -> dict[str, Shape]:
    return SMOKE_SHAPES if smoke else FULL_SHAPES


# -- worker -----------------------------------------------------------------------------------------
def _config(schedule: Any, fields: list[str]) -> str:
    return " ".join(f"{name}={getattr(schedule, name)}" for name in fields)


def _store(out: Path, shape: Shape, result: Any, schedule: Any, time_s: Optional[float],
           default_s: Optional[float]) -> None:
    """Put ``schedule`` into ``<out>/autotune-cache`` under the key ``scancc.ops`` looks up."""
    from scancc.autotune import Record, ScheduleCache, cache_key, resolve_backend
    from scancc.autotune.cache import now

    key = cache_key(result.problem, resolve_backend("triton"), result.device, dict(shape.pin) or None)
    record = Record(key, schedule, time_s, default_s, result.problem.shape, result.problem.program.name, now())
    ScheduleCache(out / CACHE_SUBDIR).put([record])


def _tune_options(case: dict[str, Any]) -> dict[str, Any]:
    return {"warmup": case["warmup"], "repeats": case["repeats"], "seed": 0, "reference": "default",
            "pin": dict(case["pin"]) or None}


def run_budgeted(case: dict[str, Any], device: str) -> dict[str, Any]:
    """``tune`` as ``scancc tune`` runs it, from a cold compile cache; the winner is stored."""
    from scancc.autotune import tune

    shape = shapes_for(case["smoke"])[case["shape"]]
    started = time.perf_counter()
    result = tune(shape.program(), "triton", dict(shape.dims), dtype=shape.dtype, device=device,
                  budget=case["budget"], trials=case.get("trials"), strategy="auto", **_tune_options(case))
    wall = time.perf_counter() - started
    fields = [n for n, _ in result.space.params]
    failed = sum(1 for t in result.trials if t.status != "ok")
    if result.best.status == "ok":
        _store(Path(case["out"]), shape, result, result.best.schedule, result.best.time_s, result.default.time_s)
    return {
        "time_ms": None if result.best.time_s is None else result.best.time_s * 1e3,
        "default_ms": None if result.default.time_s is None else result.default.time_s * 1e3,
        "tune_s": wall, "strategy": result.strategy, "tried": len(result.trials), "failed": failed,
        "feasible": len(result.pruned.feasible), "space": result.pruned.total, "stopped_by": result.stopped_by,
        "config": _config(result.best.schedule, fields), "schedule": result.best.schedule.to_dict(),
        "default_status": result.default.status,
    }


def run_exhaustive(case: dict[str, Any], device: str) -> dict[str, Any]:
    """Every point of the reduced grid, then the budgeted winner, this winner and the default
    re-timed side by side; the faster of the two winners is stored."""
    import torch

    from scancc.autotune import DeviceLimits, Problem, resolve_backend, space_for, tune
    from scancc.autotune.inputs import make_inputs
    from scancc.autotune.search import OK, Evaluator
    from scancc.autotune.timing import RotatingInputs, copies_for, nbytes, timer_for
    from scancc.ir import Schedule

    shape = shapes_for(case["smoke"])[case["shape"]]
    program = shape.program()
    pin = dict(shape.pin)
    reduced = (SMOKE_EXHAUSTIVE if case["smoke"] else EXHAUSTIVE)[case["shape"]]
    space = space_for(program, "triton").restricted(**reduced)
    started = time.perf_counter()
    result = tune(program, "triton", dict(shape.dims), dtype=shape.dtype, device=device, space=space,
                  budget=case["budget"], strategy="exhaustive", **_tune_options(case))
    wall = time.perf_counter() - started
    fields = [n for n, _ in space.params if n not in pin]

    # Side by side: the same inputs, the same evaluator, interleaved rounds.
    be = resolve_backend("triton")
    dev = torch.device(device)
    problem = Problem.make(program, dict(shape.dims), shape.dtype)
    limits = DeviceLimits.from_torch(dev)
    inputs, state = make_inputs(problem, dev, seed=1)
    buffers = RotatingInputs(inputs, state, copies_for(nbytes([*inputs.values(), state]), limits.l2_bytes))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ev = Evaluator(be, problem, be.default_schedule(program).replace(**pin), buffers, timer_for(dev),
                   warmup=case["warmup"], synchronize=sync)
    budgeted = Schedule.from_dict(case["budgeted"]) if case.get("budgeted") else None
    contenders = {"default": ev.default, "exhaustive": result.best.schedule}
    if budgeted is not None:
        contenders["budgeted"] = budgeted
    trials = {name: ev.evaluate(s, case["repeats"]) for name, s in contenders.items()}
    best_of: dict[str, float] = {n: t.time_s for n, t in trials.items() if t.status == OK}  # type: ignore[misc]
    for _ in range((1 if case["smoke"] else ROUNDS) - 1):
        for name, t in trials.items():
            if t.status == OK:
                ev.time(t, case["repeats"])
                if t.status == OK:
                    best_of[name] = min(best_of[name], t.time_s)  # type: ignore[type-var]
    side = {name: best_of.get(name) for name in contenders}
    winner = min((n for n in ("exhaustive", "budgeted") if side.get(n) is not None),
                 key=lambda n: side[n], default=None)  # type: ignore[arg-type, return-value]
    if winner is not None and side["default"] is not None and side[winner] < side["default"]:  # type: ignore[operator]
        _store(Path(case["out"]), shape, result, contenders[winner], side[winner], side["default"])
    elif side["default"] is not None:
        _store(Path(case["out"]), shape, result, contenders["default"], side["default"], side["default"])
    failed = sum(1 for t in result.trials if t.status != "ok")
    return {
        "time_ms": None if result.best.time_s is None else result.best.time_s * 1e3,
        "tune_s": wall, "tried": len(result.trials), "failed": failed, "feasible": len(result.pruned.feasible),
        "space": result.pruned.total, "stopped_by": result.stopped_by,
        "config": _config(result.best.schedule, fields),
        "side_ms": {n: (None if v is None else v * 1e3) for n, v in side.items()},
        "statuses": {n: t.status + (f" ({t.error})" if t.error else "") for n, t in trials.items()},
    }


def _host_us(fn: Any, calls: int, device: str, batches: int) -> float:
    """Host microseconds per call of ``fn`` issued back to back (best of ``batches`` batches)."""
    import torch

    best = float("inf")
    for _ in range(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
        if device == "cuda":
            torch.cuda.synchronize()
    return best * 1e6


def run_dispatch(case: dict[str, Any], device: str) -> dict[str, Any]:
    """Host µs per cached call: the op, its compiled kernel's forward, and ``best_schedule``."""
    import math

    import torch

    from scancc.autotune import best_schedule
    import importlib

    from scancc.ops import mamba_chunk_scan_combined, selective_scan_fn
    from scancc.ops.registry import _program, compiled

    sel_op = importlib.import_module("scancc.ops.selective")  # the modules (the package exports same-named ops)
    ssd_op = importlib.import_module("scancc.ops.ssd")

    calls, batches = (1, 1) if case["smoke"] else (1000, 5)  # smoke: interpreted kernels take ~1 s a call
    gen = torch.Generator(device=device).manual_seed(0)
    dt = torch.bfloat16 if device == "cuda" else torch.float32

    def rand(*s: int, dtype: torch.dtype = dt) -> torch.Tensor:
        return torch.randn(*s, device=device, generator=gen).to(dtype)

    b, d, n, seq = 1, 16, 4, 16
    sel = {"u": rand(b, d, seq), "delta": rand(b, d, seq).abs() * 0.1, "A": -rand(d, n, dtype=torch.float32).abs(),
           "B": rand(b, 1, n, seq), "C": rand(b, 1, n, seq), "D": rand(d, dtype=torch.float32), "z": rand(b, d, seq),
           "delta_bias": rand(d, dtype=torch.float32)}
    sel_json = sel_op.program_json(False, True, True, True, True, True, True)  # the op's program for these inputs
    dims = {"batch": b, "dim": d, "dstate": n, "seqlen": seq, "groups": 1}
    device_of = sel["u"].device

    def op_sel() -> Any:
        return selective_scan_fn(sel["u"], sel["delta"], sel["A"], sel["B"], sel["C"], sel["D"], sel["z"],
                                 sel["delta_bias"], delta_softplus=True)

    def lookup() -> Any:
        return best_schedule(_program(sel_json), "triton", dims, device=device_of, dtype=dt)

    hh, p, q, sl, chunk = 2, 16, 16, 32, 16
    ssd_in = [rand(b, sl, hh, p), rand(b, sl, hh).abs() * 0.1, -rand(hh, dtype=torch.float32).abs(),
              rand(b, sl, 1, q), rand(b, sl, 1, q)]
    ssd_json = ssd_op.program_json(False, False, False, False, 0.0, math.inf)
    ssd_schedule = ssd_op.schedule_json(chunk)
    named = dict(zip(("x", "dt", "A", "B", "C"), ssd_in))

    def op_ssd() -> Any:
        return mamba_chunk_scan_combined(*ssd_in, chunk)

    with torch.no_grad():
        op_sel()  # compiles, memoises the schedule
        kernel = compiled(sel_json, "triton", lookup().to_json())
        kernel.forward(sel)
        op_ssd()
        ssd_kernel = compiled(ssd_json, "triton", ssd_schedule)
        ssd_kernel.forward(named)
        out: dict[str, Any] = {
            "selective_op_us": _host_us(op_sel, calls, device, batches),
            "selective_kernel_us": _host_us(lambda: kernel.forward(sel), calls, device, batches),
            "best_schedule_us": _host_us(lookup, calls, device, batches),
            "ssd_op_us": _host_us(op_ssd, calls, device, batches),
            "ssd_kernel_us": _host_us(lambda: ssd_kernel.forward(named), calls, device, batches),
        }
    out["selective_overhead_us"] = out["selective_op_us"] - out["selective_kernel_us"]
    out["ssd_overhead_us"] = out["ssd_op_us"] - out["ssd_kernel_us"]
    out["time_ms"] = out["selective_op_us"] * 1e-3
    return out


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    runner = {"budgeted": run_budgeted, "exhaustive": run_exhaustive, "dispatch": run_dispatch}[case["phase"]]
    return runner(case, device)


# -- orchestrator -------------------------------------------------------------------------------
@dataclass
class TuneRow(common.Row):
    """A :class:`common.Row` with the tuning figures."""

    default_ms: Optional[float] = None
    speedup: Optional[float] = None       # default time / this time
    vs_exhaustive: Optional[float] = None  # this time / the exhaustive best (side by side)
    tune_s: Optional[float] = None
    tried: Optional[int] = None
    feasible: Optional[int] = None
    config: str = ""
    extra: Optional[dict] = None


class TuneResults(common.Results):
    COLUMNS = ("case", "dtype", "row", "status", "time (ms)", "speedup vs default", "vs exhaustive",
               "tuning (s)", "tried / feasible", "schedule", "note")

    def to_markdown(self) -> str:
        head = super().to_markdown().split("| case |")[0]
        lines = [head.rstrip(), "", "| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        for r in self.rows:
            r = r if isinstance(r, TuneRow) else TuneRow(**vars(r))
            tried = f"{r.tried} / {r.feasible}" if r.tried is not None else ""
            cells = (r.case, r.dtype, r.impl, r.status, common._fmt(r.time_ms, ".4f"), common._fmt(r.speedup, ".2f"),
                     common._fmt(r.vs_exhaustive, ".3f"), common._fmt(r.tune_s, ".1f"), tried, r.config, r.note)
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def plan_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    shapes = shapes_for(args.smoke)
    budget = 5.0 if args.smoke else args.budget
    common_fields = {"smoke": args.smoke, "out": str(args.out), "warmup": 1 if args.smoke else 3,
                     "repeats": 2 if args.smoke else 20}
    # the dispatch case and the quick decode shapes first: a run cut short by the deadline loses a slow shape
    named = [text for text in args.only.split(",") if text]

    def wanted(name: str) -> bool:  # shapes ON_REQUEST run only when named exactly
        if name in ON_REQUEST:
            return name in named
        return not named or any(text in name for text in named)

    cases = []
    if wanted("dispatch"):
        cases.append({**common_fields, "shape": "dispatch", "phase": "dispatch", "pin": []})
    order = sorted(shapes, key=lambda n: (not n.startswith("decode"), list(shapes).index(n)))
    for name in order:
        shape = shapes[name]
        if not wanted(name):
            continue
        base = {**common_fields, "shape": name, "pin": list(shape.pin)}
        cases.append({**base, "phase": "budgeted", "budget": budget, "trials": 3 if args.smoke else None})
        cases.append({**base, "phase": "exhaustive", "budget": 60.0 if args.smoke else args.exhaustive_budget})
    return cases


def _row_for(case: dict[str, Any], fields: dict[str, Any], label: str, dtype: str) -> list[TuneRow]:
    status = fields.get("status", "ok")
    if case["phase"] == "dispatch":
        if status != "ok":
            return [TuneRow(bench=NAME, case="dispatch", impl="op call", status=status)]
        return [
            TuneRow(bench=NAME, case="selective_scan_fn B1 D16 N4 L16", impl="host us / call", dtype=dtype,
                    time_ms=fields["selective_op_us"] * 1e-3,
                    note=(f"op {fields['selective_op_us']:.1f} us, "
                          f"kernel.forward {fields['selective_kernel_us']:.1f} us, "
                          f"overhead {fields['selective_overhead_us']:.1f} us (target <= 20), "
                          f"best_schedule {fields['best_schedule_us']:.2f} us"), extra=fields),
            TuneRow(bench=NAME, case="mamba_chunk_scan_combined B1 L32 H2 P16 N16", impl="host us / call", dtype=dtype,
                    time_ms=fields["ssd_op_us"] * 1e-3,
                    note=(f"op {fields['ssd_op_us']:.1f} us, kernel.forward {fields['ssd_kernel_us']:.1f} us, "
                          f"overhead {fields['ssd_overhead_us']:.1f} us (target <= 20)")),
        ]
    if status != "ok":
        return [TuneRow(bench=NAME, case=label, impl=case["phase"], dtype=dtype, status=status)]
    if case["phase"] == "budgeted":
        return [TuneRow(bench=NAME, case=label, impl="budgeted", dtype=dtype, time_ms=fields["time_ms"],
                        default_ms=fields["default_ms"], tune_s=fields["tune_s"], tried=fields["tried"],
                        feasible=fields["feasible"], config=fields["config"],
                        speedup=(fields["default_ms"] / fields["time_ms"]
                                 if fields["time_ms"] and fields["default_ms"] else None),
                        note=(f"{fields['strategy']}, budget {case['budget']:g} s, {fields['failed']} failed, "
                              f"space {fields['space']}" + (f", stopped by {fields['stopped_by']}"
                                                           if fields["stopped_by"] else "")),
                        extra=fields)]
    side = fields["side_ms"]
    rows = []
    for name in ("default", "budgeted", "exhaustive"):
        ms = side.get(name)
        if name not in side:
            continue
        rows.append(TuneRow(
            bench=NAME, case=label, impl=f"{name} (side by side)", dtype=dtype, time_ms=ms,
            status="ok" if ms is not None else fields["statuses"].get(name, "failed"),
            speedup=side["default"] / ms if ms and side.get("default") else None,
            vs_exhaustive=ms / side["exhaustive"] if ms and side.get("exhaustive") else None,
            tune_s=fields["tune_s"] if name == "exhaustive" else None,
            tried=fields["tried"] if name == "exhaustive" else None,
            feasible=fields["feasible"] if name == "exhaustive" else None,
            config=fields["config"] if name == "exhaustive" else "",
            note=(f"reduced grid {fields['space']} points, warm compile cache, {fields['failed']} failed"
                  + (f", stopped by {fields['stopped_by']}" if fields["stopped_by"] else "")
                  if name == "exhaustive" else f"best of {1 if case['smoke'] else ROUNDS} rounds"),
            extra=fields if name == "exhaustive" else None))
    return rows


def orchestrate(args: argparse.Namespace) -> TuneResults:
    device = common.init_device(args.smoke)
    copy = common.copy_bandwidth(device, args.smoke)
    meta = common.run_metadata(device, copy)
    results = TuneResults(args.out, NAME, meta, TITLE)
    print(f"{TITLE}: {meta['device']}; results in {results.markdown}", flush=True)
    started = time.perf_counter()
    compile_dirs: dict[str, str] = {}
    budgeted_schedule: dict[str, Any] = {}
    shapes = shapes_for(args.smoke)
    for case in plan_cases(args):
        name = case["shape"]
        shape = shapes.get(name)
        label = shape.label() if shape else "dispatch"
        dtype = shape.dtype if shape else ("bf16" if device == "cuda" else "fp32")
        left = args.deadline - (time.perf_counter() - started)
        need = case.get("budget", 30.0) + 30.0
        if left < need:
            for row in _row_for(case, {"status": f"skipped: {left:.0f} s left of the deadline, needs ~{need:.0f}"},
                                label, dtype):
                results.add(row)
            continue
        if case["phase"] == "exhaustive" and name in budgeted_schedule:
            case["budgeted"] = budgeted_schedule[name]
        # One fresh Triton cache per shape: the budgeted phase compiles cold, the exhaustive reuses it.
        os.environ["TRITON_CACHE_DIR"] = compile_dirs.setdefault(name, tempfile.mkdtemp(prefix=f"triton-{name}-"))
        t0 = time.perf_counter()
        fields = common.run_isolated(__file__, case, args.smoke, min(args.timeout, left))
        if case["phase"] == "budgeted" and fields.get("schedule"):
            budgeted_schedule[name] = fields["schedule"]
        for row in _row_for(case, fields, label, dtype):
            results.add(row)
            print(f"  {row.case} {row.impl}: {row.status} {common._fmt(row.time_ms, '.4f')} ms "
                  f"{row.note} ({time.perf_counter() - t0:.1f} s)", flush=True)
    _fill_vs_exhaustive(results)
    exported = export_defaults(Path(args.out))
    print(f"{exported} tuned records in {Path(args.out) / DEFAULTS_FILE}", flush=True)
    return results


def _fill_vs_exhaustive(results: TuneResults) -> None:
    """The budgeted row's time over the exhaustive best, from the side-by-side re-timing."""
    for row in results.rows:
        if isinstance(row, TuneRow) and row.impl == "budgeted":
            side = next((r for r in results.rows if isinstance(r, TuneRow) and r.case == row.case
                         and r.impl == "budgeted (side by side)"), None)
            if side is not None and side.vs_exhaustive is not None:
                row.vs_exhaustive = side.vs_exhaustive
    # the budgeted rows were written before their exhaustive phase ran: write both files again
    lines = [json.dumps({"meta": results.meta})] + [json.dumps(asdict(r)) for r in results.rows]
    results.jsonl.write_text("\n".join(lines) + "\n")
    results.markdown.write_text(results.to_markdown())


def export_defaults(out: Path) -> int:
    """Every stored winner, in one cache-format file: ``<out>/autotune_defaults.json``."""
    from scancc.autotune import ScheduleCache

    return ScheduleCache(out / CACHE_SUBDIR).export(out / DEFAULTS_FILE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=float, default=45.0, help="seconds of the budgeted search per shape")
    parser.add_argument("--exhaustive-budget", type=float, default=70.0,
                        help="seconds the exhaustive search of the reduced grid may take per shape")
    parser.add_argument("--deadline", type=float, default=450.0, help="seconds the whole run may take")


def main(argv: Optional[list[str]] = None) -> int:
    args = common.parser(__doc__.splitlines()[0], add_arguments).parse_args(argv)
    if args.case:
        try:
            return common.worker(run_case, args.case, args.smoke)
        except Exception:
            traceback.print_exc()
            return 1
    results = orchestrate(args)
    bad = [r for r in results.rows if not (r.status == "ok" or r.status.startswith("skipped"))]
    for r in bad:
        print(f"autotune case failed: {r.case} {r.impl}: {r.status}", file=sys.stderr)
    print(json.dumps({"rows": len(results.rows), "failed": len(bad)}), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
