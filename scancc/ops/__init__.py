"""Drop-in torch ops backed by compiled scancc kernels.

- :func:`selective_scan_fn` — mamba-ssm's Mamba-1 selective scan (same signature).
- :func:`linear_scan` — ``h_t = a_t ⊙ h_{t−1} + s(a_t)·x_t`` (accelerated-scan, HGRN, RG-LRU).
- :func:`lti_scan` — S4D/S5/LRU time-invariant diagonal SSMs.
- :func:`mamba_chunk_scan_combined` — mamba-ssm's Mamba-2 SSD (chunked, same signature).
- :func:`run_program` — any IR program through the generic ``scancc::scan`` op.

All of them go through one ``torch.library`` op pair (``scancc::scan`` and
``scancc::scan_backward``, see :mod:`scancc.ops.registry`), with fake kernels for
``torch.compile`` and autograd to every float input and the initial state.
"""

from .linear import linear_scan
from .lti import lti_scan
from .registry import run_program
from .selective import selective_scan_fn
from .ssd import mamba_chunk_scan_combined

__all__ = ["linear_scan", "lti_scan", "mamba_chunk_scan_combined", "run_program", "selective_scan_fn"]
