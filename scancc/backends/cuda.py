"""The CUDA backend: Jinja templates → CUDA C, compiled at run time with NVRTC (through CuPy).

:class:`CUDABackend` implements :class:`scancc.backends.base.Backend`:

- diagonal family (vector state, channel layout: linear / HGRN / RG-LRU incl. complex,
  LTI / LRU, Mamba-1 selective with every flag): forward and backward,
  :mod:`scancc.backends.cuda_diag`, schedule ``sequential``;
- first-order scans (linear / HGRN / RG-LRU, real or complex): schedule ``chunked_scan``
  (the default), forward and backward, :mod:`scancc.backends.cuda_linear`;
- Mamba-1 selective scans with real ``A`` and time-varying B/C: schedule ``chunked_scan``
  (the default), a chunked forward with the sequential backward,
  :mod:`scancc.backends.cuda_selective`;
- single-token decode programs (``mode="step"``: Mamba-1 / Mamba-2 selective state update):
  :mod:`scancc.backends.cuda_step`, schedule ``step``;
- matrix states (SSD, GLA, Mamba-3 incl. rotary and MIMO): a recurrent schedule, forward
  only, :mod:`scancc.backends.cuda_matrix`, schedule ``sequential``.

``lower`` only renders text: it needs neither CuPy nor a GPU (``scancc emit PRESET
--backend cuda``). ``build`` needs CuPy; kernels are compiled per device, state size,
block geometry and input dtypes on first use and cached on disk
(:mod:`scancc.backends.cuda_runtime`). Inputs and outputs follow the Triton backend
exactly (same names, shapes, states, ``cu_seqlens``, gradients), so one oracle test suite
runs against both. Every activation is read with its own strides except the time axis,
which must be contiguous; a tensor whose time axis is not is copied first (documented
cost, never an error).
"""

from __future__ import annotations

from typing import Any

from ..ir import Program, Schedule
from .cuda_runtime import INSTALL_HINT, unavailable_reason
from .diagonal import unsupported_reason as diagonal_unsupported


def _family(program: Program) -> str:
    if program.mode == "step":
        return "step"
    return "diagonal" if program.state.shape == "vector" else "matrix"


def _chunked_module(program: Program) -> Any:
    """The module of the chunked diagonal kernels that run ``program``, or ``None``."""
    from . import cuda_linear, cuda_selective

    for module in (cuda_linear, cuda_selective):
        if module.unsupported_reason(program) is None:
            return module
    return None


class CUDABackend:
    """Raw CUDA kernels through CuPy (see the module docstring)."""

    name = "cuda"
    install_hint = INSTALL_HINT

    def available(self) -> bool:
        return unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def unsupported_reason(self, program: Program, schedule: Schedule) -> str | None:
        """Why ``program`` with ``schedule`` cannot be lowered, or ``None``."""
        family = _family(program)
        if family == "step":
            from . import cuda_step

            return cuda_step.unsupported_reason(program, schedule)
        if family == "matrix":
            from . import cuda_matrix

            return cuda_matrix.unsupported_reason(program, schedule)
        reason = diagonal_unsupported(program)
        if reason is not None:
            return reason
        if schedule.algorithm == "sequential":
            return None
        if schedule.algorithm == "chunked_scan":
            if _chunked_module(program) is not None:
                return None
            return ("algorithm 'chunked_scan' runs first-order scans (linear / HGRN / RG-LRU) and selective scans "
                    "with real A and time-varying B/C on the CUDA backend; this program takes 'sequential'")
        return (f"the CUDA diagonal kernels implement algorithms 'sequential' and 'chunked_scan', "
                f"not {schedule.algorithm!r}")

    def backward_unsupported_reason(self, program: Program, schedule: Schedule) -> str | None:
        """Why the kernel for ``program`` has no backward, or ``None``: matrix-state programs
        (SSD, Mamba-3, GLA) run a recurrent forward only on this backend."""
        if _family(program) == "matrix":
            return (f"the CUDA backend runs {program.family} programs forward only (recurrent schedule); "
                    "their gradients come from the triton backend")
        return None

    def supports(self, program: Program, schedule: Schedule) -> bool:
        return self.unsupported_reason(program, schedule) is None

    def default_schedule(self, program: Program) -> Schedule:
        """First-order and real selective scans: ``chunked_scan`` (tiles and warps for an H100,
        :mod:`scancc.backends.cuda_linear` / :mod:`scancc.backends.cuda_selective`); the rest of
        the diagonal family: ``sequential`` with 4 warps (``block_n``/``block_d``/``block_l``
        chosen per shape by :func:`scancc.backends.cuda_diag.choose_config`); decode: ``step``;
        matrix states: ``sequential`` (recurrent)."""
        family = _family(program)
        if family == "step":
            from . import cuda_step

            return cuda_step.default_schedule(program)
        if family == "matrix":
            from . import cuda_matrix

            return cuda_matrix.default_schedule(program)
        if diagonal_unsupported(program) is None:
            module = _chunked_module(program)
            if module is not None:
                return module.default_schedule()
        return Schedule(algorithm="sequential", num_warps=4)

    def lower(self, program: Program, schedule: Schedule) -> str:
        reason = self.unsupported_reason(program, schedule)
        if reason is not None:
            raise ValueError(f"cuda backend cannot lower {program.name!r}: {reason}")
        family = _family(program)
        if family == "step":
            from . import cuda_step

            return cuda_step.render(program)
        if family == "matrix":
            from . import cuda_matrix

            return cuda_matrix.render(program)
        if schedule.algorithm == "chunked_scan":
            return _chunked_module(program).render(program)
        from . import cuda_diag

        return cuda_diag.render(program)

    def build(self, program: Program, schedule: Schedule, source: str) -> Any:
        reason = unavailable_reason()
        if reason is not None:
            raise ImportError(f"the CUDA backend cannot run here: {reason}")
        family = _family(program)
        if family == "step":
            from .cuda_step import CUDAStep

            return CUDAStep(program, schedule, source)
        if family == "matrix":
            from .cuda_matrix import CUDAMatrixScan

            return CUDAMatrixScan(program, schedule, source)
        if schedule.algorithm == "chunked_scan":
            from . import cuda_linear, cuda_selective

            module = _chunked_module(program)
            if module is cuda_linear:
                return cuda_linear.CUDALinearScan(program, schedule, source)
            return cuda_selective.CUDASelectiveScan(program, schedule, source)
        from .cuda_diag import CUDADiagScan

        return CUDADiagScan(program, schedule, source)
