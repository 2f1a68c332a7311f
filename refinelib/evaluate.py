"""Evaluation: play a policy on suites of environments, many episodes in lock-step, resumably.

::

    from refinelib import evaluate, policies
    policy = policies.TransformersPolicy.load()                # SmolLM2-135M-Instruct, greedy
    episodes = evaluate.run(policy, ["pddl", "babyai"], log_path="artifacts/eval/dev/episodes.jsonl")

Up to ``batch_size`` episodes run at once: at every step the prompts of all running episodes go to the
policy in one batch call, and a finished episode's slot is refilled from the queue. Each finished episode
is appended to the :class:`~refinelib.episodes.EpisodeLog` at once, keyed by (policy, suite, instance,
seed, perturbation, sample); a re-run of the same command skips the keys already logged, so a killed run
resumes where it stopped and loses at most the episodes that were in flight.

``seed`` is the *run* seed (what the random policy and sampled decoding draw from), not the
environment seed, which is part of the instance (``Instance.seed``, in its id). Greedy policies give the
same episodes for every run seed. ``samples`` > 1 plays each instance N times (Best-of-N; sample 0 ... N-1).
``perturbations`` names action-template rules of :mod:`refinelib.perturb` (``"R1"`` ...); each episode
then runs on a :class:`~refinelib.perturb.PerturbedEnv` and is logged under the rule's versioned id.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from refinelib.agent import MAX_STEPS, EpisodeState, prompt_version
from refinelib.envs import registry
from refinelib.envs.base import Instance
from refinelib.episodes import Episode, EpisodeLog
from refinelib.perturb import PerturbedEnv, get_rule
from refinelib.policies import Policy

ORIGINAL = "none"  # the perturbation key of the original action templates


@dataclass(frozen=True)
class Job:
    """One episode to play."""

    suite: registry.Suite
    instance: Instance
    seed: int
    sample: int
    perturbation: str = ORIGINAL  # a versioned rule id ("perturb-v1:R1") or "none"

    def key(self, policy: str) -> tuple:
        return (policy, self.suite.name, self.instance.id, self.seed, self.perturbation, self.sample)

    def make_env(self):
        env = registry.make_instance(self.instance)
        return env if self.perturbation == ORIGINAL else PerturbedEnv(env, self.perturbation)


def request_seed(job: Job, step: int) -> int:
    """The seed of one policy call: fixed by (run seed, sample, instance, step), not by the batch."""
    return zlib.crc32(f"{job.seed}/{job.sample}/{job.instance.id}/{step}".encode())


def jobs_for(suites: Sequence[str | registry.Suite], scale: str = "small", seeds: Sequence[int] = (0,),
             samples: int = 1, max_instances: int | None = None,
             perturbations: Sequence[str] = (ORIGINAL,)) -> list[Job]:
    """Every (suite, perturbation, instance, seed, sample) to play, in a fixed order.

    A perturbation a suite's family does not define raises ValueError (naming the family's rules).
    """
    resolved = [s if isinstance(s, registry.Suite) else registry.suite(s, scale) for s in suites]
    return [Job(s, inst, seed, sample, p if p == ORIGINAL else get_rule(s.family, p).id)
            for s in resolved for p in perturbations for inst in s.instances[:max_instances]
            for seed in seeds for sample in range(samples)]


def _episode(policy: Policy, job: Job, state: EpisodeState, seconds: float, max_steps: int) -> Episode:
    env = state.env
    return Episode(policy=policy.name, suite=job.suite.name, instance=job.instance.id, seed=job.seed,
                   family=env.family, task=env.task, split=job.suite.split, env_version=env.version,
                   goal=state.goal, first_observation=state.first_observation, perturbation=job.perturbation,
                   sample=job.sample, turns=state.turns, success=state.success, progress=state.progress,
                   meta={"policy": policy.config(), "prompt_version": prompt_version(env.family),
                         "suite_version": job.suite.version, "max_steps": max_steps,
                         "window_dropped_pairs": state.dropped, "seconds": round(seconds, 3)})


def run(policy: Policy, suites: Sequence[str | registry.Suite], scale: str = "small",
        seeds: Sequence[int] = (0,), samples: int = 1, max_steps: int = MAX_STEPS, log_path=None,
        batch_size: int = 16,
        max_instances: int | None = None, progress_bar: bool = True,
        perturbations: Sequence[str] = (ORIGINAL,)) -> list[Episode]:
    """Play ``policy`` on every instance of ``suites`` and log the episodes; resume from ``log_path``.

    Args:
        policy: any :class:`~refinelib.policies.Policy`.
        suites: suite names (see ``registry.SUITES``) or :class:`~refinelib.envs.registry.Suite` objects.
        scale: ``"small"`` (CPU / CI) or ``"agentboard"``, for suites given by name.
        seeds: run seeds (random policy, sampled decoding); one episode per instance and seed.
        samples: episodes per instance and seed (Best-of-N); sample indices 0 ... samples-1.
        max_steps: steps per episode (AgentBoard: 30); a format error spends a step.
        log_path: the episode log (JSONL); episodes already in it are skipped and returned. None: no log.
        batch_size: episodes in lock-step; all their prompts go to the policy in one call per step.
        max_instances: play only the first instances of each suite (smoke runs).
        progress_bar: show a tqdm bar over episodes.
        perturbations: ``"none"`` and/or rules of :mod:`refinelib.perturb` (e.g. ``("none", "R1")``).

    Returns:
        The episodes of every requested key, in job order (the logged ones read back from the log).
    """
    from tqdm import tqdm  # plain text bars: no widget dependency in notebooks

    jobs = jobs_for(suites, scale, seeds, samples, max_instances, perturbations)
    log = EpisodeLog(log_path) if log_path is not None else None
    logged = {e.key: e for e in log.read()} if log is not None else {}
    todo = [j for j in jobs if j.key(policy.name) not in logged]
    results: dict[tuple, Episode] = {}
    queue = list(reversed(todo))  # pop() from the end keeps job order
    active: list[tuple[Job, EpisodeState, float]] = []
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"episodes ({policy.name})",
               disable=not progress_bar)
    try:
        while queue or active:
            while queue and len(active) < batch_size:
                job = queue.pop()
                state = EpisodeState(job.make_env(), job.instance.seed, max_steps)
                active.append((job, state, time.perf_counter()))
            prompts = [state.prompt(policy.max_prompt_tokens, policy.count_tokens) for _, state, _ in active]
            outputs = policy.generate(prompts, [state.env for _, state, _ in active],
                                      [request_seed(job, len(state.turns)) for job, state, _ in active])
            still = []
            for (job, state, t0), output in zip(active, outputs, strict=True):
                state.advance(output)
                if not state.done:
                    still.append((job, state, t0))
                    continue
                episode = _episode(policy, job, state, time.perf_counter() - t0, max_steps)
                state.env.close()
                if log is not None:
                    log.append([episode])
                results[job.key(policy.name)] = episode
                bar.update(1)
            active = still
    finally:
        bar.close()
        for _, state, _ in active:  # interrupted: release backends; unfinished episodes are not logged
            state.env.close()
    return [results.get(j.key(policy.name)) or logged[j.key(policy.name)] for j in jobs]
