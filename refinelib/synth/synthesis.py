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
from typing import Any

from refinelib import jsonl, runs
from refinelib import prompts as prompts_
from refinelib.schema import FLAGS, erroneous_player_turns, flags_set
from refinelib.synth import conversation, teacher, themes
from refinelib.synth.verify import REASONS, Verdict, check_script, parse_json, verify
from refinelib.synth.world import World

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

    teacher: str = "grounded"       # one of TEACHERS
    n: int = 100                    # accepted trajectories wanted
    seed: int = 0
    error_rate: float = 0.3         # grounded teacher: share of plan steps preceded by a mistake
    min_errors: int = 2             # the paper: >= 2 error->refinement episodes
    strict: bool = True             # verify's extra checks (role order, numbering, every error refined)
    max_candidates: int = 0         # stop after this many candidates (0: 3 * n)
    script_attempts: int = 3        # LLM: script generations per candidate
    trajectory_attempts: int = 4    # LLM: trajectory generations (first + regenerations) per script
    personas: str = "generated"     # "generated" (refinelib.synth.personas) or a Persona Hub jsonl path
    llm_thoughts: bool = False      # grounded teachers: an LLM writes the Player's thoughts (needs a client)

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
    plain = json.loads(json.dumps(identity))  # as it is stored: tuples are lists

    def settings(d: Mapping) -> dict:
        out = {k: v for k, v in d.items() if k not in VERSION_FIELDS}
        if isinstance(out.get("llm"), Mapping):  # runs recorded before LLM_IDENTITY kept every field
            out["llm"] = {k: v for k, v in out["llm"].items() if k in LLM_IDENTITY}
        return out

    refuse = not isinstance(saved, dict) or (saved and runs.changed_fields(settings(saved), settings(plain)))
    runs.check_identity(path, identity, "refuse" if refuse else "set_aside", files=[out / SAMPLES_FILE])


def _maker(config: SynthesisConfig, client) -> Callable[[int], Sample]:
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


# ------------------------------------------------------------------------------------- the teachers


def grounded_candidate(config: SynthesisConfig, index: int, client=None) -> Sample:
    """A procedurally generated script and its grounded trajectory, verified with an engine replay.

    With ``client``, an LLM rewrites the Player's thoughts (:func:`llm_thoughts`).
    """
    seed = config.seed * 1_000_003 + index
    script = themes.generate_script(seed)
    ledger = _Ledger(client) if client is not None else None
    return _grounded(config, index, script, seed, config.teacher, theme=script["Engine"]["theme"],
                     ledger=ledger)


def _grounded(config, index, script, seed, source, verdicts=(), persona="", theme="", usage=None,
              ledger=None) -> Sample:
    sid = sample_id(config, index)
    try:
        trajectory = teacher.grounded_trajectory(script, seed, config.error_rate, config.min_errors)
    except ValueError as error:
        verdict = Verdict(False, "plan_too_short", str(error), stage="script")
        return Sample(index, sid, source, False, [*verdicts, verdict.to_dict()], script, None, persona, theme,
                      usage or {})
    thoughts = "template"
    if ledger is not None:
        trajectory, thoughts = llm_thoughts(ledger, script, trajectory)
        usage = {**ledger.usage, "thoughts": thoughts}
    verdict = verify(script, trajectory, config.min_errors, config.strict, goal_check=teacher.replay_check)
    return Sample(index, sid, source, verdict.ok, [*verdicts, verdict.to_dict()], script, trajectory, persona,
                  theme, usage or {})


class _Ledger:
    """Tokens and calls spent on one candidate (a cache hit still reports what it originally cost)."""

    def __init__(self, client) -> None:
        self.client, self.usage = client, {"calls": 0, "cache_hits": 0, "prompt_tokens": 0,
                                           "completion_tokens": 0}

    def ask(self, messages: list[dict], stage: str, sample: int, version: str):
        """The :class:`refinelib.synth.llm.Completion`; an LLMError is counted (``llm_errors``) and
        re-raised."""
        from refinelib.synth.llm import LLMError

        try:
            reply = self.client.complete(messages, stage=stage, sample=sample, prompt_version=version)
        except LLMError:
            self.usage["llm_errors"] = self.usage.get("llm_errors", 0) + 1
            raise
        self.usage["cache_hits" if reply.cached else "calls"] += 1
        self.usage["prompt_tokens"] += reply.prompt_tokens
        self.usage["completion_tokens"] += reply.completion_tokens
        return reply


