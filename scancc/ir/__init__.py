"""The scancc IR: frozen, validated descriptions of first-order linear recurrences."""

from .names import IRValidationError, check_identifier
from .presets import PRESETS, gla, hgrn, linear, lru, lti, mamba3, rglru, selective, ssd
from .program import Decay, Input, Program, Readout, Rotary, State, Step, TensorSpec
from .schedule import ALGORITHMS, Schedule

__all__ = [
    "ALGORITHMS", "Decay", "IRValidationError", "Input", "PRESETS", "Program", "Readout", "Rotary",
    "Schedule", "State", "Step", "TensorSpec", "check_identifier", "gla", "hgrn", "linear", "lru", "lti",
    "mamba3", "rglru", "selective", "ssd",
]
