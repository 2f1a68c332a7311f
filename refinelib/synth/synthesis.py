"""Refinement data synthesis (method.md §2-§7): many environments, trajectories that err and recover.

One *candidate* (an index 0, 1, 2, ...) becomes one :class:`Sample`: a script, a trajectory and the
verdicts of every attempt, accepted or not. Three teachers write candidates in the same Player/DM format
and go through the same verifier (:func:`refinelib.synth.verify.verify`):

* ``grounded`` (default, offline): :func:`refinelib.synth.themes.generate_script` makes an executable script,
  :func:`refinelib.synth.teacher.grounded_trajectory` walks its oracle plan with injected mistakes; the engine
  replays it (``goal_check``), so every DM flag is true by construction;
* ``openai``: the paper's method with any OpenAI-compatible endpoint (:mod:`refinelib.synth.llm`): persona ->
  script -> one generation playing DM and Player -> verification -> regeneration that keeps the verified
  prefix and says what was wrong (a restart when too few errors), up to a retry cap;
* ``openai-executable``: the bridge: the LLM writes a script in the engine's executable schema, accepted
  only if :class:`refinelib.synth.world.World` loads it and its planner solves it; trajectories are grounded.

Runs are resumable: every finished candidate is one line of ``samples.jsonl`` (append-only), candidates
are deterministic per index (seeded; LLM answers come from the cache on a re-run), and a re-run skips
the indices already judged, so a killed run continues to exactly the data an uninterrupted run makes.
Only verdicts about content are final: a candidate whose request failed at the endpoint (``llm_error``:
a 429 storm, a quota, a timeout) is *transient*; a re-run makes it again (its cached answers replay, the
failed request is asked again) and its new line replaces the old one. Transient failures are not
rejections: :func:`summary` reports them apart and leaves them out of the yield::

    run = synthesize(SynthesisConfig(n=200), "artifacts/synthesis/default/samples")
    records, meta = run.records()          # released-schema chat records + per-id metadata
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refinelib import jsonl, runs
from refinelib import prompts as prompts_
from refinelib.schema import erroneous_player_turns, flags_set
from refinelib.synth import conversation
from refinelib.synth.verify import REASONS, Verdict

TEACHERS = ("grounded", "openai", "openai-executable")
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.json"
SYSTEM = "You are a careful designer of text-based environments and interactions. You answer in JSON only."
# Verdict reasons of the synthesis stages (verify.REASONS has the verifier's own).
STAGE_REASONS = {
    "llm_error": "the endpoint failed after its retries (the request is not cached; a re-run tries again)",
    "truncated": "the answer was cut at max_tokens before it was complete (raise LLMConfig.max_tokens)",
    "engine_error": "the executable script does not load in the world engine",
    "engine_unsolvable": "the planner finds no plan for the executable script",
    "plan_too_short": "the plan has too few steps to hold the required error->refinement episodes",
}
REASON_TEXT = {**REASONS, **STAGE_REASONS}
# The prompt templates each teacher uses (their versions are part of a run's identity).
TEACHER_PROMPTS = {"grounded": (), "openai": ("synth_script", "synth_trajectory", "synth_continue"),
                   "openai-executable": ("synth_engine_script",)}
# The code a sample depends on (its hash is part of a run's identity).
CODE = ("refinelib.synth.teacher", "refinelib.synth.themes", "refinelib.synth.world",
        "refinelib.synth.verify")
# The LLM settings an answer depends on (timeouts, retries, concurrency and prices do not change it, so a
# re-run after an outage may raise the timeout without starting over).
LLM_IDENTITY = ("model", "base_url", "temperature", "top_p", "max_tokens", "extra")
# Identity fields that say which code and prompts made a run (not settings: a change sets old samples aside).
VERSION_FIELDS = ("prompts", "code")
# Verdicts about the endpoint, not the content: the candidate is made again by a re-run.
TRANSIENT_REASONS = frozenset({"llm_error"})
OUTAGE_AFTER = 4  # consecutive transient failures (at least one wave) that stop a run early


@dataclass
class SynthesisConfig:
    """What a synthesis run depends on (``n`` and ``max_candidates`` may grow between runs)."""

    teacher: str = field(default="grounded", metadata={
        "help": "who writes the trajectories: 'grounded' (the world engine, flags true by construction), "
                "'openai' (an LLM writes script and trajectory: the paper's pipeline) or 'openai-executable' "
                "(an LLM writes a script the engine plays)"})
    n: int = field(default=100, metadata={"help": "accepted trajectories wanted"})
    seed: int = field(default=0, metadata={"help": "themes, personas, mistakes and sampling"})
    error_rate: float = field(default=0.3, metadata={
        "help": "grounded teacher: share of plan steps preceded by a mistake"})
    min_errors: int = field(default=2, metadata={"help": "error->refinement episodes a trajectory needs "
                                                         "(the paper: 2)"})
    strict: bool = field(default=True, metadata={
        "help": "verify's extra checks (role order, numbering, every error refined)"})
    max_candidates: int = field(default=0, metadata={"help": "stop after this many candidates (0: 3 * n)"})
    script_attempts: int = field(default=3, metadata={"help": "LLM: script generations per candidate"})
    trajectory_attempts: int = field(default=4, metadata={
        "help": "LLM: trajectory generations (first + regenerations) per script"})
    personas: str = field(default="generated", metadata={
        "help": "'generated' (refinelib.synth.personas) or the path of a Persona Hub persona.jsonl"})
    llm_thoughts: bool = field(default=False, metadata={
        "help": "grounded teachers: an LLM writes the Player's thoughts (needs an LLM endpoint)"})

    def __post_init__(self) -> None:
        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if self.teacher not in TEACHERS:
            raise ValueError(f"SynthesisConfig.teacher: {self.teacher!r} is not one of {TEACHERS}")
        for name in ("n", "min_errors", "script_attempts", "trajectory_attempts"):
            if not integer(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"SynthesisConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}")
        if not integer(self.seed):
            raise ValueError(f"SynthesisConfig.seed must be an integer, got {self.seed!r}")
        if isinstance(self.error_rate, bool) or not isinstance(self.error_rate, int | float) \
                or not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"SynthesisConfig.error_rate must be a number in [0, 1], "
                             f"got {self.error_rate!r}")
        if not integer(self.max_candidates) or self.max_candidates < 0:
            raise ValueError(f"SynthesisConfig.max_candidates must be an integer >= 0, "
                             f"got {self.max_candidates!r}")
        for name in ("strict", "llm_thoughts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SynthesisConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.personas, str) or not self.personas.strip():
            raise ValueError(f"SynthesisConfig.personas must be 'generated' or the path of a Persona Hub "
                             f"persona.jsonl, got {self.personas!r}")

    @property
    def candidates(self) -> int:
        return self.max_candidates or 3 * self.n

    def identity(self, llm: Mapping | None) -> dict:
        """What a sample depends on: the settings (a re-run into the same folder must match them), and the
        versions of the prompt templates and the code (``teacher``, ``themes``, ``world``, ``verify``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("n", "max_candidates")}
        prompts = list(TEACHER_PROMPTS[self.teacher]) + (["synth_thoughts"] if self.llm_thoughts else [])
        if self.teacher != "grounded" or self.llm_thoughts:
            out["llm"] = {k: v for k, v in (llm or {}).items() if k in LLM_IDENTITY}
        out["prompts"] = {name: prompts_.template_version(name) for name in prompts}
        out["code"] = runs.code_version(*CODE)
        return out


