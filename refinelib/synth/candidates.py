"""The three teachers of a synthesis run, one candidate :class:`~refinelib.synth.synthesis.Sample` a call.

* ``grounded``: the world engine plays a generated script with injected mistakes of the three kinds,
  so every flag is true by construction (:mod:`refinelib.synth.teacher`); an LLM may write the thoughts;
* ``openai``: the paper's pipeline: an LLM writes a script from a persona, then a trajectory with
  mistakes and their refinements, regenerated with the verifier's reason until it passes (Algorithm 1);
* ``openai-executable``: an LLM writes a script the world engine can run, which then plays it.

Every request goes through a per-candidate ledger (tokens, cost, errors) and the client's content-keyed
cache, with the prompt templates' versions in the key (:mod:`refinelib.prompts`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

from refinelib import prompts as prompts_
from refinelib.schema import FLAGS
from refinelib.synth import teacher, themes
from refinelib.synth.parse import parse_json
from refinelib.synth.synthesis import (
    REASON_TEXT,
    SYSTEM,
    Sample,
    SynthesisConfig,
    sample_id,
)
from refinelib.synth.verify import Verdict, check_script, verify
from refinelib.synth.world import World


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
            prompt = [_system(), _user(prompts_.render("synth_script", persona=persona))]
            reply = ledger.ask(prompt, "script", round_ * 100 + s_try, prompts_.versions("synth_script"))
            script, why = parse_json(reply.text, dict)
            verdict = check_script(script) if not why else _truncated(reply, "script") or \
                Verdict(False, "json_error", f"script: {why}", stage="script")
            if not verdict.ok:
                verdicts.append(verdict.to_dict())
                continue
            script_text = json.dumps(script, indent=1, ensure_ascii=False)
            ask = prompts_.render("synth_trajectory", script=script_text, min_errors=config.min_errors)
            base = [_system(), _user(ask)]
            messages, prefix = base, []
            for t_try in range(config.trajectory_attempts):
                stage = "trajectory" if t_try == 0 else "regeneration"
                reply = ledger.ask(messages, stage, round_ * 100 + s_try * 10 + t_try,
                                   prompts_.versions("synth_trajectory", "synth_continue"))
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
                follow = prompts_.render(
                    "synth_continue", reason=REASON_TEXT.get(verdict.reason, verdict.reason),
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
    prompt = prompts_.render("synth_thoughts", goal=script["Goal"], actions=list(script["Available Actions"]),
                    steps=steps, n=len(steps))
    try:
        text = ledger.ask([_system(), _user(prompt)], "thoughts", 0, prompts_.versions("synth_thoughts")).text
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
            ask = prompts_.render("synth_engine_script", persona=persona, example=example)
            prompt = [_system(), _user(ask)]
            reply = ledger.ask(prompt, "engine_script", round_ * 100 + s_try,
                               prompts_.versions("synth_engine_script"))
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


def _system() -> dict:
    return {"role": "system", "content": SYSTEM}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}
