"""The loss mask (method.md §8): supervised tokens are exactly the trained assistant turns, for real templates."""
# ruff: noqa: E501  (the chat templates are carried verbatim)

import pytest
import torch
from tiny_model import tiny_model, tiny_tokenizer

from refinelib.tune.masking import (
    IGNORE_INDEX,
    NoSupervisedTokens,
    RecordError,
    TemplateError,
    render,
    render_many,
)

# SmolLM2-135M-Instruct's template, as its tokenizer ships it (a default system prompt when none is given).
CHATML_SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct: contents are trimmed, bos comes from the template.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral-7B-Instruct-v0.3 (tool branches included): roles must alternate, add_generation_prompt is
# ignored, and the system message goes into the *last* user turn, so earlier turns change as the
# conversation grows; render() folds it into the first user turn instead.
MISTRAL_V03 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Mistral-7B-Instruct v0.1/v0.2: raises on a system message; the assistant text follows "[/INST]" directly.
MISTRAL_LEGACY = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# name: (template, bos, eos = the end-of-turn token, tokenizer style, system folded)
TEMPLATES = {
    "chatml-smollm2": (CHATML_SMOLLM2, "<|im_start|>", "<|im_end|>", "bytelevel", False),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "bytelevel", False),
    "mistral-v0.3": (MISTRAL_V03, "<s>", "</s>", "metaspace", True),
    "mistral-v0.3-bytelevel": (MISTRAL_V03, "<s>", "</s>", "bytelevel", True),
    "mistral-legacy": (MISTRAL_LEGACY, "<s>", "</s>", "metaspace", True),
}

SYSTEM = "You are an agent in a household."
TASK = "Your goal is to put a clean mug on the table.\nAnswer in the format Thought: ...\nAction: ..."
WRONG = "Thought: I should look.\nAction: lok around"
FIX = "Thought: The format was wrong.\nAction: look"
GOOD = "Thought: The mug is in drawer 1.\nAction: open drawer 1"


def turn(role, value, loss=False):
    return {"from": role, "loss": loss, "value": value}


def record(rid="r1"):
    """System, task, an erroneous turn, its error observation, the refinement turn, one more good turn."""
    return {"id": rid, "conversations": [
        turn("system", SYSTEM), turn("human", TASK),
        turn("gpt", WRONG, False), turn("human", "Observation: Error: Invalid command format."),
        turn("gpt", FIX, True), turn("human", "Observation: You see a table, a drawer and a lamp."),
        turn("gpt", GOOD, True),
    ]}


def tokenizer_for(name):
    template, bos, eos, style, _ = TEMPLATES[name]
    return tiny_tokenizer(template, bos_token=bos, eos_token=eos, style=style)


def supervised_segments(tok, r):
    """Decoded runs of consecutive supervised tokens."""
    segments, run = [], []
    for token, label in zip(r.input_ids, r.labels, strict=True):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            segments.append(run)
            run = []
    if run:
        segments.append(run)
    return [tok.decode(s, skip_special_tokens=False) for s in segments]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def named_tok(request):
    return request.param, tokenizer_for(request.param)


def test_supervised_tokens_are_exactly_the_flagged_assistant_turns(named_tok):
    name, tok = named_tok
    eot = TEMPLATES[name][2]
    r = render(record(), tok)
    # Mistral's " " + content: the leading space belongs to the first generated token.
    assert [s.lstrip() for s in supervised_segments(tok, r)] == [FIX + eot, GOOD + eot]
    supervised = tok.decode([t for t, lab in zip(r.input_ids, r.labels, strict=True) if lab != IGNORE_INDEX])
    for masked in (SYSTEM, "Your goal", "lok around", "Observation", "assistant", "[INST]"):
        assert masked not in supervised
    assert r.n_supervised == sum(lab != IGNORE_INDEX for lab in r.labels)
    assert r.n_supervised_turns == 2 and not r.truncated
    assert r.system_folded == TEMPLATES[name][4]


