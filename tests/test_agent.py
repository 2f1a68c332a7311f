"""The agent loop: parser, format errors, history window, prompts, and the policies behind one interface."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refinelib.envs import registry
from refinelib.eval import agent
from refinelib.eval.agent import FORMAT_ERROR, EpisodeState, parse, window
from refinelib.eval.policies import OpenAIPolicy, OraclePolicy, RandomPolicy, TransformersPolicy
from tests.tiny_model import tiny_model, tiny_tokenizer

FAMILIES = ("pddl", "babyai", "household", "sciworld", "textadventure")


@pytest.mark.parametrize("text, expected", [
    ("Thought: go.\nAction: move forward", ("go.", "move forward")),
    ("Action: look\nAction:   go to desk 1  \nObservation: you see", ("", "go to desk 1")),  # the last one
    ("Thought: a\nAction: x\nThought: b\nAction: y", ("b", "y")),
    ("Thought: only thinking", ("only thinking", None)),
    ("Action:", ("", None)),
    ("Action:   \n\n", ("", None)),
    ("Action:\ntake key", ("", "take key")),  # the action on the next line is still the text after Action:
    ("", ("", None)),
    (None, ("", None)),
    (42, ("", None)),
    ("action: look", ("", None)),  # case matters: the format says "Action:"
    ("Thought: x Action: inline", ("x", "inline")),
])
def test_parse_takes_the_last_action_line_and_never_raises(text, expected):
    assert tuple(parse(text)) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_versioned_instruction_with_format_and_check_valid_actions(family):
    text = agent.instruction(family, max_steps=30)
    assert "check valid actions" in text and "Thought:" in text and "Action:" in text and "30 steps" in text
    assert "{{" not in text and "{%" not in text
    assert agent.prompt_version(family) == f"{family}-1+base-1"


def test_pddl_instruction_lists_only_the_task_domain_operators():
    text = agent.instruction("pddl", "blocksworld")
    assert "unstack <block>" in text and "fill-shot" not in text
    with pytest.raises(ValueError, match="no agent instruction"):
        agent.instruction("chess")


def _msgs(n_pairs):
    msgs = [{"role": "system", "content": "S" * 40}, {"role": "user", "content": "first " * 10}]
    for i in range(n_pairs):
        msgs += [{"role": "assistant", "content": f"a{i} " * 10}, {"role": "user", "content": f"o{i} " * 10}]
    return msgs


def test_window_drops_oldest_pairs_keeps_system_and_first_user_and_alternation():
    msgs = _msgs(10)
    full = agent.approx_tokens(msgs)
    kept, dropped = window(msgs, None)
    assert kept == msgs and dropped == 0
    budget = full // 2
    kept, dropped = window(msgs, budget)
    assert agent.approx_tokens(kept) <= budget and dropped > 0
    assert kept[:2] == msgs[:2] and kept[-2:] == msgs[-2:] and kept[2:] == msgs[2 + 2 * dropped:]
    assert [m["role"] for m in kept[1:]] == ["user"] + ["assistant", "user"] * (len(kept[2:]) // 2)
    # a budget nothing fits in still keeps system, first user and the last pair
    kept, dropped = window(msgs, 1)
    assert kept == msgs[:2] + msgs[-2:] and dropped == 9
    # the window only moves forward: a start beyond what is needed is kept
    assert window(msgs, full, start=3)[1] == 3


def test_format_error_is_fed_back_and_spends_a_step():
    env = registry.make("pddl", "gripper")
    state = EpisodeState(env, 0, max_steps=2)
    before = env.snapshot()
    turn = state.advance("I think I should pick a ball.")
    assert turn.format_error and turn.action is None and not turn.valid and turn.observation == FORMAT_ERROR
    assert env.snapshot() == before  # the environment never saw it
    assert state.messages[-1] == {"role": "user", "content": "Observation: " + FORMAT_ERROR}
    assert state.messages[-2]["role"] == "assistant" and not state.done
    turn = state.advance("Thought: fine.\nAction: check valid actions")
    assert turn.valid and turn.observation.startswith("Valid actions: ") and state.done  # 2 steps: the cap


def test_episode_state_prompt_starts_with_instruction_and_goal():
    env = registry.make("babyai", "GoToRedBallGrey")
    state = EpisodeState(env, 1234)
    msgs = state.prompt()
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == agent.instruction("babyai", "GoToRedBallGrey")
    assert msgs[1]["content"] == f"Goal: {state.goal}\nObservation: {state.first_observation}"


# ----- policies --------------------------------------------------------------------------------------
def test_oracle_and_random_policies_follow_the_format():
    env = registry.make("pddl", "gripper")
    env.reset(0)
    (out,) = OraclePolicy().generate([[]], [env])
    assert parse(out).action == env.oracle_action()
    a = RandomPolicy(seed=1).generate([[]] * 3, [env] * 3, [7, 7, 8])
    assert parse(a[0]).action in env.valid_actions() and a[0] == a[1]
    assert RandomPolicy(seed=1).generate([[]], [env], [7]) == a[:1]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_model(tok), tok


def _chats():
    base = [{"role": "system", "content": "Answer in the format Thought: ...\nAction: ..."}]
    return [base + [{"role": "user", "content": "Observation: You see a table."}],
            base + [{"role": "user", "content": "Observation: Error: Invalid command format. " * 6},
                    {"role": "assistant", "content": "Thought: I should look around first.\nAction: look"},
                    {"role": "user", "content": "Observation: You see a table, a drawer and a lamp."}],
            base + [{"role": "user", "content": "Your goal is to put a clean mug on the table."}]]


def test_batched_greedy_generation_equals_one_at_a_time(tiny):
    model, tok = tiny
    policy = TransformersPolicy(model, tok, max_new_tokens=24, stop=())
    chats = _chats()
    batched = policy.generate(chats)
    single = [policy.generate([c])[0] for c in chats]
    assert batched == single
    assert all(isinstance(t, str) for t in batched) and len({len(policy.render(c)) for c in chats}) == 3


def test_prefix_cache_gives_the_same_outputs_and_reuses_the_history(tiny):
    model, tok = tiny

    def play(policy, steps=4):
        chats = [_chats()[i][:2] for i in range(3)]
        outputs = []
        for step in range(steps):
            outputs.append(policy.generate(chats))
            for chat, text in zip(chats, outputs[-1], strict=True):
                chat += [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"Observation: step {step} done."}]
        return outputs

    cached = TransformersPolicy(model, tok, max_new_tokens=20, stop=())
    fresh = TransformersPolicy(model, tok, max_new_tokens=20, stop=(), prefix_cache=False)
    assert play(cached) == play(fresh)
    assert fresh.stats["reused_tokens"] == 0
    assert cached.stats["reused_tokens"] > 0.5 * cached.stats["prompt_tokens"]


def test_sampling_is_seeded_per_request_not_per_batch(tiny):
    model, tok = tiny
    policy = TransformersPolicy(model, tok, max_new_tokens=16, temperature=1.0, stop=())
    chats = _chats()
    together = policy.generate(chats, seeds=[1, 2, 3])
    alone = policy.generate([chats[1]], seeds=[2])
    assert together[1] == alone[0]
    assert policy.generate(chats, seeds=[1, 2, 3]) == together
    assert policy.generate([chats[0]] * 4, seeds=[1, 2, 3, 4]) != [together[0]] * 4


def test_generation_stops_at_end_of_turn_and_stop_strings(tiny):
    model, tok = tiny
    policy = TransformersPolicy(model, tok, max_new_tokens=40, stop=("a",))
    for text in policy.generate(_chats()):
        assert "a" not in text and "<|im_end|>" not in text
    prompt = policy.render(_chats()[0])
    assert policy.count_tokens(_chats()[0]) == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert policy.max_prompt_tokens == 1024 - 40


# ----- the OpenAI-compatible policy against a local fake server -------------------------------------
class _Fake(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Fake.seen.append((self.path, self.headers.get("Authorization"), body))
        content = "Thought: echo.\nAction: " + body["messages"][-1]["content"][:20]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Fake.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_policy_reads_the_key_from_the_env_and_never_logs_it(fake_server, monkeypatch, tmp_path):
    from refinelib.eval import evaluate

    secret = "sk-test-SECRET-123"
    monkeypatch.delenv("REFINELIB_TEST_KEY", raising=False)
    with pytest.raises(RuntimeError, match="REFINELIB_TEST_KEY"):
        OpenAIPolicy("fake-model", base_url=fake_server, api_key_env="REFINELIB_TEST_KEY")
    monkeypatch.setenv("REFINELIB_TEST_KEY", secret)
    policy = OpenAIPolicy("fake-model", base_url=fake_server, api_key_env="REFINELIB_TEST_KEY", max_tokens=32,
                          max_retries=0, timeout=10)
    outs = policy.generate([[{"role": "user", "content": "hello"}], [{"role": "user", "content": "world"}]])
    assert outs == ["Thought: echo.\nAction: hello", "Thought: echo.\nAction: world"]
    assert {a for _, a, _ in _Fake.seen} == {f"Bearer {secret}"}
    assert all(p == "/v1/chat/completions" and b["model"] == "fake-model" and b["max_tokens"] == 32
               for p, _, b in _Fake.seen)
    log = tmp_path / "episodes.jsonl"
    episodes = evaluate.run(policy, ["pddl"], max_steps=2, max_instances=1, log_path=log, progress_bar=False)
    assert len(episodes) == 1 and len(episodes[0].turns) == 2
    assert secret not in log.read_text() and secret not in repr(policy) and secret not in str(policy.config())
    assert os.environ["REFINELIB_TEST_KEY"] == secret
    policy.close()


def test_openai_policy_stores_a_base_url_without_its_credentials(fake_server, monkeypatch):
    monkeypatch.setenv("REFINELIB_TEST_KEY", "sk-test")
    host = fake_server.split("//", 1)[1]
    url = f"http://user:hunter2@{host}"  # credentials in the URL: the client may use them, logs may not
    policy = OpenAIPolicy("fake-model", base_url=url, api_key_env="REFINELIB_TEST_KEY", max_retries=0)
    assert "hunter2" not in repr(policy) and "hunter2" not in str(policy.config())
    assert host in policy.config()["base_url"]
    policy.close()
