"""refinelib.synth.llm against a real local HTTP server (tests/fake_openai.py): cache, retries, ledger."""

from __future__ import annotations

import json
import logging
import math
import pickle

import pytest
from fake_openai import FakeOpenAI, Fault, malformed, rate_limited, server_error, slow

from refinelib.synth.llm import LLMClient, LLMConfig, LLMError, Request

SECRET = "sk-test-SECRET123"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def make(server, tmp_path, **overrides) -> LLMClient:
    """A client for the fake server with small timeouts (the suite stays fast)."""
    settings = {"timeout": 2.0, "max_retries": 2, **overrides}
    return LLMClient(LLMConfig("fake-model", base_url=server.base_url, **settings), cache_dir=tmp_path)


def cache_files(tmp_path) -> list:
    return sorted(p for p in tmp_path.rglob("*.json"))


def test_cache_hit_makes_no_request_on_a_second_client(tmp_path):
    with FakeOpenAI(lambda request: "a script with three words") as server:
        first = make(server, tmp_path).complete(user("write a script"), stage="script")
        second_client = make(server, tmp_path)
        second = second_client.complete(user("write a script"), stage="script")
        assert len(server.requests) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.text == first.text == "a script with three words"
    # a hit still reports what the answer originally cost
    assert (second.prompt_tokens, second.completion_tokens) == (first.prompt_tokens, first.completion_tokens)
    assert (first.prompt_tokens, first.completion_tokens) == (3, 5)
    assert second.key == first.key
    assert second_client.calls == 0
    assert second_client.ledger["script"]["cache_hits"] == 1
    (path,) = cache_files(tmp_path)
    assert path.parent.name == first.key[:2] and path.stem == first.key  # sharded by the key's first 2 digits


def test_sample_index_prompt_version_and_sampling_params_change_the_key(tmp_path):
    with FakeOpenAI(lambda request: f"seed {request.get('seed')}") as server:
        client = make(server, tmp_path, extra={"seed": 7})
        base = client.complete(user("same prompt"), stage="script")
        other_sample = client.complete(user("same prompt"), stage="script", sample=1)
        other_version = client.complete(user("same prompt"), stage="script", prompt_version="v2")
        hotter = make(server, tmp_path, temperature=0.5, extra={"seed": 7}).complete(user("same prompt"),
                                                                                     stage="script")
        assert len(server.requests) == 4
    assert len({base.key, other_sample.key, other_version.key, hotter.key}) == 4
    # each sample index is its own reproducible draw: the seed moves with it
    assert (base.text, other_sample.text) == ("seed 7", "seed 8")
    assert client.cache_key(user("same prompt")) == base.key  # deterministic


def test_rate_limit_then_server_error_then_success(tmp_path):
    with FakeOpenAI(lambda request: "fine", faults=[rate_limited(), server_error()]) as server:
        client = make(server, tmp_path, max_retries=2)
        reply = client.complete(user("hello"), stage="script")
        assert len(server.requests) == 3
    assert reply.text == "fine" and not reply.cached
    row = client.ledger["script"]
    assert (row["requests"], row["retries"], row["errors"]) == (1, 2, 0)


def test_persistent_server_error_raises_llm_error_naming_the_stage(tmp_path):
    with FakeOpenAI(lambda request: server_error(503)) as server:
        client = make(server, tmp_path, max_retries=1)
        with pytest.raises(LLMError, match=r"stage 'trajectory'.*HTTP 503") as info:
            client.complete(user("hello"), stage="trajectory")
        assert len(server.requests) == 2  # the first try and one retry
    assert (info.value.stage, info.value.kind, info.value.status) == ("trajectory", "http", 503)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # crosses a process pool
    assert cache_files(tmp_path) == []  # failures are not cached: a re-run tries again
    assert client.ledger["trajectory"]["errors"] == 1


def test_timeout_is_retried_then_raises(tmp_path):
    with FakeOpenAI(lambda request: slow(3.0)) as server:
        client = make(server, tmp_path, timeout=0.2, max_retries=1)
        with pytest.raises(LLMError, match="stage 'script'.*timeout") as info:
            client.complete(user("hello"), stage="script")
        assert len(server.requests) == 2
    assert info.value.kind == "timeout" and info.value.status is None


def test_malformed_body_is_an_error_and_not_cached(tmp_path):
    with FakeOpenAI(lambda request: "good", faults=[malformed()]) as server:
        client = make(server, tmp_path)
        with pytest.raises(LLMError, match="not JSON") as info:
            client.complete(user("hello"), stage="script")
        assert info.value.kind == "malformed"
        assert client.complete(user("hello"), stage="script").text == "good"
        assert len(server.requests) == 2


