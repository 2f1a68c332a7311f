"""Grounded-teacher chat records for smoke runs and tests: the one small, seeded stand-in for chapter 02's
refinement data when a chapter (or a test) must not depend on a synthesis run.

>>> records = grounded_records(2)
>>> [r["id"] for r in records], grounded_records(2) == records
(['grounded-0', 'grounded-1'], True)
"""

from __future__ import annotations

from refinelib.synth import conversation, teacher, themes


def grounded_records(n: int, seed: int = 0, error_rate: float = 0.5) -> list[dict]:
    """``n`` refinement records in the released schema, ids ``grounded-0`` ... : record ``i`` is the grounded
    teacher's trajectory (mistakes at ``error_rate``, flags true by construction) through the script
    :func:`refinelib.synth.themes.generate_script` makes from seed ``seed + i``, seeded the same way."""
    records = []
    for i in range(n):
        script = themes.generate_script(seed + i)
        trajectory = teacher.grounded_trajectory(script, seed + i, error_rate=error_rate)
        records.append(conversation.to_conversation(script, trajectory, f"grounded-{i}"))
    return records