@dataclass
class Sample:
    """One candidate: what was generated, every verdict on the way, and what it cost."""

    index: int
    id: str
    teacher: str
    accepted: bool
    verdicts: list[dict]                # Verdict.to_dict() of every attempt, in order
    script: dict | None = None
    trajectory: list | None = None      # the final (accepted or last) trajectory
    persona: str = ""
    theme: str = ""
    usage: dict = field(default_factory=dict)  # prompt/completion tokens, calls, cache hits (LLM)

    @property
    def verdict(self) -> Verdict:
        return Verdict.from_dict(self.verdicts[-1])

    @property
    def transient(self) -> bool:
        """Rejected because the endpoint failed (``llm_error``), not for its content: not a rejection."""
        last = self.verdicts[-1] if self.verdicts else {}
        return not self.accepted and last.get("reason") in TRANSIENT_REASONS

    @property
    def retry(self) -> bool:
        """A re-run makes this candidate again: it is transient, or an LLM request inside it failed and a
        fallback was used (the grounded teacher's templated thoughts after an ``llm_thoughts`` error)."""
        return self.transient or bool(self.usage.get("llm_errors"))

    def error_kinds(self) -> list[str]:
        """The kind of every erroneous Player turn (the DM turn's first set flag)."""
        turns = self.trajectory or []
        return [flags_set(turns[i + 1])[0] for i in erroneous_player_turns(turns)]

    def record(self) -> dict:
        """The released-schema chat record of an accepted sample (erroneous turns with loss false)."""
        return conversation.to_conversation(self.script, self.trajectory, self.id)

    def meta(self) -> dict:
        """Metadata for the dataset's sidecar columns and card."""
        return {"source": self.teacher, "theme": self.theme, "persona": self.persona,
                "error_kinds": self.error_kinds(),
                "templates": sorted((self.script or {}).get("Available Actions", {})),
                "attempts": len(self.verdicts),
                "thoughts": self.usage.get("thoughts", "llm" if self.teacher == "openai" else "template")}


