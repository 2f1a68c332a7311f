"""The book's renderings of LLM-written scripts, trajectories and personas: shown as written, never run."""

from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from refinelib.report import display
from refinelib.synth import themes
from refinelib.synth.teacher import grounded_trajectory

HOSTILE = ['<script>alert("x")</script>', "<img src=x onerror=alert(1)>", "a | b",
           "`x` ``` [l](javascript:e)", "*em* _u_ # h", "&amp; &lt;"]
RENDER = MarkdownIt("commonmark", {"html": True}).enable("table")  # raw HTML on, as the book renders


def tags(html: str) -> set[str]:
    return {t.lower() for t in re.findall(r"<\s*([a-zA-Z][\w-]*)", html)}


def hostile_script() -> dict:
    return {"Environment": {"room": HOSTILE, "note": "```\n<script>alert(2)</script>"},
            "Goal": " ".join(HOSTILE), "Completion Conditions": HOSTILE,
            "Available Actions": {h: {"verification code": f"^{h}$", "parameters": {"x": HOSTILE}}
                                  for h in HOSTILE}}


def test_llm_written_script_text_reaches_the_page_as_text():
    page = RENDER.render(display.script_markdown(hostile_script()))
    assert tags(page) <= {"p", "strong", "ul", "li", "pre", "code", "table", "thead", "tbody", "tr", "th",
                          "td"}
    assert "javascript:" not in re.findall(r'href="([^"]*)"', page) and "<a " not in page
    assert page.count("<tr>") == 1 + len(HOSTILE)  # no cell's text split the table
    # the environment's text stays inside its code block
    assert page.count("<pre>") == 1 and "&lt;script&gt;alert(2)" in page.split("<pre>")[1].split("</pre>")[0]
    for text in HOSTILE:  # what a reader sees is exactly the text written
        assert text in _visible(page)


def test_llm_written_trajectory_and_persona_text_are_escaped():
    script = themes.generate_script(3)
    turns = grounded_trajectory(script, 3)
    turns[0]["Observation"] = HOSTILE[0]
    turns[1]["Thought"], turns[1]["Action"] = HOSTILE[1], HOSTILE[0]
    turns[2]["role"], turns[2]["turn"] = "<b>DM</b>", "<i>2</i>"
    page = display.trajectory_html(turns)
    assert tags(page) == {"table", "thead", "tbody", "tr", "th", "td", "b", "i", "br", "code"}
    assert "&lt;script&gt;" in page and "&lt;b&gt;DM&lt;/b&gt;" in page
    heading = RENDER.render(display.sample_heading("id-1", "kitchen", HOSTILE[1] + " *x*"))
    assert tags(heading) <= {"p", "strong", "code", "em"} and HOSTILE[1] in _visible(heading)


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_text_round_trips_through_a_markdown_renderer(text):
    assert _visible(RENDER.render(display.markdown_text(text))).strip() == text


def _visible(page: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", page))
