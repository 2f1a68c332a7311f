"""Corrupted copies of a trajectory, each a typical LLM slip, to show every rule of the verifier firing.

::

    from refinelib.synth import corrupt
    copies = corrupt.corruptions(sample.trajectory)     # {"as generated": ..., "truncated JSON": ..., ...}
    corrupt.verdict_table(sample.script, copies)        # one row per copy: ok, reason, detail
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from refinelib.schema import FLAGS
from refinelib.synth.verify import verify


def _flagged(turn: Mapping) -> bool:
    """A DM turn that flags the Player's action (an erroneous turn's feedback)."""
    return turn["role"] == "DM" and any(turn[f] for f in FLAGS)


def _renumber(turns: Sequence[Mapping]) -> list[dict]:
    return [{**t, "turn": i} for i, t in enumerate(turns)]


def corruptions(trajectory: Sequence[Mapping]) -> dict[str, Any]:
    """The trajectory as generated, then one corrupted copy per verifier rule: truncated JSON, a DM turn
    without a key, a DM flag that contradicts the script's regex, every error and its feedback removed
    (fewer than two error episodes), and a trajectory that ends on an error."""
    good = list(trajectory)
    player = next(i for i, t in enumerate(good) if t["role"] == "Player")
    return {
        "as generated": good,
        "truncated JSON": str(good)[:200],
        "a DM turn loses a key": [{k: v for k, v in t.items() if k != "logic_error"} if i == 2 else t
                                  for i, t in enumerate(good)],
        "DM flag contradicts the regex": [{**t, "parameter_error": not t["parameter_error"]}
                                          if i == player + 1 else t for i, t in enumerate(good)],
        "errors and their feedback removed": _renumber(
            [t for i, t in enumerate(good)
             if not _flagged(t) and not (i + 1 < len(good) and _flagged(good[i + 1]))]),
        "ends on an error": good[:-1] + [{**good[-1], "logic_error": True}],
    }


def verdict_table(script: Mapping, trajectories: Mapping[str, Any]) -> pd.DataFrame:
    """One row per named trajectory: the verifier's ``ok``, ``reason`` and ``detail`` for it."""
    return pd.DataFrame([{"sample": name, **{k: v for k, v in verify(script, trajectory).to_dict().items()
                                             if k in ("ok", "reason", "detail")}}
                         for name, trajectory in trajectories.items()])