def test_client_error_is_not_retried(tmp_path):
    with FakeOpenAI(lambda request: Fault(status=400, message="bad parameter")) as server:
        client = make(server, tmp_path, max_retries=3)
        with pytest.raises(LLMError, match="HTTP 400: bad parameter"):
            client.complete(user("hello"), stage="script")
        assert len(server.requests) == 1


def test_complete_many_is_bounded_ordered_and_keeps_failures_in_place(tmp_path):
    def responder(request):
        text = request["messages"][-1]["content"]
        return server_error() if text == "fail" else text.upper()

    prompts = [f"prompt {i}" for i in range(10)]
    prompts[4] = "fail"
    with FakeOpenAI(responder, delay=0.1) as server:
        client = make(server, tmp_path, concurrency=3, max_retries=0)
        results = client.complete_many([Request(user(p), stage="script") for p in prompts], progress=False)
        assert server.max_in_flight <= 3
    assert isinstance(results[4], LLMError) and results[4].stage == "script"
    others = [i for i in range(10) if i != 4]
    assert [results[i].text for i in others] == [prompts[i].upper() for i in others]
    assert 1 < client.max_in_flight <= 3
    assert client.ledger["script"]["requests"] == 10 and client.ledger["script"]["errors"] == 1


def test_identical_requests_in_one_batch_make_one_call(tmp_path):
    with FakeOpenAI(delay=0.05) as server:
        client = make(server, tmp_path, concurrency=4)
        results = client.complete_many([Request(user("twice"), stage="script")] * 4, progress=False)
        assert len(server.requests) == 1
    assert sorted(r.cached for r in results) == [False, True, True, True]
    assert len({r.text for r in results}) == 1


def test_ledger_counts_tokens_per_stage_and_cost(tmp_path):
    with FakeOpenAI(lambda request: "one two three four") as server:  # 4 completion tokens
        client = make(server, tmp_path, price_per_1m_input=2.0, price_per_1m_output=10.0)
        script = client.complete(user("a b"), stage="script")                       # 2 prompt tokens
        trajectory = client.complete(user("a b c d e f"), stage="trajectory")       # 6
        client.complete(user("a b c d e f"), stage="trajectory", sample=1)          # 6
        client.complete(user("a b"), stage="script")                                # cache hit
    script_row, trajectory_row = client.ledger["script"], client.ledger["trajectory"]
    assert (script_row["requests"], script_row["cache_hits"], script_row["prompt_tokens"],
            script_row["completion_tokens"]) == (1, 1, 2, 4)
    assert (trajectory_row["requests"], trajectory_row["prompt_tokens"],
            trajectory_row["completion_tokens"]) == (2, 12, 8)
    assert trajectory_row["cost"] == pytest.approx((12 * 2.0 + 8 * 10.0) / 1e6)
    table = client.ledger_table().set_index("stage")
    assert list(table.index) == ["script", "trajectory", "total"]
    assert table.loc["total", "prompt_tokens"] == 14 and table.loc["total", "requests"] == 3
    assert table.loc["total", "cost"] == pytest.approx((14 * 2.0 + 12 * 10.0) / 1e6)
    assert client.calls == 3
    # tokens of one accepted trajectory: its script and trajectory answers, by key or by Completion
    usage = client.usage_of([script.key, trajectory])
    assert (usage["completions"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 8, 8)
    assert usage["cost"] == pytest.approx((8 * 2.0 + 8 * 10.0) / 1e6)
    with pytest.raises(KeyError, match="no cached LLM answer"):
        client.usage_of(["0" * 64])


def test_cost_is_unknown_without_prices(tmp_path):
    with FakeOpenAI() as server:
        client = make(server, tmp_path)
        client.complete(user("hi"), stage="script")
    assert client.ledger["script"]["cost"] is None
    assert math.isnan(client.ledger_table().set_index("stage").loc["total", "cost"])


def test_api_key_is_sent_but_never_written_shown_or_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    echo_key = Fault(status=401, message=f"Incorrect API key provided: {SECRET}.")
    def responder(request):
        return echo_key if request["messages"][0]["content"] == "bad" else "ok"

    with FakeOpenAI(responder) as server:
        client = make(server, tmp_path, max_retries=0)
        client.complete(user("hi"), stage="script")
        client.complete_many([Request(user("hi"), stage="script")], progress=False)
        with pytest.raises(LLMError) as info:
            client.complete(user("bad"), stage="script")
        assert server.headers[0]["authorization"] == f"Bearer {SECRET}"  # the key is used...
    # ...and appears nowhere we write or show
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    shown = [written, repr(client), repr(client.config), json.dumps(client.config.to_dict()),
             str(client.ledger), client.ledger_table().to_string(), str(info.value), caplog.text]
    for text in shown:
        assert "SECRET123" not in text
    assert "HTTP 401" in str(info.value)


def test_missing_key_for_a_remote_endpoint_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TEAM_LLM_KEY", raising=False)
    config = LLMConfig("gpt-4o", base_url="https://api.example.com/v1", api_key_env="TEAM_LLM_KEY")
    with pytest.raises(RuntimeError, match="TEAM_LLM_KEY"):
        LLMClient(config, cache_dir=tmp_path)


def test_local_endpoint_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as server:
        reply = make(server, tmp_path).complete(user("hi"), stage="script")
        assert server.headers[0]["authorization"] == "Bearer not-needed"
    assert reply.text == "echo: hi"


@pytest.mark.parametrize("garbage", ["{not json", '{"format": 1, "key": "x", "response": {}}', "[]", ""])
def test_corrupt_cache_file_is_a_miss_and_is_overwritten(tmp_path, garbage):
    with FakeOpenAI(lambda request: "fresh") as server:
        key = make(server, tmp_path).complete(user("hi"), stage="script").key
        (path,) = cache_files(tmp_path)
        path.write_text(garbage)
        again = make(server, tmp_path).complete(user("hi"), stage="script")
        assert (again.cached, again.text, len(server.requests)) == (False, "fresh", 2)
        assert json.loads(path.read_text())["key"] == key
        assert make(server, tmp_path).complete(user("hi"), stage="script").cached


@pytest.mark.parametrize(("field", "value"), [
    ("model", ""), ("base_url", "localhost:8000"), ("temperature", -0.1), ("top_p", 1.5), ("max_tokens", 0),
    ("timeout", 0), ("max_retries", -1), ("concurrency", 0), ("api_key_env", ""),
    ("price_per_1m_input", -1.0), ("extra", {"max_tokens": 5}), ("extra", {"seed": object()}),
])
def test_config_rejects_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=rf"LLMConfig\.{field}="):
        LLMConfig(**{"model": "m", field: value})


