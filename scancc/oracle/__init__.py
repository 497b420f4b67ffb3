"""The float64 oracle: ground truth for every scancc program, and its alternative forms.

- :func:`sequential` — the recurrence step by step, for every program the IR expresses
  (NumPy float64, or torch float64 and differentiable).
- :func:`chunked` (SSD, Mamba-3), :func:`convolution` (LTI via FFT) and :func:`associative`
  (diagonal family, log-depth scan): independent forms used to test the oracle and the kernels.
- :func:`random_inputs`, :func:`random_state`: physically sensible inputs for any program.
- :func:`rel_l2`, :data:`TOLERANCES`, :func:`tolerance`: how results are compared.
"""

from .associative import associative
from .chunked import chunked
from .convolution import convolution
from .inputs import as_torch, random_inputs, random_state
from .metrics import TOLERANCES, rel_l2, tolerance
from .sequential import sequential

__all__ = [
    "TOLERANCES", "as_torch", "associative", "chunked", "convolution", "random_inputs", "random_state", "rel_l2", "sequential", "tolerance",
]