@dataclass
class SynthesisRun:
    """The samples of a run, in index order, and its config."""

    config: SynthesisConfig
    samples: list[Sample]
    path: Path
    skipped_lines: int = 0  # sample lines cut by a kill (re-made by the run)

    @property
    def transient(self) -> list[Sample]:
        """Candidates that failed at the endpoint (a re-run makes them again); not counted as rejections."""
        return [s for s in self.samples if s.transient]

    @property
    def accepted(self) -> list[Sample]:
        """The first ``config.n`` accepted samples by index (the dataset, whatever the run history)."""
        return [s for s in self.samples if s.accepted][: self.config.n]

    def records(self) -> tuple[list[dict], dict[str, dict]]:
        """Chat records of the accepted samples and their metadata keyed by id."""
        accepted = self.accepted
        return [s.record() for s in accepted], {s.id: s.meta() for s in accepted}

    def verdicts(self) -> list[dict]:
        """Every verdict of every attempt, with its candidate index and teacher."""
        return [{**v, "index": s.index, "attempt": k, "teacher": s.teacher}
                for s in self.samples for k, v in enumerate(s.verdicts)]


# ------------------------------------------------------------------------------------------ the run


def synthesize(config: SynthesisConfig, out_dir: str | Path, client=None,
               progress: bool = True) -> SynthesisRun:
    """Make candidates until ``config.n`` are accepted (or ``config.candidates`` are tried); resumable.

    Args:
        config: the run's settings.
        out_dir: the run folder (``samples.jsonl``, ``config.json``); a re-run continues it.
        client: a :class:`refinelib.synth.llm.LLMClient` (required for the ``openai*`` teachers).
        progress: show a tqdm bar over accepted trajectories.

    Candidates already judged are kept; transient ones (:attr:`Sample.retry`) are made again, lowest index
    first, so the run ends with the data an uninterrupted run without endpoint failures makes. When a whole
    wave (and at least ``OUTAGE_AFTER`` candidates in a row) fails at the endpoint, the run stops early
    with a warning (an outage would otherwise fail the whole candidate budget); a re-run continues it.

    Raises:
        ValueError: a bad argument (naming it), a Persona Hub file that is missing or empty, a
            ``samples.jsonl`` line that is not a sample (naming ``file:line``), or ``out_dir`` holding a
            run with a different config (one message naming the fields); all before any candidate is made.
    """
    if not isinstance(config, SynthesisConfig):
        raise ValueError(f"synthesize: config must be a SynthesisConfig, got {type(config).__name__}")
    if (config.teacher != "grounded" or config.llm_thoughts) and client is None:
        what = "llm_thoughts" if config.teacher == "grounded" else f"teacher {config.teacher!r}"
        raise ValueError(f"{what} needs an LLM client (refinelib.synth.llm.LLMClient)")
    if client is not None and not (callable(getattr(client, "complete", None)) and hasattr(client, "config")):
        raise ValueError("synthesize: client must be a refinelib.synth.llm.LLMClient, got "
                         f"{type(client).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthesize: out_dir {out} is a file, not a run folder")
    make = _maker(config, client)  # reads and checks a Persona Hub file before anything is written
    llm_config = client.config.to_dict() if client is not None else None
    with runs.RunLock(out):  # one writer: two runs into one folder would interleave their samples
        _check_same_run(out, config.identity(llm_config))
        return _run(config, out, make, client, progress)


