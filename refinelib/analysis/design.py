"""The experiment's designs: what each size of the book can detect, decided before any outcome is seen.

A :class:`Design` is what the chapters' parameters play (suites, pairs per suite, the robustness and
ablation instances); :func:`design_table` gives, per claim, the pairs each design has and the difference
they can detect (:mod:`refinelib.analysis.power` at the claim's planning SD), and :func:`run_design` the
same for the pairs a run actually had. docs/experiment_design.md is printed from here
(:func:`design_markdown`), and a test fails when the two disagree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from refinelib.analysis.claims import CLAIMS, FIVE_TASKS, RATE_SD, SUCCESS_SD, Claim, did_sd
from refinelib.analysis.power import effective_pairs, mde, pairs_for_equivalence


@dataclass(frozen=True)
class Design:
    """One size of the experiment, as the chapters' parameters set it (``tests/test_claims.py`` checks that
    the notebooks' defaults and each profile's files say the same)."""

    profile: str  # the make variable PROFILE that runs it
    suites: tuple[str, ...]  # chapters 01 and 04: the suites played by every model ...
    per_suite: int  # ... and the instances of each (capped at the suite's size): claims (a)-(c)
    robustness: int  # chapter 05: household held-in instances under the original prompt and every rule (d)
    ablation_suites: tuple[str, ...]  # chapter 07: the suites its variants play (e) ...
    ablation_per_suite: int  # ... and the instances of each

    def pairs(self, c: Claim, sizes: Mapping[str, int]) -> list[int]:
        """Pairs per suite of claim ``c`` under this design (a suite it does not play: none)."""
        if c.source == "ablations":
            played, n = self.ablation_suites, self.ablation_per_suite
        elif c.rules:
            played, n = ("household_held_in",), self.robustness
        else:
            played, n = self.suites, self.per_suite
        return [min(n, sizes[s]) for s in c.suites if s in played]


DESIGNS = {
    # The default book (<= 60 min on a 2-core CPU): the held-in suite and one held-out suite at 20 pairs
    # each, the floor, rather than five suites with a few each; (d) and (e) get what time is left.
    "default": Design("default", ("household_held_in", "babyai"), 20, 4, ("babyai", "pddl"), 1),
    # Overnight: the paper's five tasks at 60 pairs per suite, (d) at 40 instances, (e) at 20 per task.
    "cpu-long": Design("cpu-long", FIVE_TASKS, 60, 40, FIVE_TASKS, 20),
}


def power_table(ns: Sequence[int] = (10, 20, 30, 40, 60, 80, 100, 150, 200)) -> pd.DataFrame:
    """The minimum detectable paired difference (points) for n pairs at each planning SD."""
    sds = {"success": SUCCESS_SD, "progress, step rates": RATE_SD, "robustness DiD": did_sd()}
    return pd.DataFrame([{"pairs": n, **{f"{k} (SD {sd:.2f})": round(100 * mde(n, sd), 1)
                                         for k, sd in sds.items()}} for n in ns])


def design_table(design: Design, sizes: Mapping[str, int], claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Per primary claim under ``design`` (suite sizes ``sizes``): pairs, effective pairs, the minimum
    detectable difference, the paper's difference and whether the size detects it, and the pairs an
    equivalence reading needs."""
    return pd.DataFrame([_design_row(c, design.pairs(c, sizes)) for c in claims if c.primary])


def _design_row(c: Claim, n: Sequence[int], paper_column: str = "paper (points)") -> dict:
    """What ``n`` pairs per suite (0: a suite not played) can show for claim ``c`` at its planning SD."""
    n = [k for k in n if k > 0]
    effective, paper = (effective_pairs(n) if n else 0.0), 100 * c.paper() if c.paper else math.nan
    detectable = 100 * mde(effective, c.planning_sd) if effective else math.nan
    equivalence = pairs_for_equivalence(c.margin, c.planning_sd)
    return {"claim": f"({c.id}) {c.metric}", "pairs": sum(n), "effective pairs": round(effective),
            "MDE (points)": round(detectable, 1), paper_column: round(paper, 1),
            "detects the paper's effect": ("yes" if detectable <= paper else "no") * bool(c.paper and n),
            "pairs for equivalence": equivalence,
            "equivalence reachable": "yes" if effective >= equivalence else "no"}


def run_design(verdicts: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """:func:`design_table` for the pairs this run has (``verdicts``' ``suite_pairs``): what each primary
    claim's sizes could detect at its planning SD, whatever the outcome, next to the paper's difference
    (labelled as the paper's). A claim not run has no pairs and no MDE."""
    pairs = {r.claim: r.suite_pairs for r in verdicts[verdicts.primary.astype(bool)].itertuples()}
    return pd.DataFrame([_design_row(c, list((pairs.get(c.id) or {}).values()),
                                     "the paper's difference (points)")
                         for c in claims if c.primary and c.id in pairs])


def episode_budget(design: Design, sizes: Mapping[str, int], claims: Sequence[Claim] = CLAIMS) -> pd.Series:
    """Episodes each model plays for ``claims`` under ``design`` (a cell shared by several claims is
    played once; chapter 07's episodes are its own, apart from the shared logs)."""
    cells: dict[tuple, int] = {}
    for c in claims:
        for s in c.suites:
            n = design.pairs(dataclasses.replace(c, suites=(s,)), sizes)
            for key in ((m, s, r, c.source) for m in c.models for r in ("original", *c.rules) if n):
                cells[key] = max(cells.get(key, 0), n[0])  # a prefix of a larger selection: played once
    counts = pd.DataFrame([(m, n) for (m, *_), n in cells.items()], columns=["model", "episodes"])
    return counts.groupby("model").episodes.sum()


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (no extra dependency)."""
    cells = [["" if pd.isna(x) else str(x) for x in row] for row in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(line) + " |"
                     for line in [list(map(str, df.columns)), ["---"] * len(df.columns), *cells])


def design_markdown(sizes: Mapping[str, int] | None = None, claims: Sequence[Claim] = CLAIMS) -> list[str]:
    """docs/experiment_design.md's tables: the hypotheses, power by n, then per design (``DESIGNS``) what
    each claim can detect and the episodes each model plays; ``sizes``: instances per suite (AgentBoard)."""
    if sizes is None:
        from refinelib.envs import registry

        sizes = {s: len(registry.suite(s, "agentboard")) for s in FIVE_TASKS}
    hypotheses = pd.DataFrame([{"hypothesis": c.hypothesis, "planning SD": round(c.planning_sd, 3),
                                "paper (points)": round(100 * c.paper(), 1) if c.paper else "",
                                "the paper's source": c.paper_label} for c in claims if c.primary])
    blocks = [markdown(hypotheses), markdown(power_table())]
    for design in DESIGNS.values():
        blocks += [markdown(design_table(design, sizes, claims)),
                   markdown(episode_budget(design, sizes, claims).reset_index())]
    return blocks
