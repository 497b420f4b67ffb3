"""Mamba-3 test cases: random inputs from the oracle, converted to the ops' (mamba-ssm) layout,
and the float64 oracle reference (values and, through its torch path, gradients)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from scancc import ir, oracle
from scancc.ops import mamba3_mimo, mamba3_siso_combined

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ARGS = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles", "W_x", "W_z", "W_o", "D", "Z")
TO_PROGRAM = {"Q": "C", "K": "B", "V": "x", "ADT": "adt", "DT": "dt", "Trap": "trap", "Q_bias": "C_bias",
              "K_bias": "B_bias", "Angles": "angles", "W_x": "W_x", "W_z": "W_z", "W_o": "W_o", "D": "D", "Z": "z"}
PER_HEAD = ("ADT", "DT", "Trap")      # (batch, nheads, seqlen) in the ops, (batch, seqlen, heads) in the program
SEQUENCE = ("Q", "K", "V", "Z")       # rounded to the case's dtype before the reference sees them
STATES = ("angle", "ssm", "k", "x")


@dataclass
class Case:
    """One Mamba-3 problem (rank 1: the SISO op; rank > 1: the MIMO op)."""

    batch: int = 2
    seqlen: int = 24
    heads: int = 2
    heads_qk: int = 1
    headdim: int = 8
    dstate: int = 8
    pairs: Optional[int] = None
    rank: int = 1
    chunk: int = 16
    bias: bool = True
    D: bool = True
    z: bool = True
    states: bool = True
    cu_seqlens: Optional[list[int]] = None
    dtype: torch.dtype = torch.float32
    seed: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict, init=False)
    state: Optional[dict[str, np.ndarray]] = field(default=None, init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        pairs = self.dstate // 2 if self.pairs is None else self.pairs
        self.arrays = oracle.random_inputs(self.program, rng, batch=self.batch, seqlen=self.seqlen, heads=self.heads,
                                           headdim=self.headdim, dstate=self.dstate, groups=self.heads_qk,
                                           pairs=pairs)
        self.arrays["angles"] = self.arrays["angles"] * 2.0   # angles pass 2π: the mod matters
        for name in ("B", "C", "x", "z"):
            self.arrays[name] = torch.from_numpy(self.arrays[name]).to(self.dtype).double().numpy()
        if not self.bias:
            self.arrays.pop("B_bias")
            self.arrays.pop("C_bias")
        if not self.D:
            self.arrays.pop("D")
        if not self.z:
            self.arrays.pop("z")
        if self.states:
            self.state = oracle.random_state(self.program, rng, inputs=self.arrays, rows=self.rows)

    @property
    def program(self) -> ir.Program:
        return ir.mamba3(rank=self.rank, pairing="interleaved" if self.rank == 1 else "halves")

    @property
    def rows(self) -> int:
        return self.batch if self.cu_seqlens is None else len(self.cu_seqlens) - 1

    # -- the ops' arguments ---------------------------------------------------------------------
    def args(self, requires_grad: bool = False, dtype: Optional[torch.dtype] = None) -> dict[str, Optional[torch.Tensor]]:
        """Op arguments by name (mamba-ssm layout) on DEVICE; sequence tensors in the case's dtype,
        parameters in fp32 (``dtype`` overrides both, e.g. float64 for the reference)."""
        out: dict[str, Optional[torch.Tensor]] = {}
        for arg in ARGS:
            a = self.arrays.get(TO_PROGRAM[arg])
            if a is None:
                out[arg] = None
                continue
            t = torch.from_numpy(a)
            if arg in PER_HEAD:
                t = t.transpose(1, 2)
            want = dtype or (self.dtype if arg in SEQUENCE else torch.float32)
            t = t.to(device=DEVICE, dtype=want).contiguous()
            out[arg] = t.requires_grad_(requires_grad)
        return out

    def state_args(self, requires_grad: bool = False, dtype: torch.dtype = torch.float32
                   ) -> Optional[tuple[torch.Tensor, ...]]:
        if self.state is None:
            return None
        return tuple(torch.from_numpy(self.state[k]).to(device=DEVICE, dtype=dtype).requires_grad_(requires_grad)
                     for k in STATES)

    def cu(self) -> Optional[torch.Tensor]:
        return None if self.cu_seqlens is None else torch.tensor(self.cu_seqlens, dtype=torch.int32, device=DEVICE)

    def run(self, args: dict[str, Any], states: Any, final: bool = True) -> Any:
        kw = dict(Input_States=states, chunk_size=self.chunk, return_final_states=final, cu_seqlens=self.cu())
        common = {k: args[k] for k in ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles")}
        if self.rank == 1:
            return mamba3_siso_combined(**common, D=args["D"], Z=args["Z"], **kw)
        return mamba3_mimo(**common, W_x=args["W_x"], W_z=args["W_z"], W_o=args["W_o"], D=args["D"], Z=args["Z"],
                           **kw)

    # -- the reference --------------------------------------------------------------------------
    def reference(self, args64: Optional[dict[str, Optional[torch.Tensor]]] = None,
                  states64: Optional[tuple[torch.Tensor, ...]] = None) -> tuple[Any, dict[str, Any]]:
        """The float64 oracle on the op arguments ``args64`` (float64 torch tensors, possibly
        requiring grad; default: the case's arrays)."""
        if args64 is None:
            args64 = self.args(dtype=torch.float64)
            states64 = self.state_args(dtype=torch.float64)
        inputs = {}
        for arg, t in args64.items():
            if t is None or TO_PROGRAM[arg] not in {s.name for s in self.program.tensors()}:
                continue
            inputs[TO_PROGRAM[arg]] = t.transpose(1, 2) if arg in PER_HEAD else t
        state = None if states64 is None else dict(zip(STATES, states64))
        cu = None if self.cu_seqlens is None else np.array(self.cu_seqlens)
        return oracle.sequential(self.program, inputs, initial_state=state, cu_seqlens=cu, return_final_state=True)


def fwd_tol(dtype: torch.dtype) -> float:
    return oracle.tolerance(dtype, chunked=True)
