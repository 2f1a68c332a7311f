"""The paper's LLM pipeline end to end over real HTTP, against a local OpenAI-compatible server.

The server plays a teacher LLM: for each persona it follows a scenario (a good answer, or a typical
failure). Good scripts and trajectories come from the grounded teacher, so their correctness is known.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import re

import pytest
from fake_openai import FakeOpenAI, rate_limited, server_error, slow, words

from refinelib.schema import FLAGS
from refinelib.synth import themes
from refinelib.synth.llm import LLMClient, LLMConfig
from refinelib.synth.synthesis import SynthesisConfig, load_run, persona_pool, summary, synthesize
from refinelib.synth.teacher import grounded_trajectory, replay_check
from refinelib.synth.verify import verify

SCENARIOS = ["good", "bad_script_json", "wrong_keys_then_rest", "flag_mismatch", "too_few_errors_then_good",
             "rate_limit_and_500", "timeout", "fenced_good"]


def public(script: dict) -> dict:
    return {k: v for k, v in script.items() if k != "Engine"}


def good_pair(k: int) -> tuple[dict, list]:
    script = themes.generate_script(500 + k)
    return public(script), grounded_trajectory(script, 500 + k)


class Teacher:
    """The responder: one scenario per persona, remembering how often each persona asked what."""

    def __init__(self, pool: list[str]) -> None:
        self.scenario = {p: SCENARIOS[i % len(SCENARIOS)] for i, p in enumerate(pool)}
        self.index = {p: i for i, p in enumerate(pool)}
        self.asked = collections.Counter()
        self.scripts: dict[str, str] = {}  # script JSON text -> persona

    def __call__(self, request: dict):
        text = request["messages"][-1]["content"]
        if "persona:\n\n" in text:
            persona = text.split("persona:\n\n", 1)[1].split("\n\n", 1)[0].strip()
            return self.script(persona)
        first = request["messages"][1]["content"]
        persona = next(p for s, p in self.scripts.items() if s in first)
        return self.trajectory(persona, text)

    def script(self, persona: str):
        scenario, n = self.scenario[persona], self.asked[persona, "script"]
        self.asked[persona, "script"] += 1
        if scenario == "bad_script_json" and n == 0:
            return "I am sorry, I cannot write that environment."  # no JSON at all
        script = good_pair(self.index[persona])[0]
        text = json.dumps(script, indent=1)
        self.scripts[json.dumps(script, indent=1, ensure_ascii=False)] = persona
        return text

    def trajectory(self, persona: str, text: str):
        scenario, n = self.scenario[persona], self.asked[persona, "trajectory"]
        self.asked[persona, "trajectory"] += 1
        turns = good_pair(self.index[persona])[1]
        if scenario == "wrong_keys_then_rest":
            if n == 0:
                broken = copy.deepcopy(turns)
                broken[5]["action"] = broken[5].pop("Action")  # a wrong key at turn 5
                return json.dumps(broken)
            assert "These turns were verified and are kept" in text  # incremental regeneration
            return json.dumps(turns[5:])
        if scenario == "flag_mismatch":
            bad = copy.deepcopy(turns)
            bad[2]["parameter_error"] = not bad[2]["parameter_error"]
            start = int(re.search(r"from turn (\d+)", text).group(1)) if n else 0  # a continuation
            return json.dumps(bad[start:])
        if scenario == "too_few_errors_then_good" and n == 0:
            return json.dumps(without_errors(turns))
        if scenario == "rate_limit_and_500" and n < 2:
            return rate_limited() if n == 0 else server_error(500)
        if scenario == "timeout":
            return slow(3.0)
        if scenario == "fenced_good":
            return "Here is the interaction:\n```json\n" + json.dumps(turns) + "\n```"
        return json.dumps(turns)


def without_errors(turns: list) -> list:
    def flagged(t):
        return t["role"] == "DM" and any(t[f] for f in FLAGS)
    kept = [t for i, t in enumerate(turns)
            if not flagged(t) and not (i + 1 < len(turns) and flagged(turns[i + 1]))]
    return [{**t, "turn": i} for i, t in enumerate(kept)]


@pytest.fixture()
def setup(tmp_path):
    config = SynthesisConfig(teacher="openai", n=len(SCENARIOS), max_candidates=len(SCENARIOS), seed=4)
    teacher = Teacher(persona_pool(config))
    with FakeOpenAI(teacher) as server:
        llm = LLMConfig("teacher-model", base_url=server.base_url, timeout=0.5, max_retries=2, concurrency=3)
        yield config, teacher, server, llm, tmp_path


def test_only_valid_trajectories_are_accepted_and_every_rejection_has_its_reason(setup):
    config, teacher, server, llm, tmp = setup
    client = LLMClient(llm, cache_dir=tmp / "cache")
    run = synthesize(config, tmp / "run", client=client, progress=False)
    by_scenario = {teacher.scenario[s.persona]: s for s in run.samples}
    assert set(by_scenario) == set(SCENARIOS)

    accepted = {name for name, s in by_scenario.items() if s.accepted}
    assert accepted == {"good", "bad_script_json", "wrong_keys_then_rest", "too_few_errors_then_good",
                        "rate_limit_and_500", "fenced_good"}
    for name in accepted:
        sample = by_scenario[name]
        assert verify(sample.script, sample.trajectory).ok
        assert sample.trajectory == good_pair(teacher.index[sample.persona])[1]
        assert sample.usage["prompt_tokens"] > 0 and sample.usage["completion_tokens"] > 0

    reasons = {name: [v["reason"] for v in s.verdicts] for name, s in by_scenario.items()}
    assert reasons["good"] == ["ok"]
    assert reasons["bad_script_json"] == ["json_error", "ok"]
    assert reasons["wrong_keys_then_rest"] == ["wrong_keys", "ok"]
    assert reasons["too_few_errors_then_good"] == ["too_few_refinements", "ok"]
    assert reasons["flag_mismatch"] == ["dm_flag_mismatch"] * config.trajectory_attempts
    assert reasons["timeout"] == ["llm_error"]
    assert "timeout" in by_scenario["timeout"].verdicts[0]["detail"]
    assert reasons["rate_limit_and_500"] == ["ok"]  # the client's retries absorbed the 429 and the 500
    table = client.ledger_table().set_index("stage")
    assert table.loc["total", "requests"] == client.calls > 0
    assert {"script", "trajectory", "regeneration"} <= set(table.index)


def test_a_second_run_retries_only_the_candidate_that_failed_at_the_endpoint(setup):
    config, teacher, server, llm, tmp = setup
    first = synthesize(config, tmp / "run", client=LLMClient(llm, cache_dir=tmp / "cache"), progress=False)
    assert [s.index for s in first.transient] == [SCENARIOS.index("timeout")]
    assert summary(first)["transient"] == 1  # an endpoint failure is not a rejection
    assert summary(first)["candidates"] == len(SCENARIOS) - 1
    assert summary(first)["yield"] == len(first.accepted) / (len(SCENARIOS) - 1)

    # the same folder: judged candidates stay; only the one whose request failed is asked again (a re-run
    # may change how long it waits and how often it retries: those do not change an answer)
    before = len(server.requests)
    patient = dataclasses.replace(llm, timeout=0.6, max_retries=1, concurrency=2)
    again = synthesize(config, tmp / "run", client=LLMClient(patient, cache_dir=tmp / "cache"),
                       progress=False)
    asked_again = [r for r in server.requests[before:] if r is not None]
    assert asked_again and all(teacher.scenario[_persona_of(teacher, r)] == "timeout" for r in asked_again)
    assert [s.id for s in again.accepted] == [s.id for s in first.accepted]
    assert len(again.samples) == len(SCENARIOS)  # the new line replaced the old one

    # the endpoint recovers: the next re-run accepts it, the candidate is no longer transient
    teacher.scenario[next(p for p, k in teacher.scenario.items() if k == "timeout")] = "good"
    healed = synthesize(config, tmp / "run", client=LLMClient(llm, cache_dir=tmp / "cache"), progress=False)
    assert not healed.transient and summary(healed)["transient"] == 0
    assert len(healed.accepted) == len(first.accepted) + 1
    assert load_run(tmp / "run").samples == healed.samples

    # a new folder over the same cache: only the request that never got an answer is asked again
    before = len(server.requests)
    fresh = synthesize(config, tmp / "fresh", client=LLMClient(llm, cache_dir=tmp / "cache"), progress=False)
    assert len(server.requests) == before
    assert [s.record() for s in fresh.accepted] == [s.record() for s in healed.accepted]


def _persona_of(teacher: Teacher, request: dict) -> str:
    first = request["messages"][1]["content"]
    return next(p for s, p in teacher.scripts.items() if s in first)


def test_executable_scripts_are_accepted_only_when_the_engine_solves_them(tmp_path):
    config = SynthesisConfig(teacher="openai-executable", n=3, max_candidates=3, seed=1, script_attempts=1)
    pool = persona_pool(config)

    def answer(request):
        persona = request["messages"][-1]["content"].split("persona:\n\n", 1)[1].split("\n\n", 1)[0].strip()
        script = themes.generate_script(900 + pool.index(persona))
        script["Engine"].pop("plan")
        kind = pool.index(persona) % 3
        if kind == 1:  # a goal fact no action can make true
            script["Engine"]["goal"] = [["in", "unicorn", "nowhere"]]
        if kind == 2:
            del script["Engine"]
        return json.dumps(script)

    with FakeOpenAI(answer) as server:
        client = LLMClient(LLMConfig("m", base_url=server.base_url, concurrency=2), cache_dir=tmp_path / "c")
        run = synthesize(config, tmp_path / "run", client=client, progress=False)
    reasons = [s.verdicts[-1]["reason"] for s in run.samples]
    assert reasons == ["ok", "engine_unsolvable", "engine_error"]
    grounded = run.samples[0]
    assert grounded.accepted and grounded.theme and len(grounded.error_kinds()) >= 2


def test_an_llm_writes_the_grounded_teachers_thoughts_and_the_trajectory_still_replays(tmp_path):
    asked = collections.Counter()

    def answer(request):
        text = request["messages"][-1]["content"]
        n = int(re.search(r"For each of the (\d+) steps", text).group(1))
        asked["all"] += 1
        if asked["all"] % 3 == 0:
            return "I would rather not."  # malformed: the templated thoughts stay
        return json.dumps([f"LLM thought {k}: the goal needs this step." for k in range(n)])

    config = SynthesisConfig(n=6, seed=2, llm_thoughts=True)
    with pytest.raises(ValueError, match="llm_thoughts"):
        synthesize(config, tmp_path / "none", progress=False)
    with FakeOpenAI(answer) as server:
        llm = LLMConfig("m", base_url=server.base_url, concurrency=2)
        run = synthesize(config, tmp_path / "run", client=LLMClient(llm, cache_dir=tmp_path / "c"),
                         progress=False)
        assert len(run.accepted) == 6
        for sample in run.accepted:
            assert replay_check(sample.script, sample.trajectory)[0]
            thoughts = [t["Thought"] for t in sample.trajectory if t["role"] == "Player"]
            if sample.meta()["thoughts"] == "llm":
                assert all(t.startswith("LLM thought") for t in thoughts)
            else:
                assert not any(t.startswith("LLM thought") for t in thoughts)
        assert {s.meta()["thoughts"] for s in run.accepted} == {"llm", "template"}
        before = len(server.requests)
        again = LLMClient(llm, cache_dir=tmp_path / "c")
        synthesize(config, tmp_path / "again", client=again, progress=False)
        assert len(server.requests) == before  # every answer came from the cache


def test_thoughts_lost_to_an_endpoint_error_are_asked_again_on_a_re_run(tmp_path):
    down = {"now": True}

    def answer(request):
        if down["now"]:
            return server_error(500)
        n = int(re.search(r"For each of the (\d+) steps", request["messages"][-1]["content"]).group(1))
        return json.dumps([f"LLM thought {k}." for k in range(n)])

    config = SynthesisConfig(n=3, seed=5, llm_thoughts=True)
    with FakeOpenAI(answer) as server:
        llm = LLMConfig("m", base_url=server.base_url, max_retries=0)
        first = synthesize(config, tmp_path / "run", client=LLMClient(llm, cache_dir=tmp_path / "c"),
                           progress=False)
        assert {s.meta()["thoughts"] for s in first.accepted} == {"template"}
        assert all(s.retry and s.usage["llm_errors"] == 1 for s in first.samples)
        down["now"] = False
        again = synthesize(config, tmp_path / "run", client=LLMClient(llm, cache_dir=tmp_path / "c"),
                           progress=False)
    assert {s.meta()["thoughts"] for s in again.accepted} == {"llm"}
    assert [s.index for s in again.accepted] == [s.index for s in first.accepted]
    assert not any(s.retry for s in load_run(tmp_path / "run").samples)


def test_an_outage_stops_the_run_early_and_is_not_counted_as_rejections(tmp_path):
    config = SynthesisConfig(teacher="openai", n=20, seed=1)
    with FakeOpenAI(lambda request: server_error(503)) as server:
        llm = LLMConfig("m", base_url=server.base_url, max_retries=0, concurrency=2)
        with pytest.warns(UserWarning, match="failed at the endpoint"):
            run = synthesize(config, tmp_path / "run", client=LLMClient(llm, cache_dir=tmp_path / "c"),
                             progress=False)
    assert len(run.samples) == 4  # two waves of two, not the 60-candidate budget
    assert summary(run) | {"transient": 4, "candidates": 0, "yield": 0.0} == summary(run)


def test_an_answer_cut_at_max_tokens_is_reported_as_truncated(tmp_path):
    script, turns = good_pair(0)
    script_text, trajectory_text = json.dumps(script, indent=1), json.dumps(turns)
    limit = words(script_text) + 5
    assert words(trajectory_text) > limit  # the trajectory does not fit, the script does

    def answer(request):
        return script_text if "persona:\n\n" in request["messages"][-1]["content"] else trajectory_text

    config = SynthesisConfig(teacher="openai", n=1, max_candidates=1, trajectory_attempts=1)
    with FakeOpenAI(answer) as server:
        llm = LLMConfig("m", base_url=server.base_url, max_tokens=limit)
        run = synthesize(config, tmp_path / "run", client=LLMClient(llm, cache_dir=tmp_path / "c"),
                         progress=False)
        short = LLMConfig("m", base_url=server.base_url, max_tokens=3)
        cut_script = synthesize(SynthesisConfig(teacher="openai", n=1, max_candidates=1, script_attempts=1),
                                tmp_path / "run2", client=LLMClient(short, cache_dir=tmp_path / "c"),
                                progress=False)
    verdict = run.samples[0].verdicts[-1]
    assert verdict["reason"] == "truncated" and "max_tokens" in verdict["detail"]
    assert not run.samples[0].transient  # a cut answer is a verdict on content: the cache replays it
    assert [v["reason"] for v in cut_script.samples[0].verdicts] == ["truncated"]
