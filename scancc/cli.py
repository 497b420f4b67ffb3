"""The ``scancc`` command line.

- ``scancc emit PRESET``: print the kernel source a backend generates for a preset (or a
  program ``.json`` file); ``--describe`` / ``--json`` print the IR instead.
- ``scancc demo``: compile every preset with every installed backend that supports it,
  run it on random inputs and compare with the float64 oracle.
- ``scancc info``: versions, device and backends.
- ``scancc features``: what each backend lowers (forward, backward, decode step) per preset
  and algorithm; ``--markdown --output docs/features.md`` regenerates the docs page.
- ``scancc tune`` / ``scancc cache``: the autotuner (:mod:`scancc.autotune.cli`).

Exit codes: 0 success, 1 a demo case failed (or a backend cannot lower the program),
2 bad usage (unknown preset, backend, setting...).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit code 2."""


# -- device and backends ------------------------------------------------------------------------

def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(choice: str) -> str:
    """``auto`` → ``cuda`` when a CUDA GPU is present, else ``cpu``.

    On CPU, Triton kernels run under the interpreter: ``TRITON_INTERPRET=1`` is set here,
    which only takes effect if ``triton`` has not been imported yet.
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {choice!r}; choose one of: auto, cpu, cuda")
    has_cuda = _cuda_available()
    if choice == "cuda" and not has_cuda:
        raise UsageError("--device cuda: no CUDA GPU is available here (try --device cpu)")
    device = "cuda" if choice == "cuda" or (choice == "auto" and has_cuda) else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        if "triton" in sys.modules:
            print("warning: triton was imported before the interpreter could be enabled; "
                  "set TRITON_INTERPRET=1 to run Triton kernels on CPU", file=sys.stderr)
        os.environ["TRITON_INTERPRET"] = "1"
    return device


def backend_names() -> tuple[str, ...]:
    """Every backend scancc knows, installed or not."""
    from .backends.registry import known_backends

    return known_backends()


def get_backend(name: str) -> Any:
    """The backend object called ``name``; :class:`UsageError` listing the choices if unknown."""
    from .backends import registry

    known = registry.known_backends()
    if name not in known:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(known)}")
    return registry.get_backend(name)


# -- programs -----------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A ``--set`` value: ``true``/``false``, ``none``, int, float (``inf``), a comma list (tuple) or a string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_settings(settings: Sequence[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def load_program(spec: str, settings: Sequence[str] = ()) -> Any:
    """A program from a preset name (with ``--set`` keyword arguments) or a program ``.json`` file."""
    from .ir import PRESETS, IRValidationError, Program

    if spec in PRESETS:
        factory = PRESETS[spec]
        kwargs = parse_settings(settings, "--set")
        params = [p for p in inspect.signature(factory).parameters if p != "name"]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise UsageError(f"preset {spec!r} has no setting {', '.join(map(repr, unknown))}; "
                             f"its settings: {', '.join(params) or '(none)'}")
        try:
            return factory(**kwargs)
        except (IRValidationError, TypeError, ValueError) as exc:
            raise UsageError(f"preset {spec!r} with {kwargs}: {exc}") from None
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        if settings:
            raise UsageError("--set applies to presets, not to program files")
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read program file {spec!r}: {exc.strerror}") from None
        try:
            return Program.from_json(text)
        except IRValidationError as exc:
            raise UsageError(f"{spec}: {exc}") from None
    raise UsageError(f"unknown preset {spec!r}; choose one of: {', '.join(PRESETS)} (or a path to a program .json file)")


def load_schedule(backend: Any, program: Any, settings: Sequence[str]) -> Any:
    """The backend's default schedule for ``program`` with ``--schedule`` fields replaced."""
    from .ir import IRValidationError

    schedule = backend.default_schedule(program)
    changes = parse_settings(settings, "--schedule")
    if not changes:
        return schedule
    try:
        return schedule.replace(**changes)
    except TypeError:
        fields = ", ".join(schedule.to_dict())
        raise UsageError(f"unknown schedule field in {sorted(changes)}; fields: {fields}") from None
    except IRValidationError as exc:
        raise UsageError(str(exc)) from None


# -- emit ---------------------------------------------------------------------------------------

def cmd_emit(args: argparse.Namespace) -> int:
    program = load_program(args.program, args.set)
    if args.describe or args.json:
        if args.describe:
            print(program.describe())
        if args.json:
            print(program.to_json(indent=2))
        return EXIT_OK
    backend = get_backend(args.backend)
    schedule = load_schedule(backend, program, args.schedule)
    if not backend.supports(program, schedule):
        explain = getattr(backend, "unsupported_reason", None)  # optional, beyond the Backend protocol
        reason = explain(program, schedule) if callable(explain) else None
        message = f"backend {args.backend!r} cannot lower program {program.name!r} ({program.family})"
        message += f": {reason}" if reason else f" with {schedule}"
        others = [name for name in backend_names() if name != args.backend and _lowers(name, program)]
        if others:
            message += f" (backends that can: {', '.join(others)})"
        print(f"scancc emit: {message}", file=sys.stderr)
        return EXIT_FAIL
    print(backend.lower(program, schedule), end="")
    return EXIT_OK


