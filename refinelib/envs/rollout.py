"""Play one episode with any policy and keep the transcript; survey the suites with the oracle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from refinelib.envs.base import Reset, Step, TextEnv

Policy = Callable[[TextEnv], str | None]  # sees the env, returns the next action (None = give up)


def oracle_policy(env: TextEnv) -> str | None:
    """The environment's expert."""
    return env.oracle_action()


@dataclass
class Transcript:
    """The record of one episode: the start, then (action, step) pairs."""

    family: str
    task: str
    seed: int
    version: str
    start: Reset
    turns: list[tuple[str, Step]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.turns) and self.turns[-1][1].success

    @property
    def progress(self) -> float:
        return self.turns[-1][1].progress if self.turns else 0.0

    @property
    def invalid_steps(self) -> int:
        return sum(not step.valid for _, step in self.turns)

    def render(self, width: int = 0) -> str:
        """The episode as text: goal, observations and actions (long lines cut to ``width``)."""

        def cut(text: str) -> str:
            return text if not width or len(text) <= width else text[: width - 1] + "…"

        lines = [f"Goal: {self.start.goal}", f"Observation: {cut(self.start.observation)}"]
        for action, step in self.turns:
            flag = "" if step.valid else "  [invalid]"
            lines += [f"> {action}{flag}", cut(step.observation)]
        return "\n".join(lines)


def play(env: TextEnv, seed: int, policy: Policy = oracle_policy, max_steps: int = 100) -> Transcript:
    """Reset ``env`` with ``seed`` and let ``policy`` act until done, it gives up, or ``max_steps``."""
    start = env.reset(seed)
    record = Transcript(env.family, env.task, seed, env.version, start)
    while not env.done and len(record.turns) < max_steps:
        action = policy(env)
        if action is None:
            break
        record.turns.append((action, env.step(action)))
    return record


def oracle_survey(suites, max_instances: int | None = None, max_steps: int = 200, progress_bar: bool = True):
    """Play the oracle on every instance of ``suites``; return a tidy table and one transcript per suite.

    Args:
        suites: :class:`~refinelib.envs.registry.Suite` objects.
        max_instances: play at most this many instances per suite (None: all).
        max_steps: step cap per episode.
        progress_bar: show a tqdm bar.

    Returns:
        (DataFrame with one row per episode, {suite name: first Transcript}).
    """
    import time

    import pandas as pd
    from tqdm import tqdm  # plain text bars: no widget dependency in notebooks

    from refinelib.envs.registry import make_instance

    jobs = [(s, inst) for s in suites for inst in s.instances[:max_instances]]
    rows, transcripts, envs = [], {}, {}
    for s, inst in tqdm(jobs, desc="oracle episodes", disable=not progress_bar):
        key = (inst.family, inst.task, inst.options)
        if key not in envs:  # one env per task: backends (a JVM, a game) are reused across seeds
            envs[key] = make_instance(inst)
        env = envs[key]
        t0 = time.perf_counter()
        record = play(env, inst.seed, max_steps=max_steps)
        rows.append({"suite": s.name, "family": s.family, "split": s.split, "instance": inst.id,
                     "task": inst.task, "steps": len(record.turns), "success": record.success,
                     "progress": record.progress, "seconds": time.perf_counter() - t0})
        transcripts.setdefault(s.name, record)
    for env in envs.values():
        env.close()
    return pd.DataFrame(rows), transcripts


def suite_table(suites):
    """One row per suite: name, family, held-in / held-out split, version, its sizes at both scales, its
    number of task types and its description."""
    import pandas as pd

    from refinelib.envs.registry import suite

    return pd.DataFrame([
        {"suite": s.name, "family": s.family, "split": s.split, "version": s.version,
         "small": len(suite(s.name, "small")), "agentboard": len(suite(s.name, "agentboard")),
         "tasks": len({i.task for i in s.instances}), "description": s.description}
        for s in suites
    ])


def oracle_summary(episodes):
    """Per suite of an :func:`oracle_survey` table: episodes, success and progress rate, mean and longest
    episode, seconds per episode (rounded to 3 places)."""
    return (episodes.groupby(["suite", "split"], sort=False)
            .agg(episodes=("instance", "size"), success_rate=("success", "mean"),
                 progress_rate=("progress", "mean"), mean_steps=("steps", "mean"),
                 max_steps=("steps", "max"), seconds_per_episode=("seconds", "mean"))
            .round(3).reset_index())
