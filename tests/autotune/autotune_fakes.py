"""A fake backend and a simulated clock, so the autotuner's logic runs on the CPU in milliseconds.

The fake kernel computes a real recurrence (``h = a·h + x``) so the correctness gate has
something to check; chosen schedules can be made to miscompile, fail to build or fail
at launch. Each launch advances a simulated clock by a cost that depends on the
schedule, and each build by ``compile_cost``; :class:`FakeTimer` reads that clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

from scancc.backends.base import ScanForward
from scancc.ir import Program, Schedule
from scancc.autotune.timing import Timer


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeTimer(Timer):
    name = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def time(self, run, start: int, count: int) -> list[float]:  # type: ignore[no-untyped-def]
        out = []
        for i in range(start, start + count):
            t0 = self.clock()
            run(i)
            out.append(self.clock() - t0)
        return out


def default_cost(s: Schedule) -> float:
    """Fastest at block_l=512, num_warps=4, num_stages=2 (1 ms), slower away from it."""
    bl = (s.block_l or 256).bit_length() - 10  # 512 → 0
    nw = s.num_warps.bit_length() - 3          # 4 → 0
    return 1e-3 * (1 + 0.1 * bl * bl + 0.05 * nw * nw + 0.02 * abs(s.num_stages - 2))


def _scan(a: torch.Tensor, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``h_t = a_t h_{t−1} + x_t`` over the last axis, 64 steps at a time:
    inside a chunk ``h_t = P_t (h_0 + Σ_{s≤t} x_s / P_s)`` with ``P_t = Π_{r≤t} a_r``."""
    h = torch.zeros_like(x[..., 0], dtype=torch.float32)
    outs = []
    for start in range(0, x.shape[-1], chunk):
        ac, xc = a[..., start:start + chunk].float(), x[..., start:start + chunk].float()
        prod = torch.cumprod(ac, -1)
        out = prod * (h.unsqueeze(-1) + torch.cumsum(xc / prod, -1))
        h = out[..., -1]
        outs.append(out)
    return torch.cat(outs, -1).to(x.dtype)


@dataclass
class FakeKernel:
    program: Program
    schedule: Schedule
    backend: str
    source: str
    owner: "FakeBackend"

    def forward(self, inputs: Mapping[str, Optional[torch.Tensor]], *, initial_state: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, return_final_state: bool = False,
                save_for_backward: bool = False) -> ScanForward:
        owner = self.owner
        owner.launches += 1
        owner.seen_inputs.append({k: v.data_ptr() for k, v in inputs.items() if v is not None})
        if self.schedule in owner.launch_fail:
            raise RuntimeError("fake launch failure")
        owner.clock.advance(owner.cost(self.schedule))
        a, x = inputs["a"], inputs["x"]
        final = None
        if self.program.mode == "step":  # h ← a·h + x, out = h; the caller's state is left alone
            assert initial_state is not None
            final = initial_state * a.float().unsqueeze(-1) + x.float().unsqueeze(-1)
            out = final[..., 0].to(x.dtype)
        else:
            out = _scan(a, x)
        if self.schedule in owner.wrong:
            out = out + 0.5
        if self.schedule in owner.nan:
            out = out.clone()
            out.view(-1)[0] = float("nan")
        return ScanForward(out, final_state=final if return_final_state else None)

    def backward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the fake kernel has no backward")


@dataclass
class FakeBackend:
    """``Backend`` protocol with a simulated cost model."""

    clock: FakeClock = field(default_factory=FakeClock)
    cost: Callable[[Schedule], float] = default_cost
    compile_cost: float = 0.0
    default: Schedule = Schedule(block_l=256, num_warps=4, num_stages=1)
    wrong: set = field(default_factory=set)
    nan: set = field(default_factory=set)
    compile_fail: set = field(default_factory=set)
    launch_fail: set = field(default_factory=set)
    name: str = "fake"
    version: str = "fake-1.0"
    builds: int = 0
    launches: int = 0
    seen_inputs: list = field(default_factory=list)

    def available(self) -> bool:
        return True

    def supports(self, program: Program, schedule: Schedule) -> bool:
        return True

    def default_schedule(self, program: Program) -> Schedule:
        return self.default

    def lower(self, program: Program, schedule: Schedule) -> str:
        if schedule in self.compile_fail:
            raise SyntaxError("fake compile failure")
        return f"# fake kernel for {program.name} with {schedule.to_json()}"

    def build(self, program: Program, schedule: Schedule, source: str) -> FakeKernel:
        self.builds += 1
        self.clock.advance(self.compile_cost)
        return FakeKernel(program, schedule, self.name, source, self)
