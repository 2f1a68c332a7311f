"""Prompt templates and their versions, shared by synthesis and evaluation.

Every prompt the project sends is a Jinja file in this folder (distilabel's convention: the text lives
next to, not inside, the code). Each file's header carries ``version: N``; a changed prompt bumps it, and
the version enters the run identities of everything rendered with it (synthesis requests, episode logs),
so a changed prompt never silently reuses a stale result.

>>> template_version("agent_base")
'1'
"""

from __future__ import annotations

import functools
import re

_VERSION = re.compile(r"version:\s*([\w.-]+)")


@functools.cache
def _jinja():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("refinelib", "prompts"),
                              undefined=jinja2.StrictUndefined, autoescape=False)


def exists(name: str) -> bool:
    """Whether ``<name>.jinja`` is one of the templates."""
    return f"{name}.jinja" in _jinja().list_templates()


def template_version(name: str) -> str:
    """The ``version:`` in the header of ``<name>.jinja`` ("?" when it has none)."""
    env = _jinja()
    match = _VERSION.search(env.loader.get_source(env, f"{name}.jinja")[0])
    return match.group(1) if match else "?"


def versions(*names: str) -> str:
    """E.g. ``"synth_script-1+synth_thoughts-1"``: the templates' version headers (a cache-key part)."""
    return "+".join(f"{name}-{template_version(name)}" for name in names)


def render(name: str, **variables) -> str:
    """Render ``<name>.jinja`` (strict: a missing variable is an error), stripped."""
    return _jinja().get_template(f"{name}.jinja").render(**variables).strip()
