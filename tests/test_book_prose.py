"""No result number is typed into the book's prose: every number a reader takes as a finding is computed.

The notebooks' markdown cells are fixed text; the run they sit next to changes with every parameter and
every build. A number typed there ("refine beats expert_only by 12.5 points") goes stale silently, so the
prose may hold digits only where they are not results: the allow-list below, one pattern per kind of
label, each with the reason it is not a result. Everything else with a digit is reported, with its context.
Results are printed by code cells (the chapters' computed sentences, ``findings.explain``).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Digits that are labels, not results. Each pattern is removed from the markdown before any digit left over
# is reported; the order matters only where one pattern contains another (code first).
ALLOWED: dict[str, str] = {
    # Code: parameter names and values, paths, commands and example actions are shown as code.
    r"```.*?```": "fenced code",
    r"`[^`]+`": "inline code (it may wrap onto the next line)",
    # Math: a formula's constants (1 - cosine similarity, label -100) are definitions, typeset as math.
    r"\$[^$\n]+\$": "inline math",
    # The book's own chapters: "chapter 04", "notebooks 01 and 05", "chapters 01, 04 and 05", "01/04/05".
    r"\b(?:[Cc]hapters?|[Nn]otebooks?)\s+\d{2}(?:(?:,\s*|\s+and\s+|\s+or\s+)\d{2})*\b": "chapter numbers",
    r"\b\d{2}(?:/\d{2})+\b": "chapter numbers",
    # The paper and its parts: "ICLR 2025", "arXiv 2501.01702", "Table 3", "Figure 2b", "§15.1", "§2-§7".
    r"\bICLR \d{4}\b": "the citation",
    r"\barXiv \d{4}\.\d{4,5}\b": "the citation",
    r"\b(?:Tables?|Figures?|Fig\.)\s+\d+[a-z]?\b": "a table or figure of the paper",
    r"§\d+(?:\.\d+)*(?:\s*-\s*§\d+(?:\.\d+)*)?": "a section of method.md",
    # Names with digits in them: rules R1-R5 and the paper's P1-P5, models (SmolLM2-135M-Instruct, GPT-4o,
    # LLaMA-3-8B, all-MiniLM-L6-v2), sizes glued to a unit (8B, 135M), versions (perturb-v1), metric names
    # (distinct-1/2). A digit glued to a letter is part of a name; a result stands alone as a number.
    r"\bdistinct-\d(?:/\d)?": "metric names",
    r"\b[A-Za-z][\w.]*?-?\d[\w.]*(?:-[\w.]+)*": "a name with a digit in it",
    r"\b\d+(?:\.\d+)?[A-Za-z]\w*": "a size with its unit (8B, 135M)",
    # The confidence level of every interval in the book (a fixed choice, not an outcome).
    r"\b95\s?%": "the confidence level",
    # Step limits stated as the setting they are ("AgentBoard caps agents at 30 steps", "3-step episodes").
    r"\b(?:at|up to|at most|for)\s+\d+\s+steps\b": "a step limit",
    # Detector thresholds stated with their definition ("3+ times", "3 or more times").
    r"\b\d+\+(?=\s+times)|\b\d+(?= or more times)": "a detector's threshold",
    # Numbered lists in the prose's structure.
    r"(?m)^\s*\d+\.\s": "a list number",
    # Claim labels: "(a)-(e)" have no digits; "2-D" maps (t-SNE) name a dimension.
    r"\b2-D\b": "a map's dimension",
}
_ALLOWED = [re.compile(p, re.S) for p in ALLOWED]
_DIGIT = re.compile(r"[^\s]*\d[^\s]*")

# Notebooks whose prose still types numbers, each with the reason it is allowed for now (empty: every
# chapter's prose is checked). Remove a notebook from here when its prose is fixed: the last test says when.
OFFENDERS: dict[str, str] = {}


def typed_numbers(markdown: str) -> list[str]:
    """The words of ``markdown`` that still hold a digit once every ``ALLOWED`` pattern is removed, each with
    a few words of context."""
    text = markdown
    for pattern in _ALLOWED:
        text = pattern.sub(" ", text)
    words = text.split()
    return [" ".join(words[max(0, i - 4):i + 4]) for i, w in enumerate(words) if _DIGIT.fullmatch(w)]


def notebook_typed_numbers(path: Path) -> list[str]:
    cells = nbformat.read(path, as_version=4).cells
    return [f"cell {i}: ...{hit}..." for i, c in enumerate(cells) if c.cell_type == "markdown"
            for hit in typed_numbers(c.source)]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=pytest.mark.skip(reason=OFFENDERS[p.stem]))
                                  if p.stem in OFFENDERS else pytest.param(p, id=p.stem) for p in NOTEBOOKS])
def test_no_result_number_is_typed_in_a_notebooks_prose(path):
    assert notebook_typed_numbers(path) == []


@pytest.mark.parametrize("sentence", [
    "refine beats expert_only by 12.5 points",
    "Success rose to 40% on the held-out suites.",
    "The memorising model solved 3 of 8 episodes.",
    "The difference is +0.3 (CI 0.1 to 0.5).",
    "AgentRefine's success does not drop (44.8 vs 48.5).",
])
def test_a_typed_result_is_caught(sentence):
    assert typed_numbers(sentence), sentence


@pytest.mark.parametrize("label", [
    "## Held-in vs held-out (chapter 04)", "Claims (a)-(d) come from chapters 01, 04 and 05.",
    "Fu et al., ICLR 2025 (arXiv 2501.01702)", "the paper's Table 3 and Figure 2b (method.md §15.3, §2-§7)",
    "rules R1-R5, not the paper's P1-P5", "`max_steps = 30` and `scale=\"agentboard\"`",
    "the 95% bootstrap interval", "SmolLM2-135M-Instruct, LLaMA-3-8B-Instruct, GPT-4o, 8B models",
    "AgentBoard caps agents at 30 steps", "the same action 3+ times", "1. the gap\n2. the taxonomy",
    "$1 - \\cos$ of the embeddings", "```python\nx = 3\n```", "`take apple 1\n  from countertop 1`",
    "distinct-1/2 of the words, all-MiniLM-L6-v2 embeddings",
])
def test_labels_that_are_not_results_pass(label):
    assert typed_numbers(label) == []


def test_the_debt_list_names_only_notebooks_that_still_type_numbers():
    """An entry of ``OFFENDERS`` whose notebook is clean must be removed, so that the test runs on it."""
    clean = [p.stem for p in NOTEBOOKS if p.stem in OFFENDERS and not notebook_typed_numbers(p)]
    assert not clean, f"remove {clean} from OFFENDERS in tests/test_book_prose.py: their prose is fixed"
    assert set(OFFENDERS) <= {p.stem for p in NOTEBOOKS}


def test_a_sentence_planted_in_a_clean_notebook_fails_it(tmp_path):
    clean = next(p for p in NOTEBOOKS if p.stem not in OFFENDERS)
    nb = nbformat.read(clean, as_version=4)
    assert notebook_typed_numbers(clean) == []
    nb.cells.append(nbformat.v4.new_markdown_cell("So refine beats expert_only by 12.5 points."))
    nbformat.write(nb, tmp_path / clean.name)
    assert notebook_typed_numbers(tmp_path / clean.name) == [
        f"cell {len(nb.cells) - 1}: ...refine beats expert_only by 12.5 points...."]
