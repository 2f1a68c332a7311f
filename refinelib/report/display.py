"""Readable renderings of scripts and trajectories for the book (HTML and Markdown strings).

Erroneous Player turns (their DM turn sets a flag) are shaded red with the flag named; the refinement
turn after them is shaded green, so a reader sees the error -> feedback -> correction pattern at once.

Every string in a script, a trajectory or a persona may have been written by an LLM, so each one is
escaped on its way out: HTML special characters become entities (no tag, script or link of the model's
reaches the page) and so do the Markdown characters that could open a code span, a table cell, a link or
emphasis. The texts still read exactly as written.

>>> markdown_text("<b>bold</b> | `code`")
'&lt;b&gt;bold&lt;/b&gt; &#124; &#96;code&#96;'
>>> "<script>" in trajectory_html([{"turn": 0, "role": "DM", "Observation": "<script>alert(1)</script>"}])
False
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence

from refinelib.analysis.tables import short_rule
from refinelib.analysis.taxonomy import classify_steps
from refinelib.eval.episodes import Episode
from refinelib.schema import FLAGS

ERROR_BG, REFINE_BG, DM_BG = "#fde2e1", "#e3f4e1", "#f3f4f6"
# Markdown punctuation that could start markup (code spans, tables, links, emphasis, headings, HTML
# entities); html.escape covers < > & " '. Written as numeric entities, they show as themselves.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_\[\]{}()#+!|~$]")


def markdown_text(text, newlines: bool = True) -> str:
    """``text`` (any value, as ``str``) made inert for Markdown with inline HTML: it shows as written.

    Args:
        newlines: keep line breaks (False: a table cell, where a newline would end the row).
    """
    out = _MARKDOWN_SPECIAL.sub(lambda m: f"&#{ord(m.group())};", html.escape(str(text)))
    return out if newlines else " ".join(out.splitlines())


def _code(text) -> str:
    """Inline code for a Markdown table cell: an HTML ``<code>`` element around escaped text (a backtick
    code span could be closed by a backtick in the text)."""
    return f"<code>{markdown_text(text, newlines=False)}</code>"


def _fence(text: str, language: str = "") -> str:
    """A fenced code block longer than any backtick run in ``text`` (so the text cannot close it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def script_markdown(script: Mapping, max_environment_chars: int = 1200) -> str:
    """The paper's four script fields as Markdown (the environment JSON shortened if long)."""
    env = json.dumps(script.get("Environment", {}), indent=1, ensure_ascii=False)
    if len(env) > max_environment_chars:
        env = env[:max_environment_chars] + "\n..."
    actions = script.get("Available Actions", {})
    rows = []
    for template, spec in (actions.items() if isinstance(actions, Mapping) else ()):
        spec = spec if isinstance(spec, Mapping) else {}
        params = spec.get("parameters") or {}
        values = "; ".join(
            f"{markdown_text(k, False)}: "
            + ", ".join(markdown_text(v, False) for v in (vs if isinstance(vs, list) else [vs]))
            for k, vs in (params.items() if isinstance(params, Mapping) else ()))
        rows.append(f"| {_code(template)} | {_code(spec.get('verification code', ''))} | {values} |")
    conditions = script.get("Completion Conditions", [])
    conditions = "\n".join(f"- {markdown_text(c, False)}"
                           for c in (conditions if isinstance(conditions, list) else [conditions]))
    return (f"**Goal.** {markdown_text(script.get('Goal', ''))}\n\n"
            f"**Completion conditions.**\n{conditions}\n\n**Environment.**\n{_fence(env, 'json')}\n\n"
            "**Available actions.**\n\n"
            "| template | verification code | parameters |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def sample_heading(sample_id: str, theme: str = "", persona: str = "") -> str:
    """A sample's heading line in Markdown: its id, theme and (LLM teachers) persona, all escaped."""
    out = f"**{markdown_text(sample_id)}** — theme {_code(theme or 'llm')}"
    return out + (f", persona: *{markdown_text(persona)}*" if persona else "")


def trajectory_html(trajectory: Sequence[Mapping], max_chars: int = 400) -> str:
    """A trajectory as an HTML table: one row per turn, errors red, refinements green."""
    rows, after_error = [], False
    for i, turn in enumerate(trajectory):
        role = turn.get("role", "?")
        if role == "Player":
            nxt = trajectory[i + 1] if i + 1 < len(trajectory) else {}
            flags = [f for f in FLAGS if nxt.get(f)]
            label, bg = ("error: " + ", ".join(flags), ERROR_BG) if flags else \
                (("refinement", REFINE_BG) if after_error else ("", "white"))
            after_error = bool(flags)
            text = (f"<i>{_esc(turn.get('Thought', ''), max_chars)}</i><br>"
                    f"<code>{_esc(turn.get('Action', ''))}</code>")
        else:
            flags = [f for f in FLAGS if turn.get(f)]
            label, bg = ", ".join(flags), DM_BG
            text = _esc(turn.get("Observation", ""), max_chars)
        rows.append(f'<tr style="background:{bg}"><td>{_esc(turn.get("turn", i))}</td><td><b>{_esc(role)}</b>'
                    f"</td><td>{text}</td><td>{label}</td></tr>")
    return ('<table style="font-size:90%"><thead><tr><th>turn</th><th>role</th><th>thought / action / '
            "observation</th><th>flags</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _esc(text, limit: int | None = None) -> str:
    text = str(text)
    if limit and len(text) > limit:
        text = text[:limit] + " ..."
    return html.escape(text)


def say(text: str, markdown: bool = False) -> None:
    """Print ``text`` (or show it as Markdown), unless it is empty: a computed sentence that has nothing to
    say leaves no blank output."""
    if not text:
        return
    if markdown:
        from IPython.display import Markdown, display

        display(Markdown(text))
    else:
        print(text)


def oracle_transcripts(transcripts: Mapping, width: int = 300) -> str:
    """The first oracle episode of each suite (``{suite: Transcript}``), each under a heading naming its
    task, seed and environment version, followed by a blank line."""
    lines = []
    for name, record in transcripts.items():
        lines += [f"=== {name}: {record.task}, seed {record.seed} (environment version {record.version}) ===",
                  record.render(width=width), ""]
    return "\n".join(lines)


# ----- episodes ------------------------------------------------------------------------------------------
def render_episode(episode: Episode, mark: Iterable[int] = (), width: int = 160,
                   max_turns: int | None = None) -> str:
    """A transcript: goal, first observation, then each step's thought, action and observation, with
    the step's error-taxonomy category; steps in ``mark`` are flagged with ``>>``."""
    marked, labels = set(mark), classify_steps(episode)

    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[:width - 3] + "..."

    lines = [f"[{episode.policy} | {episode.suite} | {episode.instance} | perturbation "
             f"{short_rule(episode.perturbation)} | success {episode.success} | "
             f"progress {episode.progress:.2f}]",
             f"Goal: {cut(episode.goal)}", f"Observation: {cut(episode.first_observation)}"]
    turns = list(enumerate(episode.turns))
    for t, turn in turns[:max_turns]:
        flag = ">>" if t in marked else "  "
        lines.append(f"{flag} step {t + 1} [{labels[t]}]")
        if turn.thought:
            lines.append(f"   Thought: {cut(turn.thought)}")
        action = turn.action if turn.action is not None else f"(none: {cut(turn.raw)})"
        lines.append(f"   Action: {action}")
        lines.append(f"   Observation: {cut(turn.observation)}")
    if max_turns is not None and len(turns) > max_turns:
        lines.append(f"   ... {len(turns) - max_turns} more steps")
    return "\n".join(lines)


def failure_mode_transcripts(episodes: Sequence[Episode], found, first: str, per_mode: int = 2,
                             width: int = 200) -> str:
    """For each failure mode, the first ``per_mode`` episodes of ``found``
    (:func:`refinelib.analysis.taxonomy.failure_modes`) that show it, model ``first``'s before the others',
    each with the offending action and its flagged steps marked."""
    import pandas as pd

    from refinelib.analysis.taxonomy import MEMORISED_FORMAT, REPEATED_FAILED_ACTION
    from refinelib.schema import EPISODE_KEY

    by_key = {e.key: e for e in episodes}
    lines = []
    for mode in (MEMORISED_FORMAT, REPEATED_FAILED_ACTION):
        hits = found[found["mode"] == mode]
        hits = pd.concat([hits[hits.policy == first], hits[hits.policy != first]])
        lines.append(f"===== {mode}: {len(hits)} episode(s) =====")
        if hits.empty:
            lines += ["None found in these episodes.", ""]
        for _, hit in hits.head(per_mode).iterrows():
            lines += [f"-- the action: {hit.action!r} ({hit.n_steps} of {hit.episode_steps} steps)",
                      render_episode(by_key[tuple(hit[list(EPISODE_KEY)])], mark=hit.steps, width=width), ""]
    return "\n".join(lines)


def old_format(episodes: Sequence[Episode], order: Sequence[str], width: int = 200) -> str:
    """How often each model wrote a household command in the format a perturbation rule replaced (the
    memorised-format rate per model and rule), then the first such episode; a note when no household rule
    was played."""
    from refinelib.analysis import tables, taxonomy
    from refinelib.eval.evaluate import ORIGINAL
    from refinelib.schema import EPISODE_KEY

    household = [e for e in episodes if e.family == "household" and e.perturbation != ORIGINAL]
    if not household:
        return "No household rule in `rules`."
    found = taxonomy.failure_modes(household)
    rates = taxonomy.failure_mode_rates(household, found, by=("policy", "perturbation"))
    rates["setting"] = rates.perturbation.map(tables.short_rule)
    table = rates.pivot(index="policy", columns="setting", values=f"{taxonomy.MEMORISED_FORMAT} rate")
    lines = [str(table.reindex([m for m in order if m in table.index]).round(2))]
    examples = found[found["mode"] == taxonomy.MEMORISED_FORMAT]
    if examples.empty:
        return "\n".join([*lines, "No episode wrote a command in the replaced format."])
    hit = examples.iloc[0]
    episode = {e.key: e for e in household}[tuple(hit[list(EPISODE_KEY)])]
    return "\n".join([*lines, render_episode(episode, mark=hit.steps, width=width)])
