"""Episode logs: the record of one agent episode, and an append-only JSONL file of them.

A log is keyed by (policy, suite, instance, seed, perturbation, sample): re-running the same
evaluation skips the keys already in the file, so a killed run resumes without losing or
duplicating an episode. Each line is written whole and flushed; a line cut by a kill is ignored
(and counted) when the log is read back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refinelib import jsonl
from refinelib.schema import episode_key


@dataclass
class AgentTurn:
    """One agent step: what the model wrote, what was parsed from it, and what the environment said."""

    raw: str  # the model's whole output for this step
    thought: str  # text of the last "Thought:" block ("" when absent)
    action: str | None  # parsed action; None when the output had no parsable "Action:" (format error)
    observation: str  # the environment's answer (or the format-error message fed back)
    valid: bool  # the environment accepted the action (False for format errors)
    progress: float  # progress rate after this step (max over the episode so far)
    done: bool = False
    success: bool = False
    format_error: bool = False


@dataclass
class Episode:
    """One episode of a policy on one instance, with everything needed to score and replay it."""

    policy: str
    suite: str
    instance: str  # Instance.id
    seed: int
    family: str
    task: str
    split: str  # held_in | held_out
    env_version: str
    goal: str
    first_observation: str
    perturbation: str = "none"
    sample: int = 0  # index among N sampled episodes (Best-of-N); 0 for greedy
    turns: list[AgentTurn] = field(default_factory=list)
    success: bool = False
    progress: float = 0.0
    meta: dict = field(default_factory=dict)  # free-form: decoding settings, timing, model revision

    @property
    def key(self) -> tuple:
        return episode_key(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> Episode:
        data = dict(data)
        data["turns"] = [AgentTurn(**t) for t in data.get("turns", [])]
        return cls(**data)


class EpisodeLog:
    """An append-only JSONL file of episodes; ``done()`` tells which keys need no re-run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped_lines = 0  # lines that could not be read back (a write cut by a kill)

    def read(self) -> list[Episode]:
        """Every complete episode in the file, in the order written (later duplicates win)."""
        objects, self.skipped_lines = jsonl.read(self.path)
        by_key: dict[tuple, Episode] = {}
        for obj in objects:
            try:
                episode = Episode.from_dict(obj)
            except TypeError:
                self.skipped_lines += 1
                continue
            by_key[episode.key] = episode
        return list(by_key.values())

    def done(self) -> set[tuple]:
        """Keys of the episodes already logged."""
        return {e.key for e in self.read()}

    def append(self, episodes: Iterable[Episode]) -> None:
        """Write episodes, each as one flushed line (a kill loses at most the line being written)."""
        jsonl.append(self.path, (episode.to_json() for episode in episodes))