def test_labels_align_with_the_templates_own_tokenisation(named_tok):
    name, tok = named_tok
    r = render(record(), tok)
    assert len(r.labels) == len(r.input_ids)
    assert all(lab in (IGNORE_INDEX, tid) for lab, tid in zip(r.labels, r.input_ids, strict=True))
    messages = [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]), "content": t["value"]}
                for t in record()["conversations"]]
    if r.system_folded:
        messages = [{"role": "user", "content": SYSTEM + "\n\n" + TASK}, *messages[2:]]
    assert r.input_ids == tok.apply_chat_template(messages, tokenize=True)["input_ids"]


def test_the_trained_tokens_give_a_finite_loss_on_a_tiny_model():
    tok = tokenizer_for("chatml-smollm2")
    r = render(record(), tok)
    out = tiny_model(tok)(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels]))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("policy, trained", [
    ("refine", [FIX, GOOD]),
    ("erroneous_loss", [WRONG, FIX, GOOD]),
    ("no_refinement_loss", [GOOD]),
])
def test_policies(named_tok, policy, trained):
    name, tok = named_tok
    r = render(record(), tok, policy=policy)
    assert [s.lstrip() for s in supervised_segments(tok, r)] == [t + TEMPLATES[name][2] for t in trained]


def test_the_refinement_turn_is_the_first_good_turn_after_any_run_of_errors():
    tok = tokenizer_for("chatml-smollm2")
    flags = [False, False, True, True, False, True]
    texts = [f"Action: step {i}" for i in range(len(flags))]
    conv = [turn("human", TASK)]
    for text, flag in zip(texts, flags, strict=True):
        conv += [turn("gpt", text, flag), turn("human", "Observation: ok")]
    r = render({"id": "runs", "conversations": conv}, tok, policy="no_refinement_loss")
    assert supervised_segments(tok, r) == [texts[3] + "<|im_end|>"]