def _lowers(name: str, program: Any) -> bool:
    """Whether backend ``name`` can lower ``program`` with its default schedule."""
    backend = get_backend(name)
    return bool(backend.supports(program, backend.default_schedule(program)))


# -- demo ---------------------------------------------------------------------------------------

@dataclass
class DemoRow:
    recurrence: str
    backend: str
    device: str
    dtype: str = ""
    shape: str = ""
    err: Optional[float] = None
    tol: Optional[float] = None
    result: str = ""
    ms: Optional[float] = None

    @property
    def failed(self) -> bool:
        return self.result not in ("pass",) and not self.result.startswith("not supported")


# Small shapes under the interpreter, realistic ones on a GPU.
DEMO_SHAPES = {
    "cpu": {"batch": 2, "seqlen": 64, "dim": 8, "dstate": 4, "heads": 2, "headdim": 8, "groups": 1},
    "cuda": {"batch": 4, "seqlen": 2048, "dim": 512, "dstate": 16, "heads": 16, "headdim": 64, "groups": 1},
}
QUICK_PRESETS = ("linear", "selective", "ssd")
_DIM_TAGS = {"batch": "B", "dim": "D", "heads": "H", "headdim": "P", "dstate": "N", "groups": "G", "rank": "R",
             "pairs": "K", "seqlen": "L"}


def demo_programs(quick: bool) -> list[tuple[str, Any]]:
    """``(label, program)`` for every preset at its defaults (``--quick``: a few of them)."""
    from .ir import PRESETS

    names = QUICK_PRESETS if quick else tuple(PRESETS)
    return [(name, PRESETS[name]()) for name in names]


def shape_text(program: Any, inputs: dict[str, Any]) -> str:
    """E.g. ``B2 D8 N4 L64``: the sizes of the symbolic dims the given inputs carry."""
    sizes: dict[str, int] = {}
    for spec in program.tensors():
        value = inputs.get(spec.name)
        if value is not None:
            sizes.update(zip(spec.dims, (int(s) for s in value.shape)))
    return " ".join(f"{tag}{sizes[d]}" for d, tag in _DIM_TAGS.items() if d in sizes)


def demo_tolerance(schedule: Any, device: str) -> float:
    """recurrences.md's fp32 tolerance: sequential schedules 1e-5, tiled/chunked ones 1e-4,
    chunked SSD on a GPU (tf32 dot products) 1e-3."""
    from .oracle import tolerance

    chunked = schedule.algorithm not in ("sequential", "step")
    return tolerance("float32", chunked=chunked, tf32=device == "cuda" and schedule.algorithm == "ssd_chunked")


