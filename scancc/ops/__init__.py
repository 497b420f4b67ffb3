"""Drop-in torch ops backed by compiled scancc kernels.

- :func:`selective_scan_fn` — mamba-ssm's Mamba-1 selective scan (same signature and
  semantics, plus ``initial_state`` and ``cu_seqlens``).
- :func:`linear_scan` — ``h_t = a_t ⊙ h_{t−1} + s(a_t)·x_t`` (accelerated-scan's
  ``scan(gates, tokens)``, HGRN, RG-LRU).
- :func:`lti_scan` — S4D/S5/LRU time-invariant diagonal SSMs.
- :func:`mamba_chunk_scan_combined` — mamba-ssm's Mamba-2 SSD (chunked, same signature).
- :func:`selective_state_update` — mamba-ssm's single-token decode step (state updated in place).
- :func:`run_program` — any IR program through the generic op.

How they work: each public op validates its arguments (:mod:`scancc.ops.checks`), builds
its IR program from which optional arguments are present, and calls one ``torch.library``
op pair, ``scancc::scan`` / ``scancc::scan_backward``, keyed by the program's JSON
(:mod:`scancc.ops.registry`). The pair has fake kernels, so ``torch.compile(fullgraph=True)``
traces models using these ops without graph breaks, and autograd reaches every float input,
the initial state and flows through the final state. The backward op recomputes the
forward (one extra forward pass) so that the forward op's outputs stay backend-independent.
Without an explicit schedule the kernel's schedule comes from the autotuner's cache
(:func:`scancc.autotune.best_schedule`).

Conventions shared by all ops:

- float64/complex128 inputs raise ``TypeError`` (the kernels compute in float32; the
  float64 reference is :mod:`scancc.oracle`). Integer and bool tensors raise ``TypeError``;
  sequence tensors must share one dtype.
- Non-contiguous inputs are accepted and copied to contiguous memory.
- ``cu_seqlens`` values are checked on the host in eager mode (the only host sync); the
  check is skipped while ``torch.compile`` traces or a CUDA graph is captured, so compiled
  graphs never synchronise.
  Other data-dependent conditions (a positive LTI step, finite inputs, in-range
  ``state_batch_indices``) are not checked: NaN propagates to the outputs on every backend.
  The TVM backend's vectorised ``exp`` clamps finite arguments to [-87, 88], so an infinite
  decay exponent gives ``exp(±87/88)`` there rather than 0 or inf.
- Every size of the main input (batch, channels, heads, state) must be at least 1.
- Double backward is not supported.
"""

from .decode import selective_state_update
from .linear import linear_scan
from .lti import lti_scan
from .mamba3 import mamba3_mimo, mamba3_siso_combined, mamba3_step
from .registry import run_program
from .selective import selective_scan_fn
from .ssd import mamba_chunk_scan_combined

__all__ = ["linear_scan", "lti_scan", "mamba3_mimo", "mamba3_siso_combined", "mamba3_step", "mamba_chunk_scan_combined",
           "run_program", "selective_scan_fn", "selective_state_update"]
