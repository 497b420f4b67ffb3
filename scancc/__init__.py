"""scancc: a compiler for state-space-model scan kernels.

Describe a recurrence in the IR (:mod:`scancc.ir`), compile it for a backend
(:func:`scancc.compile`), or use the drop-in torch ops (:mod:`scancc.ops`).
"""

from . import ir
from .ir import Program, Schedule

__version__ = "0.1.0"

__all__ = ["Program", "Schedule", "__version__", "compile", "ir"]


def compile(program: Program, backend: str = "triton", schedule: Schedule | None = None):  # noqa: A001
    """Compile ``program`` for ``backend``; see :func:`scancc.compiler.compile`."""
    from .compiler import compile as _compile

    return _compile(program, backend=backend, schedule=schedule)
