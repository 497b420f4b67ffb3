"""``scancc tune`` and ``scancc cache``: the autotuner's command line.

``scancc/cli.py`` registers these with ``add_tune_commands(subparsers)``; each subcommand
sets ``func``, which takes the parsed arguments and returns the exit status (bad usage
raises :class:`scancc.cli.UsageError`, reported by ``scancc.cli.main`` with status 2).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Optional, TextIO

from .. import cli as scancc_cli
from ..ir import PRESETS
from .cache import ScheduleCache
from .problem import SHAPE_PRESETS, parse_dtype, parse_shape
from .search import OK, Trial
from .select import tune_and_store
from .tuner import STRATEGIES, format_table, format_time, tune

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"60s"``, ``"2m"``, ``"1.5h"``, ``"500ms"`` or a bare number of seconds → seconds."""
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration like 60s, 2m or 1h, got {text!r}")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


class ProgressLine:
    """Progress on stderr: a ``tqdm`` bar when tqdm is installed, else one rewritten line
    (one line per update when stderr is not a terminal)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.best: Optional[float] = None
        self._bar: Any = None
        try:
            from tqdm import tqdm  # optional
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._bar = tqdm(total=0, file=self.stream, unit="trial", leave=False)

    def __call__(self, done: int, total: int, trial: Trial) -> None:
        if trial.status == OK and trial.time_s is not None:
            self.best = trial.time_s if self.best is None else min(self.best, trial.time_s)
        status = format_time(trial.time_s) if trial.status == OK else trial.status
        if self._bar is not None:
            self._bar.total = max(total, done)
            self._bar.n = done
            self._bar.set_postfix_str(f"best {format_time(self.best)}")
            return
        line = f"[{done}/{max(total, done)}] best {format_time(self.best)}  last {status}"
        if self.stream.isatty():
            self.stream.write("\r" + line.ljust(60))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()


# -- tune ---------------------------------------------------------------------------------------
def _cmd_tune(args: argparse.Namespace) -> int:
    program = scancc_cli.load_program(args.program, args.set)
    if args.step:
        program = program.as_step()
    pin = scancc_cli.parse_settings(args.pin, "--pin")
    try:
        shapes = parse_shape(args.shape)
        dtype = parse_dtype(args.dtype)
    except ValueError as exc:
        raise scancc_cli.UsageError(str(exc)) from None
    device = scancc_cli.resolve_device(args.device)
    progress = ProgressLine()
    options = dict(dtype=dtype, device=device, budget=args.budget, trials=args.trials, strategy=args.strategy,
                   warmup=args.warmup, repeats=args.repeats, seed=args.seed, reference=args.reference,
                   progress=progress, pin=pin or None)
    try:
        if args.no_save:
            result = tune(program, args.backend, shapes, **options)  # type: ignore[arg-type]
        else:
            result = tune_and_store(program, args.backend, shapes, **options)  # type: ignore[arg-type]
    except ValueError as exc:  # unknown backend, dimensions that do not fit the program...
        progress.close()
        raise scancc_cli.UsageError(str(exc)) from None
    progress.close()
    print(result.table(top=args.top))
    if result.best.status != OK:
        print("scancc tune: no schedule ran correctly; nothing stored", file=sys.stderr)
        return 1
    if not args.no_save:
        print(f"stored in {ScheduleCache().directory}")
    return 0


# -- cache ---------------------------------------------------------------------------------------
def _schedule_text(record_schedule: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in record_schedule.to_dict().items() if v is not None)


def _cmd_cache_list(args: argparse.Namespace) -> int:
    cache = ScheduleCache()
    files = cache.files()
    print(f"cache directory: {cache.directory}")
    if not files:
        print("(empty)")
        return 0
    print(format_table(("file", "records"), [(path.name, str(len(cache.records_in(path)))) for path in files]))
    return 0


def _cmd_cache_show(args: argparse.Namespace) -> int:
    records = [r for r in ScheduleCache().records()
               if (args.backend is None or r.key.backend == args.backend)
               and (args.program is None or args.program in (r.key.program, r.program_name))]
    if not records:
        print("(no records)")
        return 0
    rows = [(f"{r.program_name or '?'} {r.key.program}", r.key.bucket, f"{r.key.backend} {r.key.backend_version}",
             f"{r.key.device} ({r.key.arch})", _schedule_text(r.schedule), format_time(r.time_s),
             "-" if r.speedup is None else f"{r.speedup:.2f}x") for r in records]
    print(format_table(("program", "bucket", "backend", "device", "schedule", "time", "speedup"), rows))
    return 0


def _cmd_cache_clear(args: argparse.Namespace) -> int:
    removed = ScheduleCache().clear(backend=args.backend)
    print(f"removed {len(removed)} cache file{'s' if len(removed) != 1 else ''}")
    return 0


def _cmd_cache_export(args: argparse.Namespace) -> int:
    count = ScheduleCache().export(args.file)
    print(f"exported {count} record{'s' if count != 1 else ''} to {args.file}")
    return 0


def _cmd_cache_import(args: argparse.Namespace) -> int:
    try:
        count = ScheduleCache().import_file(args.file)
    except ValueError as exc:
        raise scancc_cli.UsageError(str(exc)) from None
    print(f"imported {count} record{'s' if count != 1 else ''} from {args.file}")
    return 0


def add_tune_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``tune`` and ``cache`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("tune", help="search the fastest correct schedule for a program and shape",
                              description="Search the schedule space of a program at one shape; print every "
                                          "candidate's time and store the winner in the autotune cache.")
    p.add_argument("program", help=f"a preset ({', '.join(PRESETS)}) or a program .json file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a preset keyword argument, e.g. --set complex=true (repeatable)")
    p.add_argument("--shape", required=True,
                   help="dimensions, e.g. batch=4,dim=5120,dstate=16,seqlen=4096, or a named shape: "
                        + ", ".join(f"{k} ({v})" for k, v in SHAPE_PRESETS.items()))
    p.add_argument("--step", action="store_true",
                   help="tune the program's single-token (decode) form; the state is updated on private copies")
    p.add_argument("--pin", action="append", default=[], metavar="FIELD=VALUE",
                   help="hold a schedule field fixed, e.g. --pin chunk=256 for the SSD op's chunk_size (repeatable)")
    p.add_argument("--backend", default="triton")
    p.add_argument("--dtype", default="fp32", help="activation dtype: fp32, bf16, fp16")
    p.add_argument("--budget", type=parse_duration, default=60.0, help="wall-clock budget, e.g. 60s, 5m (default 60s)")
    p.add_argument("--trials", type=int, default=None, help="at most this many candidates besides the default")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to tune (default: cuda if present, else cpu under the Triton interpreter)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per final measurement (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", choices=("default", "oracle"), default="default",
                   help="what candidates are checked against: the default schedule's output, or the float64 oracle")
    p.add_argument("--top", type=int, default=20, help="rows of the result table")
    p.add_argument("--no-save", action="store_true", help="do not store the winner in the cache")
    p.set_defaults(func=_cmd_tune)

    c = subparsers.add_parser("cache", help="inspect, clear, export or import the autotune cache",
                              description="The autotune cache lives in $SCANCC_CACHE_DIR "
                                          "(default ~/.cache/scancc/autotune).")
    sub = c.add_subparsers(dest="cache_command", required=True, metavar="{list,show,clear,export,import}")
    sub.add_parser("list", help="cache files and their record counts").set_defaults(func=_cmd_cache_list)
    show = sub.add_parser("show", help="every record: program, shape bucket, schedule, time")
    show.add_argument("--backend", default=None)
    show.add_argument("--program", default=None, help="program hash or name")
    show.set_defaults(func=_cmd_cache_show)
    clear = sub.add_parser("clear", help="delete the cache files")
    clear.add_argument("--backend", default=None, help="only this backend's files")
    clear.set_defaults(func=_cmd_cache_clear)
    exp = sub.add_parser("export", help="write every record into one JSON file")
    exp.add_argument("file")
    exp.set_defaults(func=_cmd_cache_export)
    imp = sub.add_parser("import", help="merge the records of an exported file into the cache")
    imp.add_argument("file")
    imp.set_defaults(func=_cmd_cache_import)