def _run(config: SynthesisConfig, out: Path, make: Callable[[int], Sample], client, progress: bool):
    from tqdm import tqdm

    done, skipped = read_samples(out / SAMPLES_FILE)
    retry = {i for i, s in done.items() if s.retry}  # made again below; their old lines are superseded
    last_retry = max(retry, default=-1)
    workers = client.config.concurrency if client is not None else 1

    def accepted_count() -> int:
        return sum(s.accepted for s in done.values())

    bar = tqdm(total=config.n, initial=min(accepted_count(), config.n), desc=f"accepted ({config.teacher})",
               disable=not progress)
    index = failing = 0  # failing: consecutive transient failures (an outage)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Past n accepted, earlier transient indices are still made: one of them may be accepted and take
        # its place among the first n (the dataset is the first n accepted by index).
        while (accepted_count() < config.n or index <= last_retry) and index < config.candidates:
            wave = []  # the next `workers` indices not yet judged
            while len(wave) < workers and index < config.candidates:
                if index not in done or index in retry:
                    wave.append(index)
                index += 1
            if not wave:
                continue
            for sample in pool.map(make, wave):  # in index order
                jsonl.append(out / SAMPLES_FILE, [asdict(sample)])
                done[sample.index] = sample
                retry.discard(sample.index)
                failing = failing + 1 if sample.transient else 0
            bar.update(min(accepted_count(), config.n) - bar.n)
            if failing >= max(workers, OUTAGE_AFTER):
                warnings.warn(f"synthesis stopped: the last {failing} candidates failed at the endpoint "
                              f"({sample.verdicts[-1]['detail'][:200]}); re-run to continue", stacklevel=3)
                break
    bar.close()
    return SynthesisRun(config, [done[i] for i in sorted(done)], out, skipped)


def read_samples(path: str | Path) -> tuple[dict[int, Sample], int]:
    """``({index: Sample}, skipped)`` from a ``samples.jsonl``; a later line of an index replaces an earlier
    one (a transient candidate made again). Lines cut by a kill are skipped and counted.

    Raises:
        ValueError: naming ``file:line`` for a complete line that is not a sample.
    """
    numbered, skipped = jsonl.read_numbered(path)
    done: dict[int, Sample] = {}
    for number, obj in numbered:
        try:
            if not isinstance(obj, dict):
                raise TypeError(f"a JSON {type(obj).__name__}, not an object")
            sample = Sample(**obj)
            if isinstance(sample.index, bool) or not isinstance(sample.index, int) or sample.index < 0:
                raise TypeError(f"'index' is {sample.index!r}, not an integer >= 0")
            if not isinstance(sample.verdicts, list) or not all(isinstance(v, dict) for v in sample.verdicts):
                raise TypeError("'verdicts' is not a list of objects")
        except TypeError as error:
            raise ValueError(f"{path}:{number}: not a synthesis sample ({error})") from None
        done[sample.index] = sample
    return done, skipped


