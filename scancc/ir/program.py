"""The recurrence IR: *what* is computed, never *how*.

Every program is one first-order linear recurrence (``recurrences.md``)::

    h_t = a_t ⊙ h_{t-1} + b_t          y_t = readout(h_t) (+ D·x_t) (· silu(z_t))

and a :class:`Program` says exactly how ``a_t`` (:class:`Decay`), ``b_t``
(:class:`Input`) and ``y_t`` (:class:`Readout`) are formed, the state's shape
(:class:`State`), the step size ``Δ`` (:class:`Step`) and, for Mamba-3, the
rotation of B/C (:class:`Rotary`). Tile sizes, chunk sizes and warps live in
:class:`scancc.ir.Schedule`, never here.

Programs are frozen, validated on construction, have a stable JSON form
(:meth:`Program.to_json`) and a content hash (:attr:`Program.hash`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from .names import IRValidationError, check_choice, check_identifier

IR_VERSION = 1

LAYOUTS = ("channel", "head")
MODES = ("sequence", "step")
STATE_SHAPES = ("vector", "matrix")
DECAY_KINDS = ("input", "exp", "log_input", "lti")
DECAY_PARAMS = ("element", "state", "channel", "head")
DISCRETIZATIONS = ("zoh", "bilinear", "none")
INPUT_KINDS = ("direct", "euler", "discretized", "trapezoid")
INPUT_SCALES = ("none", "one_minus_a", "sqrt_one_minus_a2")
PARAM_SOURCES = ("none", "varying", "fixed")
READOUT_KINDS = ("state", "contract")
GATES = ("none", "silu")
PAIRINGS = ("interleaved", "halves")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise IRValidationError(message)


@dataclass(frozen=True)
class State:
    """Shape of the hidden state.

    ``vector``: ``h[d, n]`` per channel ``d`` (``N`` = 1 for the plain scan ``h = a·h + x``).
    ``matrix``: ``h[h, p, n]`` per head (SSD / Mamba-3: a ``P × N`` matrix).
    ``complex``: complex state entries (LTI S4D/LRU, complex Mamba-1).
    """

    shape: str = "vector"
    complex: bool = False

    def __post_init__(self) -> None:
        check_choice(self.shape, STATE_SHAPES, "state shape")
        _need(isinstance(self.complex, bool), "State.complex must be a bool")


@dataclass(frozen=True)
class Step:
    """The step size ``Δ_t`` formed from the ``delta``/``dt`` input.

    ``Δ = clamp(softplus(dt + bias) if softplus else dt + bias, lo, hi)``; softplus
    uses ``x`` for ``x > 20``. ``clamp`` is ``(lo, hi)`` with ``0 ≤ lo ≤ hi`` (``hi``
    may be ``inf``) or ``None``.
    """

    bias: bool = False
    softplus: bool = False
    clamp: Optional[tuple[float, float]] = None

    def __post_init__(self) -> None:
        _need(isinstance(self.bias, bool) and isinstance(self.softplus, bool), "Step.bias/softplus must be bools")
        if self.clamp is not None:
            _need(len(self.clamp) == 2, f"Step.clamp must be (lo, hi), got {self.clamp!r}")
            lo, hi = (float(v) for v in self.clamp)
            _need(not (math.isnan(lo) or math.isnan(hi)), "Step.clamp must not contain NaN")
            _need(0.0 <= lo <= hi, f"Step.clamp needs 0 <= lo <= hi, got {self.clamp!r}")
            object.__setattr__(self, "clamp", (lo, hi))


@dataclass(frozen=True)
class Decay:
    """How the decay ``a_t`` is formed.

    - ``input``: ``a_t`` is an input tensor shaped like ``x`` (plain scan, HGRN/RG-LRU gates).
    - ``exp``: ``a_t = exp(Δ_t · A)``; ``param`` says what ``A`` varies over
      (``state``: ``A[d, n]`` as in Mamba-1; ``head``: ``A[h]`` as in SSD).
    - ``log_input``: ``a_t = exp(adt_t)`` with the log-decay ``adt = A·Δ`` given per head
      and step (Mamba-3; ``param="state"`` with a matrix state is GLA's per-key decay).
    - ``lti``: fixed over time, ``Ā = discretize(λ, Δ)`` with ``discretization`` ``zoh``,
      ``bilinear`` or ``none`` (``Ā = λ`` given directly, as in LRU).
    """

    kind: str = "input"
    param: str = "element"
    discretization: Optional[str] = None

    def __post_init__(self) -> None:
        check_choice(self.kind, DECAY_KINDS, "decay kind")
        check_choice(self.param, DECAY_PARAMS, "decay parameter granularity")
        if self.kind == "lti":
            check_choice(self.discretization, DISCRETIZATIONS, "discretization")
        else:
            _need(self.discretization is None, f"discretization only applies to decay kind 'lti', not {self.kind!r}")
        _need((self.kind == "input") == (self.param == "element"),
              "decay param 'element' goes with (and only with) decay kind 'input'")


@dataclass(frozen=True)
class Input:
    """How the state input ``b_t`` is formed.

    - ``direct``: ``b_t = s(a_t) · x_t`` (``scale`` s: ``none`` → 1, ``one_minus_a`` → 1 − a
      (HGRN), ``sqrt_one_minus_a2`` → sqrt(1 − |a|²) (RG-LRU, LRU's γ)).
    - ``euler``: ``b_t = Δ_t · B_t ⊗ x_t`` (Mamba-1, SSD).
    - ``discretized``: ``b_t = B̄ ⊗ x_t`` with ``B̄`` from the LTI discretization.
    - ``trapezoid``: Mamba-3's two-tap ``β_t x_{t−1} B̃_{t−1}ᵀ + γ_t x_t B̃_tᵀ``.

    ``b`` says whether ``B`` is absent, varying over time (``B[batch, group, n, t]``) or
    fixed (``B[d, n]``); ``rank`` > 1 is Mamba-3's MIMO.
    """

    kind: str = "direct"
    b: str = "none"
    scale: str = "none"
    rank: int = 1

    def __post_init__(self) -> None:
        check_choice(self.kind, INPUT_KINDS, "input kind")
        check_choice(self.b, PARAM_SOURCES, "input B source")
        check_choice(self.scale, INPUT_SCALES, "input scale")
        _need(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
              f"Input.rank must be a positive int, got {self.rank!r}")
        _need((self.kind == "direct") == (self.b == "none"), "input kind 'direct' takes no B; every other kind needs B")
        _need(self.scale == "none" or self.kind == "direct", "input scale applies only to input kind 'direct'")
        _need(self.rank == 1 or self.kind == "trapezoid", "rank > 1 (MIMO) needs input kind 'trapezoid'")
        _need(self.kind != "discretized" or self.b == "fixed", "input kind 'discretized' needs a fixed B")
        _need(self.kind != "trapezoid" or self.b == "varying", "input kind 'trapezoid' needs a varying B")


@dataclass(frozen=True)
class Readout:
    """How ``y_t`` is read from ``h_t``.

    ``state``: ``y = h`` (vector state of size 1). ``contract``: ``y = Σ_n C_n h_n``
    with ``C`` varying or fixed; complex states read ``scale · Re(Σ_n C_n h_n)``
    (``scale=2`` stores conjugate pairs once, as S4D). ``skip`` adds ``D · x``;
    ``gate="silu"`` multiplies by ``silu(z)``.
    """

    kind: str = "state"
    c: str = "none"
    scale: float = 1.0
    skip: bool = False
    gate: str = "none"

    def __post_init__(self) -> None:
        check_choice(self.kind, READOUT_KINDS, "readout kind")
        check_choice(self.c, PARAM_SOURCES, "readout C source")
        check_choice(self.gate, GATES, "gate")
        _need(isinstance(self.skip, bool), "Readout.skip must be a bool")
        _need(isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool) and self.scale in (1, 2),
              f"Readout.scale must be 1 or 2, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        _need((self.kind == "state") == (self.c == "none"), "readout 'state' takes no C; readout 'contract' needs C")


@dataclass(frozen=True)
class Rotary:
    """Mamba-3's data-dependent rotation of B and C (≡ a complex state).

    ``φ_t = (φ_{t−1} + Δ_t·π·tanh(angle_t)) mod 2π`` per head over ``K ≤ N/2`` pairs;
    ``pairing`` ``interleaved`` rotates ``(2i, 2i+1)`` (SISO kernels), ``halves``
    rotates ``(i, i + N/2)`` (MIMO kernels). ``bias`` adds ``B_bias``/``C_bias`` first.
    """

    pairing: str = "interleaved"
    bias: bool = False

    def __post_init__(self) -> None:
        check_choice(self.pairing, PAIRINGS, "rotary pairing")
        _need(isinstance(self.bias, bool), "Rotary.bias must be a bool")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a program's call signature.

    ``dims`` are symbolic: batch, seqlen, dim (channels), dstate (N), groups, heads,
    headdim (P), rank (R), pairs (rotary K). ``dtype`` is ``float``, ``complex`` or ``int``.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str = "float"
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Program:
    """A validated recurrence program. Build one with a preset (``scancc.ir.selective``...)."""

    name: str
    layout: str
    state: State
    decay: Decay
    input: Input
    readout: Readout
    step: Optional[Step] = None
    rotary: Optional[Rotary] = None
    mode: str = "sequence"

    _COMPONENTS: ClassVar[dict[str, type]] = {
        "state": State, "decay": Decay, "input": Input, "readout": Readout, "step": Step, "rotary": Rotary,
    }
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_identifier(self.name, "program name")
        check_choice(self.layout, LAYOUTS, "layout")
        check_choice(self.mode, MODES, "mode")
        for attr, cls in self._COMPONENTS.items():
            value = getattr(self, attr)
            optional = attr in ("step", "rotary")
            _need(isinstance(value, cls) or (optional and value is None),
                  f"Program.{attr} must be a {cls.__name__}{' or None' if optional else ''}, got {type(value).__name__}")
        self._check_consistency()
        object.__setattr__(self, "_hash", hashlib.sha256(self.to_json().encode()).hexdigest()[:16])

    # -- semantic rules between components ------------------------------------------------
    def _check_consistency(self) -> None:
        st, dec, inp, rd = self.state, self.decay, self.input, self.readout
        needs_step = dec.kind in ("exp", "lti") and dec.discretization != "none" or inp.kind in ("euler", "trapezoid")
        _need(needs_step == (self.step is not None),
              "a Step (Δ) is needed exactly when the decay is exp/lti-discretized or the input is euler/trapezoid")
        if st.shape == "vector":
            _need(self.layout == "channel", "a vector state goes with the channel layout (B, D, L)")
            _need(dec.param in ("element", "state", "channel"), f"decay param {dec.param!r} needs a matrix state")
            _need(dec.kind != "log_input", "decay kind 'log_input' needs a matrix state (head layout)")
            _need(inp.kind not in ("trapezoid",), "trapezoid input needs a matrix state (Mamba-3)")
            if rd.kind == "state":
                _need(inp.kind == "direct", "readout 'state' (y = h) needs a state of size 1 (direct input)")
        else:
            _need(self.layout == "head", "a matrix state goes with the head layout (B, L, H, P)")
            _need(not st.complex, "complex matrix states are expressed with Rotary, not complex=True")
            _need(dec.kind in ("exp", "log_input"), "a matrix state needs decay kind 'exp' or 'log_input'")
            _need(dec.param in ("head", "state"), "a matrix state's decay varies per head or per key ('state')")
            _need(dec.kind != "exp" or dec.param == "head", "decay 'exp' on a matrix state is per head (A[h])")
            _need(inp.kind in ("euler", "trapezoid"), "a matrix state needs input kind 'euler' or 'trapezoid'")
            _need(rd.kind == "contract" and rd.c == "varying", "a matrix state needs a varying C readout")
        if dec.kind == "lti":
            _need(st.shape == "vector" and dec.param == "state", "LTI decay is per (channel, state) on a vector state")
            _need(inp.kind in ("discretized", "direct"), "LTI decay takes input kind 'discretized' (or 'direct')")
        if inp.kind == "discretized":
            _need(dec.kind == "lti", "input kind 'discretized' needs decay kind 'lti'")
        if dec.kind == "input":
            _need(inp.kind == "direct", "decay kind 'input' (a given) goes with input kind 'direct'")
        if inp.scale != "none":
            _need(dec.kind in ("input", "lti"), "input scales (1−a, sqrt(1−a²)) need a decay given or fixed")
        if rd.scale != 1.0:
            _need(st.complex, "readout scale 2 (conjugate pairs) needs a complex state")
        if self.rotary is not None:
            _need(dec.kind == "log_input" and inp.kind == "trapezoid", "Rotary belongs to Mamba-3 programs (trapezoid input)")
        if inp.kind == "trapezoid":
            _need(dec.kind == "log_input", "trapezoid input needs decay kind 'log_input' (adt = A·Δ given)")
        if st.complex:
            _need(dec.kind in ("exp", "lti", "input"), "complex states need decay kind exp, lti or input")

    # -- identity ----------------------------------------------------------------------
    @property
    def hash(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON: a stable cache key."""
        return self._hash

    @property
    def family(self) -> str:
        """A coarse name for documentation and tables (linear, lti, selective, ssd, mamba3, ...)."""
        if self.input.kind == "trapezoid":
            return "mamba3"
        if self.state.shape == "matrix":
            return "ssd" if self.decay.kind == "exp" else "gla"
        if self.decay.kind == "lti":
            return "lti"
        if self.decay.kind == "exp":
            return "selective"
        return "linear"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scancc_ir": IR_VERSION}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def to_json(self, indent: Optional[int] = None) -> str:
        """Canonical JSON (sorted keys); ``Program.from_json(p.to_json()) == p``."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=None if indent else (",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Program":
        if not isinstance(data, dict):
            raise IRValidationError(f"an IR program must be a JSON object, got {type(data).__name__}")
        version = data.get("scancc_ir")
        _need(version == IR_VERSION, f"unsupported IR version {version!r}; this scancc reads version {IR_VERSION}")
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = set(data) - known - {"scancc_ir"}
        _need(not unknown, f"unknown program fields: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name in known & set(data):
            value = data[name]
            comp = cls._COMPONENTS.get(name)
            if comp is not None and value is not None:
                _need(isinstance(value, dict), f"Program.{name} must be a JSON object, got {value!r}")
                comp_fields = {f.name for f in dataclasses.fields(comp)}
                extra = set(value) - comp_fields
                _need(not extra, f"unknown {comp.__name__} fields: {sorted(extra)}")
                if comp is Step and value.get("clamp") is not None:
                    value = {**value, "clamp": tuple(value["clamp"])}
                try:
                    value = comp(**value)
                except TypeError as exc:
                    raise IRValidationError(f"bad {comp.__name__}: {exc}") from None
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise IRValidationError(f"bad program: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "Program":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IRValidationError(f"IR program is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "Program":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_step(self) -> "Program":
        """The single-token decode form of this program (state updated in place)."""
        return self.replace(mode="step", name=self.name if self.name.endswith("_step") else f"{self.name}_step")

    # -- call signature ----------------------------------------------------------------
    def tensors(self) -> tuple[TensorSpec, ...]:
        """The program's inputs in canonical order, with symbolic shapes.

        Channel layout (Mamba-1): ``u (batch, dim, seqlen)``; head layout (Mamba-2/3):
        ``x (batch, seqlen, heads, headdim)``. In ``step`` mode the ``seqlen`` axis is absent.
        """
        specs = self._channel_tensors() if self.layout == "channel" else self._head_tensors()
        if self.mode == "step":
            specs = [dataclasses.replace(s, dims=tuple(d for d in s.dims if d != "seqlen")) for s in specs]
        return tuple(specs)

    def _channel_tensors(self) -> list[TensorSpec]:
        seq = ("batch", "dim", "seqlen")
        cplx = "complex" if self.state.complex else "float"
        dec, inp, rd = self.decay, self.input, self.readout
        specs: list[TensorSpec] = []
        if dec.kind == "input":
            specs.append(TensorSpec("a", seq, cplx, doc="decay a_t"))
        x_name = "x" if dec.kind == "input" else "u"
        specs.append(TensorSpec(x_name, seq, doc="input"))
        if self.step is not None:
            specs.append(TensorSpec("delta", seq if dec.kind != "lti" else ("dim",), doc="step size Δ (pre-bias)"))
        if dec.kind == "exp":
            shape = {"state": ("dim", "dstate"), "channel": ("dim",)}[dec.param]
            specs.append(TensorSpec("A", shape, cplx, doc="continuous decay; a = exp(Δ·A)"))
        elif dec.kind == "lti":
            specs.append(TensorSpec("A", ("dim", "dstate"), cplx, doc="λ (continuous) or Ā (discretization 'none')"))
        for name, source in (("B", inp.b), ("C", rd.c)):
            if source == "varying":
                specs.append(TensorSpec(name, ("batch", "groups", "dstate", "seqlen"), cplx))
            elif source == "fixed":
                specs.append(TensorSpec(name, ("dim", "dstate"), cplx))
        if rd.skip:
            specs.append(TensorSpec("D", ("dim",), optional=True, doc="skip connection"))
        if rd.gate != "none":
            specs.append(TensorSpec("z", seq, optional=True, doc="gate: out = y · silu(z)"))
        if self.step is not None and self.step.bias:
            specs.append(TensorSpec("delta_bias", ("dim",), optional=True))
        return specs

    def _head_tensors(self) -> list[TensorSpec]:
        seq = ("batch", "seqlen", "heads")
        rank = ("rank",) if self.input.rank > 1 else ()
        specs = [TensorSpec("x", (*seq, "headdim"), doc="input (values)"),
                 TensorSpec("dt", seq, doc="step size Δ (pre-bias)")]
        if self.decay.kind == "exp":
            specs.append(TensorSpec("A", ("heads",), doc="a = exp(Δ·A)"))
        else:
            dims = seq if self.decay.param == "head" else (*seq, "dstate")
            specs.append(TensorSpec("adt", dims, doc="log-decay A·Δ"))
        if self.input.kind == "trapezoid":
            specs.append(TensorSpec("trap", seq, doc="λ = sigmoid(trap)"))
        specs.append(TensorSpec("B", ("batch", "seqlen", *rank, "groups", "dstate"), doc="keys"))
        specs.append(TensorSpec("C", ("batch", "seqlen", *rank, "groups", "dstate"), doc="queries"))
        if self.rotary is not None:
            if self.rotary.bias:
                specs.append(TensorSpec("B_bias", ("heads", *rank, "dstate"), optional=True))
                specs.append(TensorSpec("C_bias", ("heads", *rank, "dstate"), optional=True))
            specs.append(TensorSpec("angles", (*seq, "pairs"), doc="rotary angle inputs"))
        if self.input.rank > 1:
            for w in ("W_x", "W_z", "W_o"):
                specs.append(TensorSpec(w, ("heads", "rank", "headdim")))
        if self.readout.skip:
            specs.append(TensorSpec("D", ("heads",), optional=True, doc="skip (or (heads, headdim))"))
        if self.readout.gate != "none":
            specs.append(TensorSpec("z", (*seq, "headdim"), optional=True))
        if self.step is not None and self.step.bias:
            specs.append(TensorSpec("dt_bias", ("heads",), optional=True))
        return specs

    def state_dims(self) -> tuple[str, ...]:
        """Symbolic shape of the state ``h`` (initial/final state tensors)."""
        if self.state.shape == "vector":
            return ("batch", "dim", "dstate")
        return ("batch", "heads", "headdim", "dstate")

    # -- display ---------------------------------------------------------------------
    def describe(self) -> str:
        """A readable, multi-line statement of the recurrence."""
        from .describe import describe

        return describe(self)

    def __repr__(self) -> str:
        return self.describe()
