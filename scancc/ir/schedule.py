"""The schedule: *how* a program is computed. The autotuner searches these, never programs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

from .names import IRValidationError, check_choice

ALGORITHMS = (
    "chunked_scan",  # tiles of block_l steps, associative scan inside, state carried between tiles
    "sequential",    # one step at a time (reference / decode-like schedules)
    "unrolled_scan",  # steps × channels tiles, the state axis unrolled (block_n entries), scans inside threads
    "ssd_chunked",   # SSD/Mamba-3 chunked matrix form (intra-chunk matmuls + state passing)
    "fft_conv",      # LTI as a long convolution via FFT
    "step",          # single-token decode update
)


def _pow2(v: Optional[int], what: str, lo: int = 1, hi: int = 1 << 16) -> None:
    if v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi or v & (v - 1):
        raise IRValidationError(f"Schedule.{what} must be a power of two in [{lo}, {hi}], got {v!r}")


@dataclass(frozen=True)
class Schedule:
    """Tiling and launch parameters for one kernel.

    ``block_l``: time steps per tile; ``block_d``: channels (or head-dim rows) per program;
    ``block_n``: state entries per program (``unrolled_scan``: the most entries unrolled);
    ``chunk``: SSD chunk length, or for the Triton diagonal kernels the steps between the
    forward's state checkpoints (the backward's tile length); ``num_warps``,
    ``num_stages``: launch parameters. ``None`` means the backend's default.
    """

    algorithm: str = "chunked_scan"
    block_l: Optional[int] = None
    block_d: Optional[int] = None
    block_n: Optional[int] = None
    chunk: Optional[int] = None
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self) -> None:
        check_choice(self.algorithm, ALGORITHMS, "algorithm")
        _pow2(self.block_l, "block_l")
        _pow2(self.block_d, "block_d")
        _pow2(self.block_n, "block_n")
        _pow2(self.chunk, "chunk", lo=16, hi=4096)
        _pow2(self.num_warps, "num_warps", hi=32)
        if not isinstance(self.num_stages, int) or isinstance(self.num_stages, bool) or not 1 <= self.num_stages <= 8:
            raise IRValidationError(f"Schedule.num_stages must be an int in [1, 8], got {self.num_stages!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Schedule":
        if not isinstance(data, dict):
            raise IRValidationError(f"a schedule must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known
        if extra:
            raise IRValidationError(f"unknown schedule fields: {sorted(extra)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "Schedule":
        return dataclasses.replace(self, **changes)
