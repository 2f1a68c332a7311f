"""Verification codes: the regular expressions a script gives each action template, compiled with the
``regex`` package and matched under a time limit, because they are written by an LLM and one catastrophic
pattern would otherwise stall a whole batch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    pass


# Seconds one verification code may take to match one action. Codes are written by an LLM, and one
# catastrophic pattern such as ``^(a|a)*$`` would otherwise stall a whole batch.
REGEX_TIMEOUT = 0.5


class RegexTimeout(TimeoutError):
    """A verification code did not finish matching within :data:`REGEX_TIMEOUT` seconds."""


@functools.lru_cache(maxsize=4096)  # regex.compile's own cache lookup costs ~10x re's; scripts repeat codes
def compile_code(pattern: str) -> regex.Pattern:
    """Compile a verification code (``re`` syntax) with the ``regex`` package, whose matches take a timeout.

    Raises:
        regex.error: the pattern does not compile.
    """
    return regex.compile(pattern)


def full_match(code: regex.Pattern, text: str):
    """``code.fullmatch(text)`` within :data:`REGEX_TIMEOUT` seconds; :class:`RegexTimeout` past it.

    >>> full_match(compile_code(r"cat (.+)"), "cat notes.txt").group(1)
    'notes.txt'
    >>> try:  # catastrophic backtracking: stopped at the time limit
    ...     full_match(compile_code(r"^(a|a)*$"), "a" * 40 + "!")
    ... except RegexTimeout as error:
    ...     print(str(error)[:50])
    verification code '^(a|a)*$' took over 0.5 s to ma
    """
    try:
        return code.fullmatch(text, timeout=REGEX_TIMEOUT)
    except TimeoutError:
        raise RegexTimeout(f"verification code {code.pattern!r} took over {REGEX_TIMEOUT} s to match "
                           f"{text[:80]!r}") from None
