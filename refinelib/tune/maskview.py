"""See the loss mask: every token of a record coloured supervised vs masked, the erroneous turns marked.

The labels come from :func:`refinelib.tune.masking.render` (nothing here decides what is trained); this module
only maps each token back to its characters and to the conversation turn it belongs to, so a reader can
check that an erroneous assistant turn stays in the context but is not trained::

    from IPython.display import HTML
    from refinelib.tune import maskview, models
    HTML(maskview.mask_html(record, models.load_tokenizer()))     # in a notebook
    print(maskview.mask_text(record, models.load_tokenizer()))    # anywhere else

In :func:`mask_text`, supervised runs are wrapped in ``[+ … +]``; masked text of an erroneous turn in
``[x … x]``; all other (masked) text is plain.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

from refinelib.tune.masking import IGNORE_INDEX, ROLES, render

STYLE = """<style>
.maskview {font-family: monospace; font-size: 12px; white-space: pre-wrap; line-height: 1.7;
           border: 1px solid #ddd; padding: 8px; max-height: 40em; overflow-y: auto}
.maskview span.tok {border-right: 1px dotted #ccc}
.maskview span.supervised {background: #b7e4c7; color: #1b4332}
.maskview span.masked {color: #888}
.maskview span.erroneous {background: #f8d7da; color: #842029; text-decoration: line-through}
.maskview-legend span {padding: 0 6px; margin-right: 8px; font-family: monospace; font-size: 12px}
</style>"""


@dataclass(frozen=True)
class MaskedToken:
    """One token of a rendered record and what the mask does with it."""

    index: int
    token_id: int
    text: str             # the characters this token stands for in the rendered chat
    label: int            # masking.render's label (IGNORE_INDEX = not trained)
    turn: int | None      # index into record["conversations"] whose text the token overlaps; None: markup
    role: str | None      # that turn's "from" ("system", "human", "gpt", ...)
    erroneous: bool       # inside an assistant turn flagged loss=False (the paper's erroneous turn)

    @property
    def supervised(self) -> bool:
        return self.label != IGNORE_INDEX


def mask_tokens(record: Mapping, tokenizer, policy: str = "refine",
                max_length: int | None = None) -> list[MaskedToken]:
    """The record's tokens with masking.render's labels, their text, and the turn each belongs to.

    Raises whatever :func:`refinelib.tune.masking.render` raises for the record (bad schema, nothing to
    train).
    """
    rendered = render(record, tokenizer, policy=policy, max_length=max_length)
    ids, labels = rendered.input_ids, rendered.labels
    text, spans = _token_spans(tokenizer, ids)
    turns = _turn_spans(record, text)
    out = []
    for i, (start, stop) in enumerate(spans):
        turn = next((t for t, (a, b) in turns.items() if start < b and stop > a), None)
        role = record["conversations"][turn]["from"] if turn is not None else None
        erroneous = (turn is not None and ROLES.get(role) == "assistant"
                     and not record["conversations"][turn]["loss"])
        out.append(MaskedToken(i, ids[i], text[start:stop], labels[i], turn, role, erroneous))
    return out


def mask_html(record: Mapping, tokenizer, policy: str = "refine", max_length: int | None = None,
              legend: bool = True) -> str:
    """HTML (for ``IPython.display.HTML``): one ``<span>`` per token, classed supervised / masked.

    Each span carries ``data-index`` (token position) and ``data-label``; masked tokens of erroneous
    assistant turns also get the class ``erroneous``. A title on each token shows its id and label.
    """
    tokens = mask_tokens(record, tokenizer, policy=policy, max_length=max_length)
    parts = []
    for t in tokens:
        kind = "supervised" if t.supervised else "masked"
        classes = f"tok {kind}" + (" erroneous" if t.erroneous else "")
        title = f"token {t.token_id}, label {t.label}" + (f", turn {t.turn} ({t.role})" if t.role else "")
        parts.append(f'<span class="{classes}" data-index="{t.index}" data-label="{t.label}" '
                     f'title="{html.escape(title)}">{html.escape(t.text)}</span>')
    n_sup = sum(t.supervised for t in tokens)
    n_err = sum(t.erroneous for t in tokens)
    head = ""
    if legend:
        head = ('<div class="maskview-legend">'
                '<span class="tok supervised">supervised (in the loss)</span>'
                '<span class="tok masked">masked: context only</span>'
                '<span class="tok erroneous">erroneous turn (masked)</span>'
                f"<span>{html.escape(str(record.get('id')))}, policy {html.escape(policy)}: {len(tokens)} "
                f"tokens, {n_sup} supervised, {n_err} in erroneous turns</span></div>")
    return f'{STYLE}{head}<div class="maskview">{"".join(parts)}</div>'


def policy_table(record: Mapping, tokenizer, max_length: int | None = None):
    """The record under each mask policy of the paper's ablation (:data:`refinelib.tune.masking.POLICIES`):
    its tokens, supervised tokens, trained assistant turns and whether it was truncated."""
    import pandas as pd

    from refinelib.tune.masking import POLICIES

    rows = []
    for policy in POLICIES:
        r = render(record, tokenizer, policy=policy, max_length=max_length)
        rows.append({"policy": policy, "tokens": len(r.input_ids), "supervised tokens": r.n_supervised,
                     "trained assistant turns": r.n_supervised_turns, "truncated": r.truncated})
    return pd.DataFrame(rows)


def mask_text(record: Mapping, tokenizer, policy: str = "refine", max_length: int | None = None) -> str:
    """Plain-text view: supervised runs in ``[+ … +]``, erroneous-turn runs in ``[x … x]``."""
    tokens = mask_tokens(record, tokenizer, policy=policy, max_length=max_length)
    marks = {"supervised": ("[+", "+]"), "erroneous": ("[x", "x]"), "masked": ("", "")}
    out, current = [], "masked"
    for t in tokens:
        kind = "supervised" if t.supervised else ("erroneous" if t.erroneous else "masked")
        if kind != current:
            out.append(marks[current][1] + marks[kind][0])
            current = kind
        out.append(t.text)
    out.append(marks[current][1])
    return "".join(out)


def _token_spans(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and each token's character range in it.

    Re-encoding the decoded text gives the tokenizer's own offsets when it reproduces ``ids`` exactly (the
    usual case); otherwise each token's range comes from decoding growing prefixes.
    """
    decode = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
    text = tokenizer.decode(ids, **decode)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == list(ids):
        spans, cursor = [], 0
        for start, stop in enc["offset_mapping"]:  # tokens may overlap (byte-level); keep ranges disjoint
            start = max(start, cursor)
            spans.append((start, max(stop, start)))
            cursor = max(cursor, stop)
        return text, spans
    spans, previous = [], 0
    for i in range(len(ids)):
        length = len(tokenizer.decode(ids[: i + 1], **decode))
        spans.append((previous, max(length, previous)))
        previous = max(length, previous)
    return text, spans


def _turn_spans(record: Mapping, text: str) -> dict[int, tuple[int, int]]:
    """Character range of each turn's text in the rendering (found in order, as masking.render checks)."""
    spans, cursor = {}, 0
    for i, turn in enumerate(record["conversations"]):
        content = turn["value"].strip()
        found = text.find(content, cursor) if content else -1
        if found < 0:  # cut off by truncation: this and later turns are not in the tokens
            break
        spans[i] = (found, found + len(content))
        cursor = found + len(content)
    return spans
