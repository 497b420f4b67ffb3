"""Which tile axis the installed Triton puts its lanes on, for ``unrolled_scan``'s tiles.

``unrolled_scan`` wants each thread to own every step of its channels, i.e. lanes and warps
along the channel axis of a 2-D (time × channel) tile. Triton chooses a load's layout from
what it can prove about the addresses; the kernels pass the time stride at run time so that
neither axis is provably contiguous. Triton then breaks the tie by axis position, and
versions differ: Triton 3.6 puts lanes along the *first* axis, Triton 3.9 along the *last*.
So the tile is laid out ``[BLOCK_D, BLOCK_L]`` (channel-major) where lanes go along the
first axis and ``[BLOCK_L, BLOCK_D]`` (time-major) otherwise.

The answer comes from compiling a probe kernel of that shape to Triton's GPU IR for sm_90
(no GPU needed) and reading the layout Triton chose; it is computed once per process.
``SCANCC_TRITON_TILE_ORDER=channel_major|time_major`` overrides it.
"""

from __future__ import annotations

import functools
import os
import re
import warnings

ENV = "SCANCC_TRITON_TILE_ORDER"
ORDERS = ("channel_major", "time_major")


def tile_order() -> str:
    """``"channel_major"`` or ``"time_major"``: the unrolled tile whose lanes run along channels."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        if forced not in ORDERS:
            raise ValueError(f"{ENV} must be one of {ORDERS}, got {forced!r}")
        return forced
    return "channel_major" if _lanes_on_first_axis() else "time_major"


@functools.lru_cache(maxsize=None)
def _lanes_on_first_axis() -> bool:
    try:
        return _probe()
    except Exception as exc:  # no NVIDIA backend in this Triton build, or its API moved
        warnings.warn(f"scancc could not probe Triton's tile layout ({type(exc).__name__}: {exc}); "
                      f"using time-major unrolled tiles (set {ENV} to choose)", RuntimeWarning, stacklevel=3)
        return False


def _probe() -> bool:
    """Compile a [32, 32] tile load/store with runtime strides on both axes; True when the
    layout Triton chose has its 32 lanes along axis 0."""
    global tl  # the probe kernel's `tl`, bound here so that importing this module imports no Triton
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    # JITFunction itself, not triton.jit, which returns an interpreted function under TRITON_INTERPRET
    kernel = JITFunction(_probe_kernel)
    signature = {"x": "*fp32", "y": "*fp32", "stride_0": "i32", "stride_1": "i32", "BLOCK": "constexpr"}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": 32}),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    lanes = re.search(r"threadsPerWarp = \[(\d+), (\d+)\]", compiled.asm["ttgir"])
    if lanes is None:
        raise RuntimeError("no 2-D blocked layout in the probe's GPU IR")
    return int(lanes.group(1)) > int(lanes.group(2))


def _probe_kernel(x, y, stride_0, stride_1, BLOCK: tl.constexpr):  # noqa: F821 - `tl` is bound by _probe
    offsets = tl.arange(0, BLOCK)[:, None] * stride_0 + tl.arange(0, BLOCK)[None, :] * stride_1  # noqa: F821
    tl.store(y + offsets, tl.load(x + offsets))  # noqa: F821