def load_run(out_dir: str | Path) -> SynthesisRun:
    """Read a run folder back (``config.json`` + ``samples.jsonl``) without making anything."""
    out = Path(out_dir)
    if not (out / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{out / CONFIG_FILE}: not a synthesis run folder (run synthesize first)")
    try:
        saved = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
        saved = {k: v for k, v in saved.items() if k in SynthesisConfig.__dataclass_fields__}
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{out / CONFIG_FILE}: not a synthesis run's config ({error})") from None
    done, skipped = read_samples(out / SAMPLES_FILE)
    samples = [done[i] for i in sorted(done)]
    config = SynthesisConfig(**saved, n=max(1, sum(s.accepted for s in samples)))
    return SynthesisRun(config, samples, out, skipped)


def _check_same_run(out: Path, identity: dict) -> None:
    """Changed settings (or an unreadable ``config.json``) refuse with one error naming the fields; samples
    made by other code or prompt versions under the same settings are set aside
    (``samples.stale-<k>.jsonl``, with a warning) and made again."""
    path = out / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        saved = None
    plain = runs.jsonable(identity)  # as it is stored: tuples are lists

    def settings(d: Mapping) -> dict:
        out = {k: v for k, v in d.items() if k not in VERSION_FIELDS}
        if isinstance(out.get("llm"), Mapping):  # runs recorded before LLM_IDENTITY kept every field
            out["llm"] = {k: v for k, v in out["llm"].items() if k in LLM_IDENTITY}
        return out

    refuse = not isinstance(saved, dict) or (saved and runs.changed_fields(settings(saved), settings(plain)))
    runs.check_identity(path, identity, "refuse" if refuse else "set_aside", files=[out / SAMPLES_FILE])


def _maker(config: SynthesisConfig, client) -> Callable[[int], Sample]:
    # imported here: the teachers build Samples of this module (a cycle at import time otherwise)
    from refinelib.synth.candidates import executable_candidate, grounded_candidate, llm_candidate

    if config.teacher == "grounded":
        return functools.partial(grounded_candidate, config, client=client if config.llm_thoughts else None)
    pool = persona_pool(config)
    make = llm_candidate if config.teacher == "openai" else executable_candidate
    return lambda index: make(config, client, pool[index % len(pool)], index, index // len(pool))


def persona_pool(config: SynthesisConfig) -> list[str]:
    """The personas candidates draw from, in a seeded order (candidate i takes persona i)."""
    from refinelib.synth import personas

    if config.personas == "generated":
        found = personas.generate(min(config.candidates, 5000), seed=config.seed)
    else:
        found = personas.load_persona_hub(config.personas)
        random.Random(config.seed).shuffle(found)
    return [p.text for p in found]


def sample_id(config: SynthesisConfig, index: int) -> str:
    return f"{config.teacher}-s{config.seed}-{index:06d}"


def prompt_version(*names: str) -> str:
    """E.g. ``"synth_script-1"``: the templates' version headers (part of a request's cache key)."""
    return prompts_.versions(*names)


# --------------------------------------------------------------------------------------- summaries


def summary(run: SynthesisRun) -> dict:
    """Headline numbers: candidates judged, accepted, yield, attempts per candidate, tokens (LLM).

    ``candidates`` and ``yield`` count only candidates with a verdict about their content; those that
    failed at the endpoint are ``transient`` (a re-run makes them again), never rejections.
    """
    samples = run.samples
    judged = [s for s in samples if not s.transient]
    accepted = [s for s in judged if s.accepted]
    tokens = sum(s.usage.get("prompt_tokens", 0) + s.usage.get("completion_tokens", 0) for s in samples)
    return {"teacher": run.config.teacher, "candidates": len(judged), "accepted": len(accepted),
            "transient": len(samples) - len(judged),
            "yield": len(accepted) / max(len(judged), 1),
            "attempts_per_candidate": sum(len(s.verdicts) for s in judged) / max(len(judged), 1),
            "tokens": tokens, "tokens_per_accepted": tokens / max(len(accepted), 1),
            "llm_calls": sum(s.usage.get("calls", 0) for s in samples)}


def digest(records: Sequence[Mapping]) -> str:
    """A short content hash of records (to compare two runs' datasets)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]
