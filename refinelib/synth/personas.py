"""Personas that seed environment scripts (method.md §3): one persona, one script.

The paper samples Persona Hub (``proj-persona/PersonaHub``, ``persona.jsonl``), which cannot be downloaded
here. :func:`generate` is an offline stand-in: one-sentence personas in Persona Hub's style built from the
word lists in ``refinelib/synth/personas.yaml`` (occupation × activity × workplace × interest, about 13,000
distinct sentences). :func:`load_persona_hub` reads a local copy of the real file.

>>> [p.text for p in generate(2, seed=0)] == [p.text for p in generate(5, seed=0)[:2]]
True
>>> generate(1)[0].text.startswith(("A ", "An "))
True
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from refinelib import jsonl

# "persona" in persona.jsonl; "input persona" in Persona Hub's other files
HUB_FIELDS = ("persona", "input persona")


@dataclass(frozen=True)
class Persona:
    """One persona: a stable id (a hash of the text), the sentence, and where it came from."""

    id: str
    text: str
    source: Literal["generated", "personahub"]


def _make(text: str, source: str) -> Persona:
    prefix = "gen" if source == "generated" else "ph"
    return Persona(f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}", text, source)


@functools.cache
def word_lists() -> dict:
    """The packaged word lists (``refinelib/synth/personas.yaml``): version, occupations, interests."""
    return yaml.safe_load(resources.files("refinelib.synth").joinpath("personas.yaml").read_text("utf-8"))


@functools.cache
def _pool() -> tuple[str, ...]:
    """Every generated sentence, in the word lists' order (seeded orders permute this tuple)."""
    lists = word_lists()
    sentences = []
    for job in lists["occupations"]:
        title = job["title"]
        article = "An" if title[0].lower() in "aeiou" else "A"
        for does, at, interest in itertools.product(job["does"], job["at"], lists["interests"]):
            sentences.append(f"{article} {title} who {does} {at} and {interest}")
    return tuple(dict.fromkeys(sentences))  # distinct, order kept


def pool_size() -> int:
    """How many distinct personas :func:`generate` can return."""
    return len(_pool())


def generate(n: int, seed: int = 0) -> list[Persona]:
    """``n`` distinct generated personas in a seeded order.

    The order is a seeded permutation of the whole pool, so ``generate(k, s)`` is a prefix of
    ``generate(n, s)`` for ``k <= n`` (growing a run keeps its first personas).

    Raises:
        ValueError: when ``n`` is negative or larger than the pool (the message gives the pool size).
    """
    pool = _pool()
    if not 0 <= n <= len(pool):
        raise ValueError(f"personas.generate: n={n} is outside 0..{len(pool)} (the generated pool has "
                         f"{len(pool)} distinct personas; use load_persona_hub for more)")
    order = list(range(len(pool)))
    random.Random(f"personas-{seed}").shuffle(order)
    return [_make(pool[i], "generated") for i in order[:n]]


def sample(personas: Sequence[Persona], n: int, seed: int = 0) -> list[Persona]:
    """``n`` personas drawn without replacement (the paper's sampling) in a seeded order."""
    if not 0 <= n <= len(personas):
        raise ValueError(f"personas.sample: n={n} is outside 0..{len(personas)} (the personas given)")
    return random.Random(f"sample-{seed}").sample(list(personas), n)


def load_persona_hub(path: str | Path) -> list[Persona]:
    """Read Persona Hub's ``persona.jsonl`` (one ``{"persona": ...}`` object a line) in file order.

    Blank lines are skipped; ``"input persona"`` is accepted in place of ``"persona"``; repeated personas
    are dropped (first kept) with a warning giving the count.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming ``file:line`` and the field, for a line that is not a JSON object with a
            non-empty string persona; naming the file when it holds no persona at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Persona Hub file not found: {path}")
    found: dict[str, Persona] = {}
    duplicates = 0
    for number, obj in jsonl.numbered(path):
        field = next((f for f in HUB_FIELDS if isinstance(obj, dict) and f in obj), None)
        text = obj[field].strip() if field and isinstance(obj[field], str) else ""
        if not text:
            what = f"field {field!r} must be a non-empty string" if field else (
                f"needs a non-empty string field {HUB_FIELDS[0]!r} (or {HUB_FIELDS[1]!r})")
            raise ValueError(f"{path}:{number}: {what}")
        if text in found:
            duplicates += 1
        else:
            found[text] = _make(text, "personahub")
    if not found:  # an empty pool would fail later, far from its cause (candidate i takes persona i % 0)
        raise ValueError(f"{path}: no personas (the file is empty or blank); Persona Hub's persona.jsonl has "
                         f"one {{\"{HUB_FIELDS[0]}\": ...}} object a line")
    if duplicates:
        warnings.warn(f"{path}: dropped {duplicates} duplicate persona(s); {len(found)} distinct remain",
                      stacklevel=2)
    return list(found.values())