def _truncated(reply, what: str, verdict: Verdict | None = None) -> Verdict | None:
    """A ``truncated`` verdict when ``reply`` stopped at max_tokens (else None): a cut answer fails to parse
    or verify because it is incomplete, and saying so points at the fix (a larger ``max_tokens``)."""
    if reply.finish_reason != "length":
        return None
    why = f" ({verdict.reason}: {verdict.detail})" if verdict is not None else ""
    return Verdict(False, "truncated", f"{what}: the answer stopped at max_tokens after "
                   f"{reply.completion_tokens} tokens{why}",
                   verdict.verified_prefix if verdict is not None else 0,
                   stage=verdict.stage if verdict is not None else "script")


def llm_candidate(config: SynthesisConfig, client, persona: str, index: int, round_: int = 0) -> Sample:
    """The paper's pipeline for one persona: script, trajectory, verification, regeneration."""
    from refinelib.synth.llm import LLMError

    ledger, verdicts, sid = _Ledger(client), [], sample_id(config, index)
    script = trajectory = None

    def done(ok: bool) -> Sample:
        return Sample(index, sid, config.teacher, ok, verdicts, script, trajectory, persona, "", ledger.usage)

    try:
        for s_try in range(config.script_attempts):
            prompt = [_system(), _user(render("synth_script", persona=persona))]
            reply = ledger.ask(prompt, "script", round_ * 100 + s_try, prompt_version("synth_script"))
            script, why = parse_json(reply.text, dict)
            verdict = check_script(script) if not why else _truncated(reply, "script") or \
                Verdict(False, "json_error", f"script: {why}", stage="script")
            if not verdict.ok:
                verdicts.append(verdict.to_dict())
                continue
            script_text = json.dumps(script, indent=1, ensure_ascii=False)
            ask = render("synth_trajectory", script=script_text, min_errors=config.min_errors)
            base = [_system(), _user(ask)]
            messages, prefix = base, []
            for t_try in range(config.trajectory_attempts):
                stage = "trajectory" if t_try == 0 else "regeneration"
                reply = ledger.ask(messages, stage, round_ * 100 + s_try * 10 + t_try,
                                   prompt_version("synth_trajectory", "synth_continue"))
                text = reply.text
                turns = _turns(text)
                trajectory = prefix + turns if turns is not None else text
                verdict = verify(script, trajectory, config.min_errors, config.strict)
                if not verdict.ok:
                    verdict = _truncated(reply, "trajectory", verdict) or verdict
                verdicts.append(verdict.to_dict())
                if verdict.ok:
                    return done(True)
                if turns is not None:  # unparsable text keeps the previous verified prefix
                    prefix = trajectory[: verdict.verified_prefix]
                follow = render("synth_continue", reason=REASON_TEXT.get(verdict.reason, verdict.reason),
                                detail=verdict.detail, min_errors=config.min_errors, next_turn=len(prefix),
                                prefix=json.dumps(prefix, indent=1, ensure_ascii=False) if prefix else "")
                messages = [*base, {"role": "assistant", "content": text}, _user(follow)]
            trajectory = trajectory if isinstance(trajectory, list) else None
            break  # the retry cap: the next persona, as in the paper
    except LLMError as error:
        verdicts.append(Verdict(False, "llm_error", str(error), stage="llm").to_dict())
    return done(False)