def _time_ms(fn: Callable[[], Any], device: str) -> float:
    """Median of ``do_bench`` on a GPU; one wall-clock call on CPU (after the checked call,
    so one-off compilation is not counted)."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _to_device(value: Any, device: str) -> Any:
    import torch

    t = torch.from_numpy(value)
    return t.to(device, torch.complex64 if t.is_complex() else torch.float32)


def run_demo_case(label: str, program: Any, backend_name: str, device: str, seed: int) -> DemoRow:
    """Compile ``program``, run it on random inputs and compare ``out`` with the float64 oracle."""
    import numpy as np

    from . import compile as scancc_compile
    from .oracle import random_inputs, rel_l2, sequential

    row = DemoRow(label, backend_name, device, dtype="float32")
    backend = get_backend(backend_name)
    schedule = backend.default_schedule(program)
    if not backend.supports(program, schedule):
        row.result = f"not supported by {backend_name}"
        return row
    arrays = random_inputs(program, np.random.default_rng(seed), dtype=np.float32, **DEMO_SHAPES[device])
    row.shape = shape_text(program, arrays)
    row.tol = demo_tolerance(schedule, device)
    try:
        compiled = scancc_compile(program, backend=backend_name, schedule=schedule)
        inputs = {name: _to_device(value, device) for name, value in arrays.items()}
        out = compiled.forward(inputs).out
        row.err = rel_l2(out, sequential(program, arrays))
        row.ms = _time_ms(lambda: compiled.forward(inputs), device)
        row.result = "pass" if row.err <= row.tol else "FAIL"
    except Exception as exc:  # a crash in a supported case is a failure row, not the end of the demo
        first_line = str(exc).splitlines()[0][:100] if str(exc) else ""
        row.result = f"FAIL: {type(exc).__name__}: {first_line}"
    return row


def format_table(rows: Sequence[DemoRow]) -> str:
    header = ("recurrence", "backend", "device", "dtype", "shape", "rel-L2 err", "tolerance", "result", "time (ms)")
    body = [(r.recurrence, r.backend, r.device, r.dtype, r.shape,
             "" if r.err is None else f"{r.err:.2e}", "" if r.tol is None else f"{r.tol:.0e}", r.result,
             "" if r.ms is None else f"{r.ms:.2f}") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    started = time.perf_counter()
    available = [name for name in backend_names() if get_backend(name).available()]
    if not available:
        print("scancc demo: no backend is installed (pip install 'scancc[triton]')", file=sys.stderr)
        return EXIT_FAIL
    print(f"scancc demo on {device}{' (Triton interpreter)' if device == 'cpu' else ''}: "
          f"backends {', '.join(available)}; outputs vs the float64 oracle", flush=True)
    rows = []
    for i, (label, program) in enumerate(demo_programs(args.quick)):
        for name in available:
            rows.append(run_demo_case(label, program, name, device, seed=i))
    print(format_table(rows))
    failed = [r for r in rows if r.failed]
    ran = sum(1 for r in rows if r.err is not None or r.failed)
    print(f"\n{ran - len(failed)} passed, {len(failed)} failed"
          f"{f', {len(rows) - ran} not supported' if len(rows) > ran else ''} "
          f"({time.perf_counter() - started:.1f} s)")
    return EXIT_FAIL if failed else EXIT_OK


# -- info ---------------------------------------------------------------------------------------

def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # absent, or present but broken (e.g. a CUDA library without a driver)
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    from . import __version__

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [f"scancc   {__version__}", f"python   {platform.python_version()}", f"torch    {torch.__version__}"]
    lines += [f"{m:<8} {_version(m)}" for m in ("triton", "tvm", "cupy")]
    if device == "cuda":
        lines.append(f"device   cuda: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        lines.append("device   cpu (no CUDA GPU; Triton kernels run under TRITON_INTERPRET=1)")
    lines.append("backends")
    for name in backend_names():
        backend = get_backend(name)
        state = "available" if backend.available() else "not available (runtime not installed)"
        lines.append(f"  {name:<8} {state}")
    print("\n".join(lines))
    return EXIT_OK


# -- features -----------------------------------------------------------------------------------

def cmd_features(args: argparse.Namespace) -> int:
    from .backends.capabilities import capabilities, features_markdown

    caps = capabilities()
    if args.markdown:
        text = features_markdown(caps)
    else:
        rows = {}
        for c in caps:
            row = rows.setdefault((c.program, c.backend), {"forward": [], "backward": [], "step": "no"})
            if c.algorithm == "step":
                row["step"] = "yes" if c.forward else "no"
            else:
                row["forward"] += [c.algorithm] if c.forward else []
                row["backward"] += [c.algorithm] if c.backward else []
        width = max(len(p) for p, _ in rows) + 2
        lines = [f"{'program':<{width}}{'backend':<9}{'forward':<28}{'backward':<28}step"]
        for (program, backend), r in rows.items():
            lines.append(f"{program:<{width}}{backend:<9}{', '.join(r['forward']) or '-':<28}"
                         f"{', '.join(r['backward']) or '-':<28}{r['step']}")
        text = "\n".join(lines) + "\n"
    if args.check:
        path = Path(args.check)
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"scancc features: {path} is out of date; regenerate it with "
                  f"scancc features --markdown --output {path}", file=sys.stderr)
            return EXIT_FAIL
        return EXIT_OK
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return EXIT_OK


# -- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scancc", description="A compiler for state-space-model scan kernels: IR → templates → Triton → torch ops.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    emit = sub.add_parser("emit", help="print the generated kernel source (or the IR) for a preset or program file",
                          description="Print the kernel source a backend generates for a preset or a program "
                                      ".json file.")
    emit.add_argument("program", help="a preset name (linear, selective, ssd, ...) or a path to a program .json file")
    emit.add_argument("--backend", default="triton", help="code generator (default: triton)")
    emit.add_argument("--describe", action="store_true", help="print the IR's readable form instead of the source")
    emit.add_argument("--json", action="store_true", help="print the IR's canonical JSON instead of the source")
    emit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a preset keyword argument, e.g. --set complex=true (repeatable)")
    emit.add_argument("--schedule", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of the backend's default schedule, e.g. --schedule block_l=64")
    emit.set_defaults(func=cmd_emit)

    demo = sub.add_parser("demo", help="compile every preset, run it and check it against the float64 oracle",
                          description="Compile every preset with every installed backend that supports it, run it "
                                      "on random inputs and compare with the float64 oracle.")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="where to run (default: cuda if present, else cpu under the Triton interpreter)")
    demo.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_PRESETS)}")
    demo.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="versions, device and available backends")
    info.set_defaults(func=cmd_info)

    features = sub.add_parser("features", help="what each backend lowers: forward, backward, decode step",
                              description="The feature matrix: for every preset, backend and algorithm, whether "
                                          "the forward, the backward and the decode step are lowered (asked of each "
                                          "backend's supports/unsupported_reason; no runtime or GPU needed).")
    features.add_argument("--markdown", action="store_true", help="Markdown tables (the form of docs/features.md)")
    features.add_argument("--output", metavar="PATH", help="write to PATH instead of standard output")
    features.add_argument("--check", metavar="PATH", help="exit 1 if PATH differs from what would be written")
    features.set_defaults(func=cmd_features)

    from .autotune.cli import add_tune_commands

    add_tune_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    if not _cuda_available():
        # Before anything imports triton: without a GPU its kernels run under the interpreter.
        os.environ["TRITON_INTERPRET"] = "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"scancc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
