"""Validation of names that reach generated source code."""

from __future__ import annotations

import keyword
import re

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# Names that would shadow what generated kernels use themselves.
_RESERVED = frozenset({"tl", "triton", "torch", "math", "T", "tvm", "np", "self"})


class IRValidationError(ValueError):
    """An IR program or schedule is not well formed."""


def check_identifier(value: object, what: str) -> str:
    """Return ``value`` if it is a safe identifier for generated code, else raise.

    Safe means: a string of ASCII letters, digits and ``_`` (not starting with a
    digit, at most 64 characters), not a Python keyword and not a name the
    templates use themselves.
    """
    if not isinstance(value, str):
        raise IRValidationError(f"{what} must be a string, got {type(value).__name__}")
    if not _IDENTIFIER.match(value):
        raise IRValidationError(
            f"{what} must be an identifier of ASCII letters, digits and '_' "
            f"(at most 64 characters, not starting with a digit), got {value!r}"
        )
    if keyword.iskeyword(value) or value in _RESERVED:
        raise IRValidationError(f"{what} {value!r} is a reserved name")
    return value


def check_choice(value: object, choices: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the choices."""
    if value not in choices:
        raise IRValidationError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]