def llm_thoughts(ledger, script: Mapping, trajectory: list) -> tuple[list, str]:
    """The trajectory with every Player thought written by the LLM, and ``"llm"``; on any failure (an
    endpoint error, a malformed or wrong-sized answer) the templated thoughts are kept: ``"template"``.

    Only thoughts change: actions, observations and flags stay the engine's, so the trajectory still
    verifies and replays.
    """
    from refinelib.synth.llm import LLMError

    players = [i for i, t in enumerate(trajectory) if t["role"] == "Player"]
    steps = []
    for i in players:
        dm = trajectory[i + 1]
        flags = [f.replace("_", " ") for f in FLAGS if dm[f]]
        steps.append({"action": trajectory[i]["Action"], "observation": dm["Observation"],
                      "error": ", ".join(flags)})
    prompt = render("synth_thoughts", goal=script["Goal"], actions=list(script["Available Actions"]),
                    steps=steps, n=len(steps))
    try:
        text = ledger.ask([_system(), _user(prompt)], "thoughts", 0, prompt_version("synth_thoughts")).text
    except LLMError:  # counted in ledger.usage["llm_errors"]: a re-run asks again (Sample.retry)
        return trajectory, "template"
    thoughts, why = parse_json(text, list)
    if why or len(thoughts) != len(players) or not all(isinstance(t, str) and t.strip() for t in thoughts):
        return trajectory, "template"
    out = [dict(t) for t in trajectory]
    for i, thought in zip(players, thoughts, strict=True):
        out[i]["Thought"] = thought.strip()
    return out, "llm"


def executable_candidate(config: SynthesisConfig, client, persona: str, index: int,
                         round_: int = 0) -> Sample:
    """The bridge: an LLM-written executable script, kept only if the engine loads and solves it."""
    from refinelib.synth.llm import LLMError

    ledger, verdicts = _Ledger(client), []
    example = json.dumps(_example_script(), ensure_ascii=False)
    script = None
    try:
        for s_try in range(config.script_attempts):
            prompt = [_system(), _user(render("synth_engine_script", persona=persona, example=example))]
            reply = ledger.ask(prompt, "engine_script", round_ * 100 + s_try,
                               prompt_version("synth_engine_script"))
            script, verdict = _load_executable(reply.text)
            if verdict is not None and verdict.reason == "json_error":
                verdict = _truncated(reply, "script") or verdict
            if verdict is None:
                seed = config.seed * 1_000_003 + index
                return _grounded(config, index, script, seed, config.teacher, verdicts, persona,
                                 theme=str(script["Engine"].get("theme", "")), usage=ledger.usage)
            verdicts.append(verdict.to_dict())
    except LLMError as error:
        verdicts.append(Verdict(False, "llm_error", str(error), stage="llm").to_dict())
    return Sample(index, sample_id(config, index), config.teacher, False, verdicts, script, None, persona, "",
                  ledger.usage)


def _turns(text: str) -> list | None:
    """The turns in an LLM answer: a JSON list, or the one list inside a wrapper object."""
    turns, why = parse_json(text, list)
    if why:
        return None
    if isinstance(turns, Mapping):
        lists = [v for v in turns.values() if isinstance(v, list)]
        turns = lists[0] if len(lists) == 1 else None
    return turns if isinstance(turns, list) else None


def _load_executable(text: str) -> tuple[dict | None, Verdict | None]:
    script, why = parse_json(text, dict)
    if why:
        return None, Verdict(False, "json_error", f"script: {why}", stage="script")
    verdict = check_script(script)
    if not verdict.ok:
        return script, verdict
    if not isinstance(script.get("Engine"), Mapping):
        return script, Verdict(False, "engine_error", "the script has no 'Engine' object", stage="script")
    try:
        world = World.from_script(script)
        plan = world.plan()
    except Exception as error:  # noqa: BLE001 (any malformed engine spec is a verdict, never a crash)
        return script, Verdict(False, "engine_error", f"{type(error).__name__}: {error}", stage="script")
    if plan is None:
        return script, Verdict(False, "engine_unsolvable", "no plan reaches the goal facts", stage="script")
    script["Engine"]["plan"] = plan
    return script, None


@functools.cache
def _example_script() -> dict:
    script = themes.generate_script(7)
    script["Engine"] = {k: v for k, v in script["Engine"].items() if k not in ("plan", "seed")}
    return script


# ------------------------------------------------------------------------------------------ prompts


def render(name: str, **variables: Any) -> str:
    """Render ``prompts/<name>.jinja`` (strict: a missing variable is an error)."""
    return prompts_.render(name, **variables)


def prompt_version(*names: str) -> str:
    """E.g. ``"synth_script-1"``: the templates' version headers (part of a request's cache key)."""
    return prompts_.versions(*names)


def _system() -> dict:
    return {"role": "system", "content": SYSTEM}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


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
