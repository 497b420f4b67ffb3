"""A tuning problem: one program at one concrete shape and dtype."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Union

import torch

from ..ir import Program

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
}
DtypeLike = Union[torch.dtype, str]


def parse_dtype(dtype: DtypeLike) -> torch.dtype:
    """``torch.bfloat16`` or one of ``bf16``/``fp16``/``fp32`` (and long names) → torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES.values())}, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be a torch float dtype or one of {sorted(set(DTYPES))}, got {dtype!r}")


_SHAPE_ITEM = re.compile(r"^\s*([a-z_]+)\s*=\s*(\d+)\s*$")

SHAPE_PRESETS: dict[str, str] = {
    "mamba1": "batch=4,dim=5120,dstate=16,seqlen=4096",          # selective scan, Mamba-1 2.8B-like layer
    "scan": "batch=8,dim=1536,seqlen=4096",                      # first-order scan (linear preset)
    "mamba2": "batch=4,seqlen=4096,heads=80,headdim=64,dstate=128,groups=1",  # SSD, Mamba-2 2.7B-like layer
    "mamba1-decode": "batch=16,dim=5120,dstate=16",              # one token of the Mamba-1 layer
    "mamba2-decode": "batch=16,heads=80,headdim=64,dstate=128,groups=1",  # one token of the Mamba-2 layer
}
"""Named shapes ``parse_shape`` accepts in place of ``name=int,...`` (the benchmarks' anchors)."""


def parse_shape(text: str) -> dict[str, int]:
    """``"batch=4,dim=5120,dstate=16,seqlen=4096"`` (or a :data:`SHAPE_PRESETS` name such as
    ``"mamba1"``) → ``{"batch": 4, ...}``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"shape must be a non-empty 'name=int,...' string or one of {sorted(SHAPE_PRESETS)}, "
                         f"got {text!r}")
    text = SHAPE_PRESETS.get(text.strip(), text)
    out: dict[str, int] = {}
    for item in text.split(","):
        m = _SHAPE_ITEM.match(item)
        if m is None:
            raise ValueError(f"shape items must look like 'seqlen=4096' (or the shape be one of "
                             f"{sorted(SHAPE_PRESETS)}), got {item.strip()!r} in {text!r}")
        if m.group(1) in out:
            raise ValueError(f"shape names {m.group(1)!r} twice in {text!r}")
        out[m.group(1)] = int(m.group(2))
    return out


def required_dims(program: Program) -> tuple[str, ...]:
    """Every symbolic dimension a call of ``program`` needs (inputs and state), sorted."""
    dims = {d for spec in program.tensors() for d in spec.dims} | set(program.state_dims())
    return tuple(sorted(dims))


@dataclass(frozen=True)
class Problem:
    """``program`` at concrete sizes ``dims`` (symbolic name → int, see ``TensorSpec``) and activation ``dtype``.

    Build with :meth:`make`, which fills the dimensions a program leaves implicit
    (``groups=1``, ``rank`` = the program's MIMO rank, ``pairs = max(1, dstate // 4)``, ``dstate=1``
    for the plain scan) and checks the rest.
    """

    program: Program
    dims: tuple[tuple[str, int], ...]
    dtype: torch.dtype

    @classmethod
    def make(cls, program: Program, shapes: Mapping[str, int], dtype: DtypeLike) -> "Problem":
        if not isinstance(program, Program):
            raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
        if not isinstance(shapes, Mapping):
            raise TypeError(f"shapes must be a mapping of dimension name to int, got {type(shapes).__name__}")
        need = required_dims(program)
        dims = {k: v for k, v in shapes.items()}
        for k, v in dims.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"shapes[{k!r}] must be a positive int, got {v!r}")
        unknown = set(dims) - set(need)
        if unknown:
            raise ValueError(f"shapes has dimensions {sorted(unknown)} that program {program.name!r} does not use; "
                             f"it uses {list(need)}")
        if "dstate" in need and not any("dstate" in spec.dims for spec in program.tensors()):
            dims.setdefault("dstate", 1)  # the plain scan's state has one entry per channel
        if "groups" in need:
            dims.setdefault("groups", 1)
        if "rank" in need:
            dims.setdefault("rank", program.input.rank)
            if dims["rank"] != program.input.rank:
                raise ValueError(f"shapes['rank'] must equal the program's rank {program.input.rank}, "
                                 f"got {dims['rank']}")
        if "pairs" in need and "dstate" in dims:
            dims.setdefault("pairs", max(1, dims["dstate"] // 4))
        missing = [d for d in need if d not in dims]
        if missing:
            raise ValueError(f"shapes is missing {missing} for program {program.name!r} (needs {list(need)})")
        if "groups" in dims:
            owner = "heads" if "heads" in dims else "dim"
            if dims[owner] % dims["groups"]:
                raise ValueError(f"shapes['{owner}']={dims[owner]} must be a multiple of "
                                 f"shapes['groups']={dims['groups']}")
        if "pairs" in dims and 2 * dims["pairs"] > dims["dstate"]:
            raise ValueError(f"shapes['pairs']={dims['pairs']} must be at most dstate/2 = {dims['dstate'] // 2}")
        return cls(program, tuple(sorted(dims.items())), parse_dtype(dtype))

    def __getitem__(self, name: str) -> int:
        for k, v in self.dims:
            if k == name:
                return v
        raise KeyError(f"problem has no dimension {name!r}; it has {[k for k, _ in self.dims]}")

    def get(self, name: str, default: int) -> int:
        for k, v in self.dims:
            if k == name:
                return v
        return default

    @property
    def shape(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def seqlen(self) -> int:
        """Time steps (1 for a decode step)."""
        return self.get("seqlen", 1)

    @property
    def rows(self) -> int:
        """Independent recurrences along the batch: ``batch × dim`` (channel) or ``batch × heads`` (head layout)."""
        width = self.get("dim", 1) if self.program.layout == "channel" else self.get("heads", 1)
        return self.get("batch", 1) * width

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def describe(self) -> str:
        return f"{self.program.name} " + ",".join(f"{k}={v}" for k, v in self.dims) + f" {self.dtype_name}"
