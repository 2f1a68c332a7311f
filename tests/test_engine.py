"""The evaluation engine: TransformersPolicy's greedy outputs, with the instructions encoded once."""

import json

import pytest

from refinelib.eval import evaluate
from refinelib.eval.agent import instruction
from refinelib.eval.engine import Engine, EnginePolicy, quantized
from refinelib.eval.policies import TransformersPolicy, action_complete, local_policy
from tests.tiny_model import tiny_model, tiny_tokenizer

SYSTEMS = ["You are an agent in a household. Answer in the format Thought: ...\nAction: ...",
           "You are an agent in a grid. Available actions: look, inventory, go to {recep}."]
ACTING = ["Thought: I should look around first.\nAction: look\nObservation: You see a table and a lamp.",
          "Thought: The key is in the drawer.\nAction: open drawer 1\nObservation: Error: Invalid command."]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_model(tok), tok


@pytest.fixture(scope="module")
def acting(tiny):
    """A tiny model trained for a few steps to write ``Thought: ...\\nAction: ...`` and run on past it."""
    import torch

    _, tok = tiny
    model = tiny_model(tok, seed=1)
    ids = tok(["<|im_start|>assistant\n" + text for text in ACTING] * 4, return_tensors="pt", padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(**ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tok


def _play(policy, steps: int = 4, episodes: int = 5, prefill: str = "") -> list[list[str]]:
    """Multi-turn chats over two system messages (episodes of two families), as the agent loop builds them."""
    chats = [[{"role": "system", "content": SYSTEMS[i % 2]},
              {"role": "user", "content": f"Goal: task {i}.\nObservation: {prefill}you see {i} things."}]
             for i in range(episodes)]
    outputs = []
    for step in range(steps):
        outputs.append(policy.generate(chats, seeds=list(range(len(chats)))))
        for chat, text in zip(chats, outputs[-1], strict=True):
            chat += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"Observation: step {step} done."}]
    return outputs


