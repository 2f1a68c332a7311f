"""Readable renderings of scripts and trajectories for the book (HTML and Markdown strings).

Erroneous Player turns (their DM turn sets a flag) are shaded red with the flag named; the refinement
turn after them is shaded green, so a reader sees the error -> feedback -> correction pattern at once.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

from refinelib.verify import FLAGS

ERROR_BG, REFINE_BG, DM_BG = "#fde2e1", "#e3f4e1", "#f3f4f6"


def script_markdown(script: Mapping, max_environment_chars: int = 1200) -> str:
    """The paper's four script fields as Markdown (the environment JSON shortened if long)."""
    env = json.dumps(script.get("Environment", {}), indent=1, ensure_ascii=False)
    if len(env) > max_environment_chars:
        env = env[:max_environment_chars] + "\n..."
    actions = "\n".join(
        f"| `{t}` | `{spec.get('verification code', '')}` | "
        + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in spec.get("parameters", {}).items()) + " |"
        for t, spec in script.get("Available Actions", {}).items())
    conditions = "\n".join(f"- {c}" for c in script.get("Completion Conditions", []))
    return (f"**Goal.** {script.get('Goal', '')}\n\n**Completion conditions.**\n{conditions}\n\n"
            f"**Environment.**\n```json\n{env}\n```\n\n**Available actions.**\n\n"
            f"| template | verification code | parameters |\n|---|---|---|\n{actions}\n")


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
        rows.append(f'<tr style="background:{bg}"><td>{turn.get("turn", i)}</td><td><b>{role}</b></td>'
                    f"<td>{text}</td><td>{label}</td></tr>")
    return ('<table style="font-size:90%"><thead><tr><th>turn</th><th>role</th><th>thought / action / '
            "observation</th><th>flags</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _esc(text: str, limit: int | None = None) -> str:
    text = str(text)
    if limit and len(text) > limit:
        text = text[:limit] + " ..."
    return html.escape(text)