def test_role_names_user_and_assistant_are_accepted():
    tok = tokenizer_for("llama3")
    rec = record()
    for t in rec["conversations"]:
        t["from"] = {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"])
    assert render(rec, tok).input_ids == render(record(), tok).input_ids


def test_truncation_drops_whole_trailing_turns_and_reports_it(named_tok):
    name, tok = named_tok
    eot = TEMPLATES[name][2]
    full = render(record(), tok)
    first = render({"id": "r1", "conversations": record()["conversations"][:5]}, tok)
    # Room for the first trained turn but not the second: the example ends at the first one's end-of-turn.
    last_supervised = max(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    r = render(record(), tok, max_length=last_supervised)
    assert r.truncated and r.n_turns_dropped == 2 and r.n_supervised_turns == 1
    assert r.n_tokens_untruncated == len(full.input_ids)
    assert r.input_ids == full.input_ids[: len(r.input_ids)]
    assert r.input_ids[-1] == tok.convert_tokens_to_ids(eot)
    assert [s.lstrip() for s in supervised_segments(tok, r)] == [FIX + eot]
    assert r.labels == first.labels[: len(r.labels)]
    # Exactly as long as needed is not truncated.
    assert not render(record(), tok, max_length=len(full.input_ids)).truncated


def test_truncation_that_leaves_no_trained_turn_raises(named_tok):
    _, tok = named_tok
    first = render({"id": "r1", "conversations": record()["conversations"][:5]}, tok)
    trained_end = max(i for i, lab in enumerate(first.labels) if lab != IGNORE_INDEX) + 1
    assert render(record(), tok, max_length=trained_end).n_supervised_turns == 1
    with pytest.raises(NoSupervisedTokens) as info:
        render(record(), tok, max_length=trained_end - 1)  # cutting inside a turn is never an option
    assert info.value.reason == "truncated" and info.value.record_id == "r1"


def test_an_example_with_nothing_to_train_raises():
    tok = tokenizer_for("chatml-smollm2")
    rec = record("all-masked")
    for t in rec["conversations"]:
        t["loss"] = False
    with pytest.raises(NoSupervisedTokens, match="all-masked") as info:
        render(rec, tok)
    assert info.value.reason == "no_trained_turn"
    # Only a refinement turn is trained: masking it leaves nothing.
    only_fix = {"id": "x", "conversations": record()["conversations"][:5]}
    with pytest.raises(NoSupervisedTokens):
        render(only_fix, tok, policy="no_refinement_loss")


def test_render_many_skips_and_counts():
    tok = tokenizer_for("chatml-smollm2")
    masked = record("masked")
    for t in masked["conversations"]:
        t["loss"] = False
    full_len = len(render(record(), tok).input_ids)
    examples, counts = render_many([record("a"), masked, record("b")], tok)
    assert [e.id for e in examples] == ["a", "b"]
    assert counts["records"] == 3 and counts["kept"] == 2 and counts["skipped_no_trained_turn"] == 1
    assert counts["tokens"] == 2 * full_len
    assert counts["supervised_tokens"] == sum(e.n_supervised for e in examples)
    _, counts = render_many([record("a")], tok, max_length=full_len - 2)
    assert counts["truncated"] == 1
    _, counts = render_many([record("a")], tok, max_length=5)
    assert counts["kept"] == 0 and counts["skipped_truncated"] == 1
    assert examples[0].features() == {"input_ids": examples[0].input_ids, "labels": examples[0].labels}


def _broken(mutate):
    rec = record("bad-7")
    mutate(rec)
    return rec


@pytest.mark.parametrize("rec, field", [
    (_broken(lambda r: r.pop("id")), "'id'"),
    (_broken(lambda r: r.update(conversations=[])), "'conversations'"),
    (_broken(lambda r: r["conversations"][2].update({"from": "bot"})), "conversations[2].from"),
    (_broken(lambda r: r["conversations"][4].pop("loss")), "conversations[4].loss"),
    (_broken(lambda r: r["conversations"][4].update(loss="yes")), "conversations[4].loss"),
    (_broken(lambda r: r["conversations"][1].update(value=None)), "conversations[1].value"),
    (_broken(lambda r: r["conversations"][3].update({"from": "system"})), "conversations[3].from"),
    (_broken(lambda r: r["conversations"].__setitem__(5, "hello")), "conversations[5]"),
])
def test_a_malformed_record_names_the_field_and_the_record(rec, field):
    with pytest.raises(RecordError) as info:
        render(rec, tokenizer_for("chatml-smollm2"))
    message = str(info.value)
    assert field in message
    assert "bad-7" in message or field == "'id'"


def test_user_turn_flags_are_optional():
    rec = record()
    for t in rec["conversations"]:
        if t["from"] != "gpt":
            t["loss"] = None  # AgentInstruct writes null on user turns
    assert render(rec, tokenizer_for("chatml-smollm2")).n_supervised_turns == 2


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        render(record(), tokenizer_for("chatml-smollm2"), policy="mask_errors")


def test_a_template_that_rewrites_earlier_turns_is_refused():
    # Like reasoning templates that strip earlier turns: only the last assistant message is kept whole.
    rewriting = CHATML_SMOLLM2.replace(
        "message['content'] + '<|im_end|>'",
        "(message['content'] if loop.last or message['role'] != 'assistant' "
        "else message['content'].split('Action:')[-1]) + '<|im_end|>'")
    tok = tiny_tokenizer(rewriting)
    with pytest.raises(TemplateError, match="r1"):
        render(record(), tok)


def test_consecutive_user_turns_under_an_alternating_template_raise_a_clear_error():
    rec = record()
    rec["conversations"].insert(2, turn("human", "Another request."))
    with pytest.raises(TemplateError, match="alternate"):
        render(rec, tokenizer_for("mistral-v0.3"))
