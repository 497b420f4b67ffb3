"""What each backend can run: forward, backward and decode step, per program and algorithm.

:func:`capabilities` asks every registered backend (:func:`~scancc.backends.registry.known_backends`)
through its ``supports`` / ``unsupported_reason`` (pure functions of the program and schedule:
no runtime, no GPU needed), so a new backend appears here as soon as it is registered.
:func:`features_markdown` renders the answers as ``docs/features.md``
(``scancc features --markdown``).

Backward support: every sequence-mode program a backend lowers is taken to have a backward
(the :class:`~scancc.backends.base.CompiledScan` contract), unless the backend defines
``backward_unsupported_reason(program, schedule) -> Optional[str]``; decode-step programs
have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..ir import PRESETS, Program, Schedule
from ..ir.schedule import ALGORITHMS
from .registry import get_backend, known_backends

DEFAULT_CHUNK = 64  # for asking about ssd_chunked when a backend's default schedule has no chunk


def feature_programs() -> list[tuple[str, Program]]:
    """The programs of the feature matrix: every preset at its defaults, plus the variants
    whose kernels differ (complex Mamba-1, Mamba-3 MIMO)."""
    out = [(name, factory()) for name, factory in PRESETS.items()]
    out.append(("selective (complex A)", PRESETS["selective"](complex=True)))
    out.append(("mamba3 (MIMO rank 2)", PRESETS["mamba3"](rank=2, pairing="halves")))
    return out


@dataclass(frozen=True)
class Capability:
    """One program × backend × algorithm: whether forward and backward are lowered, and
    why not when the forward is not (``reason``)."""

    program: str
    family: str
    backend: str
    algorithm: str
    forward: bool
    backward: bool
    reason: Optional[str] = None


def _schedule_for(impl: Any, program: Program, algorithm: str) -> Schedule:
    """The backend's default schedule for ``program`` with ``algorithm`` swapped in."""
    try:
        default = impl.default_schedule(program)
    except (ValueError, TypeError):
        default = Schedule(algorithm=algorithm)
    if default.algorithm == algorithm:
        return default
    chunk = default.chunk if default.chunk is not None or algorithm != "ssd_chunked" else DEFAULT_CHUNK
    return default.replace(algorithm=algorithm, chunk=chunk)


def _reason(impl: Any, program: Program, schedule: Schedule) -> Optional[str]:
    explain = getattr(impl, "unsupported_reason", None)
    if explain is not None:
        return explain(program, schedule)
    return None if impl.supports(program, schedule) else "not supported"


def query(backend: str, program: Program, algorithm: str, label: Optional[str] = None) -> Capability:
    """What ``backend`` can do for ``program`` with ``algorithm`` (``"step"``: the decode step
    of ``program``, which must be given in sequence mode)."""
    impl = get_backend(backend)
    prog = program.as_step() if algorithm == "step" else program
    schedule = _schedule_for(impl, prog, algorithm)
    reason = _reason(impl, prog, schedule)
    backward = False
    if reason is None and prog.mode == "sequence":
        explain_bwd = getattr(impl, "backward_unsupported_reason", None)
        backward = explain_bwd is None or explain_bwd(prog, schedule) is None
    return Capability(label or program.name, program.family, backend, algorithm, reason is None, backward, reason)


def capabilities(backends: Optional[Sequence[str]] = None,
                 programs: Optional[Sequence[tuple[str, Program]]] = None) -> list[Capability]:
    """Every program of :func:`feature_programs` × backend × algorithm (``step`` included)."""
    names = tuple(backends) if backends is not None else known_backends()
    rows = []
    for label, program in programs if programs is not None else feature_programs():
        for backend in names:
            for algorithm in ALGORITHMS:
                rows.append(query(backend, program, algorithm, label))
    return rows


def supported(backend: str, program: Program) -> dict[str, bool]:
    """``{"forward", "backward", "step"}`` for ``backend`` and ``program`` over all algorithms."""
    caps = [query(backend, program, a) for a in ALGORITHMS]
    seq = [c for c in caps if c.algorithm != "step"]
    return {"forward": any(c.forward for c in seq), "backward": any(c.backward for c in seq),
            "step": any(c.forward for c in caps if c.algorithm == "step")}


# -- docs/features.md -----------------------------------------------------------------------------------
def _cell(cap: Capability) -> str:
    if not cap.forward:
        return "—"
    if cap.algorithm == "step":
        return "yes"
    return "fwd + bwd" if cap.backward else "fwd"


def features_markdown(caps: Optional[Sequence[Capability]] = None) -> str:
    """The feature matrix as Markdown: one table per backend, one row per program."""
    caps = list(capabilities() if caps is None else caps)
    lines = [
        "# Feature matrix",
        "",
        "<!-- Generated by `scancc features --markdown --output docs/features.md`; do not edit by hand.",
        "     tests/backends/test_features.py fails when this file is out of date. -->",
        "",
        "What each backend lowers, per program and algorithm, as its `supports` / `unsupported_reason`",
        "report them (`scancc.backends.capabilities`). `fwd + bwd`: forward and gradients; `fwd`:",
        "forward only; `—`: not lowered. The step column is the single-token decode update of the",
        "program (`Program.as_step()`). Programs are the presets at their defaults",
        "(`scancc emit <preset> --describe`).",
    ]
    backends = list(dict.fromkeys(c.backend for c in caps))
    programs = list(dict.fromkeys((c.program, c.family) for c in caps))
    algorithms = [a for a in ALGORITHMS if any(c.algorithm == a for c in caps)]
    index = {(c.program, c.backend, c.algorithm): c for c in caps}
    for backend in backends:
        lines += ["", f"## `{backend}`", ""]
        header = ["program", "family", *(f"`{a}`" if a != "step" else "step (decode)" for a in algorithms)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for program, family in programs:
            cells = [_cell(index[(program, backend, a)]) for a in algorithms]
            lines.append("| " + " | ".join([program, family, *cells]) + " |")
        missing = [p for p, _ in programs
                   if not any(index[(p, backend, a)].forward for a in algorithms if a != "step")]
        if missing:
            lines += ["", "Not lowered (the reason given for the backend's default schedule):", ""]
            lines += [f"- {p}: {_default_reason(backend, p, caps)}" for p in missing]
    return "\n".join(lines) + "\n"


def _default_reason(backend: str, label: str, caps: Sequence[Capability]) -> str:
    """Why ``backend`` lowers program ``label`` with no algorithm (asked with its default schedule)."""
    program = dict(feature_programs()).get(label)
    if program is None:
        return next((c.reason for c in caps if c.program == label and c.backend == backend and c.reason), "")
    impl = get_backend(backend)
    try:
        schedule = impl.default_schedule(program)
    except (ValueError, TypeError):
        schedule = Schedule()
    return _reason(impl, program, schedule) or ""
