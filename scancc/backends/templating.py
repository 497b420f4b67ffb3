"""The Jinja environment every backend renders its kernels with.

Templates live in ``scancc/templates/<backend>/``. Undefined variables are errors
(a typo in a template must not silently print nothing), and block tags do not leave
blank lines behind, so generated source reads like hand-written code.
"""

from __future__ import annotations

import functools
import re
import textwrap
from typing import Any

import jinja2

_TEMPLATE_PACKAGE = "scancc"
_TEMPLATE_DIR = "templates"


def block(text: str, spaces: int = 0) -> str:
    """Filter: indent a rendered macro by ``spaces`` and drop its trailing newlines, so
    ``{{ macro() | block(8) }}`` on a line of its own expands to exactly its lines."""
    return textwrap.indent(str(text).rstrip("\n"), " " * spaces)


@functools.lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """The shared environment (templates are loaded from the installed package)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(_TEMPLATE_PACKAGE, _TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["block"] = block
    return env


_BLANK_RUNS = re.compile(r"\n{4,}")


def render(template: str, **context: Any) -> str:
    """Render ``template`` (a path under ``scancc/templates``) with ``context``.

    Runs of more than two blank lines left by skipped branches are squeezed to two.
    """
    source = environment().get_template(template).render(**context)
    return _BLANK_RUNS.sub("\n\n\n", source)