def test_config_wants_both_prices_or_neither():
    with pytest.raises(ValueError, match="price_per_1m_output.*both"):
        LLMConfig("m", price_per_1m_input=1.0)


def test_bad_requests_are_refused_before_any_call(tmp_path):
    with FakeOpenAI() as server:
        client = make(server, tmp_path)
        with pytest.raises(ValueError, match=r"messages\[1\]"):
            client.complete([{"role": "user", "content": "hi"}, {"content": "no role"}], stage="script")
        with pytest.raises(ValueError, match=r"requests\[1\]: stage"):
            client.complete_many([Request(user("hi"), stage="script"), Request(user("hi"), stage="")])
        assert server.requests == []


def test_credentials_in_base_url_are_used_but_never_stored_or_shown(tmp_path, caplog):
    from refinelib.redact import redact_url
    from refinelib.synth.synthesis import SynthesisConfig, synthesize

    caplog.set_level(logging.DEBUG)
    with FakeOpenAI() as server:
        url = server.base_url.replace("http://", "http://alice:URLSECRET42@")
        client = LLMClient(LLMConfig("m", base_url=url, max_retries=0), cache_dir=tmp_path / "cache")
        assert client.complete(user("hi"), stage="script").text == "echo: hi"  # the URL works
        synthesize(SynthesisConfig(n=1, llm_thoughts=True), tmp_path / "run", client=client, progress=False)
    with pytest.raises(LLMError) as down:  # the server is gone: the error names the endpoint
        LLMClient(LLMConfig("m", base_url=url, max_retries=0), cache_dir=tmp_path / "c2").complete(
            user("again"), stage="script")
    assert "***@127.0.0.1" in str(down.value)
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "***@127.0.0.1" in written  # configs and cache files name the endpoint, without credentials
    for text in [written, repr(client), repr(client.config), json.dumps(client.config.to_dict()),
                 str(down.value), caplog.text]:
        assert "URLSECRET42" not in text and "alice" not in text
    assert redact_url("https://h/v1?token=abc&x=1&sig=") == "https://h/v1?token=***&x=1&sig="
