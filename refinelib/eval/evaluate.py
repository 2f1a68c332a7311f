"""Evaluation: play a policy on suites of environments, many episodes in lock-step, resumably.

::

    from refinelib.eval import evaluate, policies
    policy = policies.TransformersPolicy.load()                # SmolLM2-135M-Instruct, greedy
    episodes = evaluate.run(policy, ["pddl", "babyai"], log_path="artifacts/eval/dev/episodes.jsonl")

Up to ``batch_size`` episodes run at once: at every step the prompts of all running episodes go to the
policy in one batch call, and a finished episode's slot is refilled from the queue. Each finished episode
is appended to the :class:`~refinelib.eval.episodes.EpisodeLog` at once, keyed by (policy, suite, instance,
seed, perturbation, sample); a re-run of the same command skips the keys already logged, so a killed run
resumes where it stopped and loses at most the episodes that were in flight.

``seed`` is the *run* seed (what the random policy and sampled decoding draw from), not the
environment seed, which is part of the instance (``Instance.seed``, in its id). Greedy policies give the
same episodes for every run seed. ``samples`` > 1 plays each instance N times (Best-of-N; sample 0 ... N-1).
``perturbations`` names action-template rules of :mod:`refinelib.envs.perturb` (``"R1"`` ...); each episode
then runs on a :class:`~refinelib.envs.perturbed.PerturbedEnv` and is logged under the rule's versioned id.

A log is re-used only by the run that made it: its **identity** (the policy's settings, what the caller
says about the model in ``settings``, the step limit, the agent loop's code version, and for every suite
played its version, the agent prompt version and the code version of its environment family) is kept
next to it in ``<log>.settings.json``. A log made with another identity is set aside as
``<log>.stale-<k>.jsonl`` with a warning naming what changed, and the episodes are played again
(:func:`refinelib.runs.check_identity`).
One process writes a log folder at a time (:class:`refinelib.runs.RunLock`).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from refinelib import runs
from refinelib.envs import registry
from refinelib.envs.base import Instance
from refinelib.envs.perturb import get_rule
from refinelib.envs.perturbed import PerturbedEnv
from refinelib.eval.agent import MAX_STEPS, EpisodeState, prompt_version
from refinelib.eval.episodes import Episode, EpisodeLog
from refinelib.eval.policies import Policy
from refinelib.schema import episode_key

ORIGINAL = "none"  # the perturbation key of the original action templates
IDENTITY_SUFFIX = ".settings.json"  # <log>.settings.json: the identity of the run that made the log
# Marks a record written by check_log: a sidecar without it (an older refinelib's) recorded no suite,
# prompt or environment versions, so its log cannot be trusted and is set aside.
IDENTITY_SCHEMA = ("identity_schema", 2)


@dataclass(frozen=True)
class Job:
    """One episode to play."""

    suite: registry.Suite
    instance: Instance
    seed: int
    sample: int
    perturbation: str = ORIGINAL  # a versioned rule id ("perturb-v1:R1") or "none"

    def key(self, policy: str) -> tuple:
        """The episode key (:func:`refinelib.schema.episode_key`) of this game played by ``policy``."""
        return episode_key({"policy": policy, "suite": self.suite.name, "instance": self.instance.id,
                            "seed": self.seed, "perturbation": self.perturbation, "sample": self.sample})

    def make_env(self):
        env = registry.make_instance(self.instance)
        return env if self.perturbation == ORIGINAL else PerturbedEnv(env, self.perturbation)


def request_seed(job: Job, step: int) -> int:
    """The seed of one policy call: fixed by (run seed, sample, instance, step), not by the batch."""
    return zlib.crc32(f"{job.seed}/{job.sample}/{job.instance.id}/{step}".encode())


def check_arguments(batch_size: int = 1, max_steps: int = 1, samples: int = 1,
                    max_instances: int | None = None) -> None:
    """Raise one ValueError naming the first argument out of range (before any suite is built, any
    model loaded or any log touched): ``batch_size``, ``max_steps`` and ``samples`` >= 1, ``max_instances``
    None or >= 0."""
    for name, value, low in (("batch_size", batch_size, 1), ("max_steps", max_steps, 1),
                             ("samples", samples, 1), ("max_instances", max_instances, 0)):
        if name == "max_instances" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            allowed = f"an integer >= {low}" + (" or None" if name == "max_instances" else "")
            raise ValueError(f"evaluate: {name} must be {allowed}, got {value!r}")


def resolve(suites: Sequence[str | registry.Suite], scale: str = "small") -> list[registry.Suite]:
    """:class:`~refinelib.envs.registry.Suite` objects for suite names (Suite objects pass through)."""
    return [s if isinstance(s, registry.Suite) else registry.suite(s, scale) for s in suites]


def select_instances(suite: registry.Suite, max_instances: int | None = None) -> tuple[Instance, ...]:
    """The instances of ``suite`` that a run limited to ``max_instances`` plays (None: all, in suite order).

    A suite lists its instances grouped by task type (BabyAI: by level), so its first N would be one or a
    few tasks: at ``scale="agentboard"`` the first 20 household held-in instances are all
    ``pick_and_place_simple``, the first 20 PDDL problems all gripper, the first 20 BabyAI instances 5 of
    28 levels; a sample like that measures one task, not the suite. The selection therefore deals the
    instances round-robin over the suite's tasks (in the order the tasks first appear): the first
    instance of every task, then the second of every task, and so on, a task that has run out being
    skipped. The order is fixed by the suite alone, so the selection is deterministic and **prefix-stable**:
    ``max_instances=30`` plays the instances of ``max_instances=20`` and 10 more, and a resumed or enlarged
    run adds to its episode log instead of playing another set. Episodes are keyed by the instance's id
    (family, task, options and seed: :attr:`Instance.id`), never by its position, so a log written under an
    earlier selection keeps its meaning; it is only a different sample of the suite.
    """
    if max_instances is None:
        return suite.instances
    by_task: dict[str, list[Instance]] = {}
    for inst in suite.instances:
        by_task.setdefault(inst.task, []).append(inst)
    dealt = [group[k] for k in range(max(map(len, by_task.values()), default=0))
             for group in by_task.values() if k < len(group)]
    return tuple(dealt[:max_instances])


def jobs_for(suites: Sequence[str | registry.Suite], scale: str = "small", seeds: Sequence[int] = (0,),
             samples: int = 1, max_instances: int | None = None,
             perturbations: Sequence[str] = (ORIGINAL,)) -> list[Job]:
    """Every (suite, perturbation, instance, seed, sample) to play, in a fixed order; with
    ``max_instances``, a stratified, prefix-stable selection of each suite (:func:`select_instances`).

    A perturbation a suite's family does not define raises ValueError (naming the family's rules).
    """
    check_arguments(samples=samples, max_instances=max_instances)
    return [Job(s, inst, seed, sample, p if p == ORIGINAL else get_rule(s.family, p).id)
            for s in resolve(suites, scale) for p in perturbations
            for inst in select_instances(s, max_instances) for seed in seeds for sample in range(samples)]


# ----- the identity of an episode log ------------------------------------------------------------------
def identity_path(log_path: str | Path) -> Path:
    """Where the identity of the log ``log_path`` is kept: ``<log>.settings.json``."""
    return Path(log_path).with_suffix(IDENTITY_SUFFIX)


def environment_code(family: str) -> str:
    """:func:`refinelib.runs.code_version` of the code that makes ``family``'s episodes: the shared
    ``envs/base.py`` and ``envs/registry.py`` and the family's own files (``envs/<family>*``: its module,
    its generator, its PDDL domains)."""
    registry.family_module(family)  # an unknown family raises here, naming the known ones
    envs = Path(registry.__file__).parent
    own = sorted(p for p in envs.iterdir() if p.name.startswith(family))
    return runs.code_version(envs / "base.py", envs / "registry.py", *own)


def agent_code() -> str:
    """:func:`refinelib.runs.code_version` of the agent loop (``agent.py``: prompts, parsing, feedback,
    the history window), which shapes every episode of every family."""
    return runs.code_version("refinelib.eval.agent")


def log_identity(suites: Sequence[registry.Suite], max_steps: int, settings: Mapping | None = None) -> dict:
    """The identity of episodes of ``suites`` played with ``max_steps``: the caller's ``settings`` (what
    identifies the policy), the agent loop's code (:func:`agent_code`), then per suite ``suite:<name>``
    (its version, environment version included), and per family ``prompt:<family>``
    (:func:`refinelib.eval.agent.prompt_version`) and ``env_code:<family>`` (:func:`environment_code`)."""
    identity = {**(settings or {}), "max_steps": max_steps, "agent_code": agent_code()}
    for s in suites:
        identity[f"suite:{s.name}"] = s.version
    for family in sorted({s.family for s in suites}):
        identity[f"prompt:{family}"] = prompt_version(family)
        identity[f"env_code:{family}"] = environment_code(family)
    return identity


def check_log(log_path: str | Path, identity: Mapping) -> None:
    """Keep the log at ``log_path`` only if it was made with ``identity`` (the fields given; what earlier
    calls recorded about other suites is kept); otherwise set it aside with a warning naming the changed
    fields (see :func:`refinelib.runs.check_identity`). Call it holding the folder's :class:`RunLock`."""
    path, sidecar = Path(log_path), identity_path(log_path)
    key, schema = IDENTITY_SCHEMA
    try:
        legacy = key not in json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):  # no record, or an unreadable one (check_identity says so)
        legacy = False
    runs.check_identity(sidecar, {key: schema, **identity}, "set_aside", files=[path], partial=not legacy)


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
        perturbations: Sequence[str] = (ORIGINAL,), settings: Mapping | None = None) -> list[Episode]:
    """Play ``policy`` on every instance of ``suites`` and log the episodes; resume from ``log_path``.

    Args:
        policy: any :class:`~refinelib.eval.policies.Policy`.
        suites: suite names (see ``registry.SUITES``) or :class:`~refinelib.envs.registry.Suite` objects.
        scale: ``"small"`` (CPU / CI) or ``"agentboard"``, for suites given by name.
        seeds: run seeds (random policy, sampled decoding); one episode per instance and seed.
        samples: episodes per instance and seed (Best-of-N); sample indices 0 ... samples-1.
        max_steps: steps per episode (AgentBoard: 30); a format error spends a step.
        log_path: the episode log (JSONL); episodes already in it are skipped and returned. None: no log.
        batch_size: episodes in lock-step; all their prompts go to the policy in one call per step.
        max_instances: play at most this many instances of each suite, spread over its tasks
            (:func:`select_instances`: round-robin, prefix-stable).
        progress_bar: show a tqdm bar over episodes.
        perturbations: ``"none"`` and/or rules of :mod:`refinelib.envs.perturb` (e.g. ``("none", "R1")``).
        settings: what else identifies the policy (model folder, its training), recorded with the log
            next to ``policy.config()``; a log made with other values is set aside (module docstring).

    Returns:
        The episodes of every requested key, in job order (the logged ones read back from the log).

    Raises:
        ValueError: an argument out of range (:func:`check_arguments`), before anything is played.
        refinelib.runs.RunLockedError: another process is writing the log's folder.
    """
    check_arguments(batch_size, max_steps, samples, max_instances)
    resolved = resolve(suites, scale)
    jobs = jobs_for(resolved, scale, seeds, samples, max_instances, perturbations)
    if log_path is None:
        return _play(policy, jobs, max_steps, None, {}, batch_size, progress_bar)
    with runs.RunLock(Path(log_path).parent):
        identity = log_identity(resolved, max_steps, {"policy": policy.config(), **(settings or {})})
        check_log(log_path, identity)
        log = EpisodeLog(log_path)
        return _play(policy, jobs, max_steps, log, {e.key: e for e in log.read()}, batch_size, progress_bar)


def _play(policy: Policy, jobs: list[Job], max_steps: int, log: EpisodeLog | None, logged: dict,
          batch_size: int, progress_bar: bool) -> list[Episode]:
    from tqdm import tqdm  # plain text bars: no widget dependency in notebooks

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