def test_engine_logits_match_the_model_whatever_the_chunking_and_packing(tiny):
    import torch

    model, tok = tiny
    engine = Engine(model)
    rows = [list(range(5, 45)), list(range(60, 67)), list(range(100, 190))]
    with torch.inference_mode():
        expected = [model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows]
    seqs = [engine.new_sequence(4) for _ in rows]  # too small on purpose: the buffers grow
    engine.forward(seqs, [r[:3] for r in rows])
    engine.forward(seqs[:1], [rows[0][3:4]])  # one row alone, one token (the decode shape)
    got = engine.forward(seqs, [rows[0][4:], rows[1][3:], rows[2][3:]])  # packed, unequal lengths
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)
    fork = engine.fork(seqs[2], 50)
    assert fork.ids == rows[2][:50] and torch.allclose(engine.forward([fork], [rows[2][50:]])[0], expected[2],
                                                       atol=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        engine.forward(seqs, [[1], [], [2]])


def test_engine_refuses_an_architecture_it_does_not_implement(tiny):
    model, _ = tiny
    model.config.model_type = "gemma3_text"
    try:
        with pytest.raises(ValueError, match="model_type .*gemma3_text"):
            Engine(model)
    finally:
        model.config.model_type = "llama"


@pytest.mark.parametrize("batch_size,draft_tokens", [(None, 0), (2, 0), (None, 6)])
def test_engine_policy_writes_what_transformers_policy_writes_and_encodes_each_system_message_once(
        tiny, batch_size, draft_tokens):
    model, tok = tiny
    reference = TransformersPolicy(model, tok, max_new_tokens=20, stop=(), batch_size=batch_size)
    engine = EnginePolicy(model, tok, max_new_tokens=20, stop=(), batch_size=batch_size,
                          draft_tokens=draft_tokens)
    assert _play(engine) == _play(reference)
    assert len(engine._shared) == 2  # two families: two system messages, each encoded once
    head = len(tok(tok.apply_chat_template([{"role": "system", "content": SYSTEMS[0]}], tokenize=False),
                   add_special_tokens=False)["input_ids"])
    assert engine.stats["shared_tokens"] >= 5 * head - 5  # every first prompt started from its family's
    assert engine.stats["reused_tokens"] > reference.stats["reused_tokens"] + 4 * head
    assert engine.config()["engine"] == "torch" and engine.config()["class"] == "EnginePolicy"
    assert (engine.stats["accepted"] > 20) == (draft_tokens > 0)  # drafts were kept, and outputs unchanged


def test_identical_prompts_each_get_their_own_copy(tiny):
    model, tok = tiny
    chat = [{"role": "system", "content": SYSTEMS[0]}, {"role": "user", "content": "Observation: a lamp."}]
    reference = TransformersPolicy(model, tok, max_new_tokens=16, stop=())
    engine = EnginePolicy(model, tok, max_new_tokens=16, stop=())
    for _ in range(2):  # the second call: four rows match the same sequences of the first
        assert engine.generate([chat] * 4) == reference.generate([chat] * 4)


def test_a_history_window_that_drops_turns_gives_the_same_outputs(tiny):
    model, tok = tiny
    kwargs = dict(suites=["pddl", "babyai"], max_steps=4, max_instances=2, progress_bar=False, batch_size=3)
    # a 520-token budget drops pairs from the 2nd step on: the cached prefix stops at the first dropped turn
    reference = evaluate.run(TransformersPolicy(model, tok, name="tiny", max_new_tokens=24,
                                                max_prompt_tokens=520), **kwargs)
    engine = EnginePolicy(model, tok, name="tiny", max_new_tokens=24, max_prompt_tokens=520)
    played = evaluate.run(engine, **kwargs)
    assert [[t.raw for t in e.turns] for e in played] == [[t.raw for t in e.turns] for e in reference]
    assert any(e.meta["window_dropped_pairs"] for e in played)
    assert len(engine._shared) == len({instruction(e.family, e.task, 4) for e in played})  # one each


def test_stop_at_action_ends_each_row_at_its_action_line_on_both_paths(acting):
    model, tok = acting
    free = _play(TransformersPolicy(model, tok, max_new_tokens=40, stop=()), steps=2)
    assert any(action_complete(text) for step in free for text in step)  # it writes on past its action line
    settings = dict(max_new_tokens=40, stop=(), stop_at_action=True)
    reference = _play(TransformersPolicy(model, tok, **settings), steps=3)
    engine = _play(EnginePolicy(model, tok, **settings), steps=3)
    assert engine == reference
    acted = [text for step in engine for text in step if "Action:" in text]
    assert acted and not any(action_complete(text) for text in acted)  # nothing after the action line


def test_action_complete_needs_a_finished_non_blank_action_line():
    assert not action_complete("Thought: I look.")
    assert not action_complete("Thought: I look.\nAction:\n")
    assert not action_complete("Thought: I look.\nAction: lo")
    assert action_complete("Thought: I look.\nAction:\n look\n")
    assert action_complete("Thought: I look.\nAction: look\nObservation")


def test_sampling_is_seeded_per_request_on_the_engine(tiny):
    model, tok = tiny
    policy = EnginePolicy(model, tok, max_new_tokens=16, temperature=1.0, stop=())
    chats = [[{"role": "system", "content": SYSTEMS[i % 2]}, {"role": "user", "content": f"Observation: {i}"}]
             for i in range(3)]
    together = policy.generate(chats, seeds=[1, 2, 3])
    assert policy.generate([chats[1]], seeds=[2]) == together[1:2]
    assert policy.generate(chats, seeds=[1, 2, 3]) == together
    assert policy.generate([chats[0]] * 4, seeds=[1, 2, 3, 4]) != [together[0]] * 4


@pytest.mark.slow
def test_smollm2_episodes_on_the_engine_equal_the_transformers_path():
    """SmolLM2 plays two steps of four real episodes identically on both paths (about a minute)."""
    import torch

    from refinelib.tune import models

    torch.set_num_threads(1)
    model, tok = models.load()
    kwargs = dict(suites=["babyai", "pddl"], max_steps=2, max_instances=2, progress_bar=False)
    settings = dict(name="smollm2", max_new_tokens=40, max_prompt_tokens=1280, stop_at_action=True)
    reference = evaluate.run(TransformersPolicy(model, tok, **settings), **kwargs)
    played = evaluate.run(EnginePolicy(model, tok, **settings), **kwargs)
    raw = [[t.raw for t in e.turns] for e in played]
    assert raw == [[t.raw for t in e.turns] for e in reference]
    assert all(text.strip() for episode in raw for text in episode), json.dumps(raw)


def test_local_policy_picks_the_engine_where_it_runs_the_architecture(tiny):
    model, tok = tiny
    assert type(local_policy(model, tok, max_new_tokens=4)) is EnginePolicy
    assert type(local_policy(model, tok, "transformers", max_new_tokens=4)) is TransformersPolicy
    assert type(local_policy(model, tok, "engine-int8", max_new_tokens=4)) is EnginePolicy
    with pytest.raises(ValueError, match="backend must be one of"):
        local_policy(model, tok, "vllm")
    model.config.model_type = "gemma3_text"
    try:
        assert type(local_policy(model, tok, max_new_tokens=4)) is TransformersPolicy
        with pytest.raises(ValueError, match="gemma3_text"):
            local_policy(model, tok, "engine")
    finally:
        model.config.model_type = "llama"


def test_a_draft_is_what_followed_the_last_earlier_occurrence_of_the_final_tokens(tiny):
    model, tok = tiny
    policy = EnginePolicy(model, tok, max_new_tokens=10, draft_tokens=4, draft_ngram=3)
    fed = [1, 2, 3, 4, 5, 6, 7, 2, 3]
    assert policy._draft(fed, [9, 4]) == [5, 6, 7, 2]  # context ... 2 3 | 4: "2 3 4" occurred at 1-3
    assert policy._draft(fed + [4, 5], [9, 6]) == [7, 2, 3, 4]  # the last occurrence wins
    assert policy._draft(fed, [9, 8]) == []  # "2 3 8" never occurred
    assert policy._draft(fed, [9] * 8 + [4]) == [5]  # no more than max_new_tokens allows
    with pytest.raises(ValueError, match="draft_tokens must be >= 0"):
        EnginePolicy(model, tok, draft_tokens=-1)


def test_the_int8_engine_computes_close_to_float_and_leaves_the_model_alone(tiny):
    import torch

    model, tok = tiny
    int8 = quantized(model)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear  # the original is untouched
    assert "quantized" in type(int8.model.layers[0].mlp.up_proj).__module__
    ids = list(range(5, 60))
    exact, approx = Engine(model), Engine(int8)
    a = exact.forward([exact.new_sequence()], [ids])[0]
    b = approx.forward([approx.new_sequence()], [ids])[0]
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    episodes = evaluate.run(EnginePolicy(int8, tok, name="int8", max_new_tokens=12), ["pddl"], max_steps=2,
                            max_instances=2, progress_bar=False)
    assert len(episodes) == 2 and all(len(e.turns) == 2 for e in episodes)
