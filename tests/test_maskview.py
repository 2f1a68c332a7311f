"""The mask view shows exactly masking.render's labels: supervised spans are the tokens with label != -100."""

from html.parser import HTMLParser

import pytest
from test_masking import FIX, GOOD, TEMPLATES, WRONG, record, tokenizer_for

from refinelib.synth import conversation, teacher, themes
from refinelib.tune import maskview
from refinelib.tune.masking import IGNORE_INDEX, NoSupervisedTokens, render


class Spans(HTMLParser):
    """Collects the token spans of a mask_html page: (index, label, classes, text)."""

    def __init__(self):
        super().__init__()
        self.tokens, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "data-index" in attrs:
            self._open = [int(attrs["data-index"]), int(attrs["data-label"]), attrs["class"].split(), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[3] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.tokens.append(tuple(self._open))
            self._open = None


def parse(page: str):
    parser = Spans()
    parser.feed(page)
    return parser.tokens


def grounded_record():
    """A grounded-teacher conversation that contains an erroneous turn."""
    for seed in range(20):
        script = themes.generate_script(seed)
        rec = conversation.to_conversation(script, teacher.grounded_trajectory(script, seed, 0.5), f"g{seed}")
        if any(t["from"] == "gpt" and not t["loss"] for t in rec["conversations"]):
            return rec
    raise AssertionError("no grounded trajectory with an error in 20 seeds")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("policy", ["refine", "erroneous_loss"])
def test_supervised_spans_are_exactly_the_labelled_tokens(name, policy):
    tok = tokenizer_for(name)
    rec = record()
    rendered = render(rec, tok, policy=policy)
    spans = parse(maskview.mask_html(rec, tok, policy=policy))
    assert [s[0] for s in spans] == list(range(len(rendered.input_ids)))
    assert [s[1] for s in spans] == rendered.labels
    supervised = {i for i, label in enumerate(rendered.labels) if label != IGNORE_INDEX}
    assert {s[0] for s in spans if "supervised" in s[2]} == supervised
    assert {s[0] for s in spans if "masked" in s[2]} == set(range(len(spans))) - supervised
    # the page's text is the rendered conversation, token by token
    assert "".join(s[3] for s in spans) == tok.decode(rendered.input_ids, skip_special_tokens=False)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_erroneous_turn_is_marked_and_masked_under_refine(name):
    tok = tokenizer_for(name)
    spans = parse(maskview.mask_html(record(), tok))
    erroneous = "".join(s[3] for s in spans if "erroneous" in s[2])
    assert erroneous.strip() == WRONG
    assert all("masked" in s[2] for s in spans if "erroneous" in s[2])
    supervised = "".join(s[3] for s in spans if "supervised" in s[2])
    eot = TEMPLATES[name][2]
    assert supervised.replace(" ", "") == (FIX + eot + GOOD + eot).replace(" ", "")


def test_text_view_brackets_supervised_and_erroneous_runs():
    tok = tokenizer_for("chatml-smollm2")
    text = maskview.mask_text(record(), tok)
    assert f"[x{WRONG}x]" in text
    assert f"[+{FIX}<|im_end|>+]" in text and f"[+{GOOD}<|im_end|>+]" in text
    assert text.count("[+") == 2 and text.count("[x") == 1


def test_a_grounded_teacher_record_with_a_truncation():
    tok = tokenizer_for("chatml-smollm2")
    rec = grounded_record()
    full = render(rec, tok)
    cut = render(rec, tok, max_length=full.n_tokens_untruncated - 5)
    tokens = maskview.mask_tokens(rec, tok, max_length=full.n_tokens_untruncated - 5)
    assert [t.label for t in tokens] == cut.labels and cut.truncated
    errors = [t for t in tokens if t.erroneous]
    assert errors and not any(t.supervised for t in errors)
    assert {t.role for t in errors} == {"gpt"}


def test_nothing_to_train_raises_as_render_does():
    rec = record()
    rec["conversations"] = rec["conversations"][:4]  # only the erroneous turn
    with pytest.raises(NoSupervisedTokens):
        maskview.mask_html(rec, tokenizer_for("chatml-smollm2"))
