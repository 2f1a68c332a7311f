"""The paper's five claims as hypotheses, tested on paired episodes with a verdict rule fixed in advance.

Each claim is data (a :class:`Claim`: hypothesis, per-episode metric, the two models, the suites, the
claimed direction, the paper's corresponding number), so the results chapter states them before it shows
any outcome, then computes for each the paired difference, its 95% bootstrap interval and a verdict::

    table = claims.claim_table(episodes)          # metrics.episode_table + the failure-mode step counts
    verdicts = claims.evaluate_claims(table)      # one row per (claim, metric), in points
    print(findings.explain(verdicts))             # what this shows / does not / what scale would decide
    plots.plot_verdicts(verdicts[verdicts.claim == "a"])   # refinelib.report.plots

**Paired design.** Every model plays the same instances, compared episode by episode (key: suite,
instance, seed, perturbation, sample): what makes an instance hard is shared and cancels in the
difference. A key one model lacks is an error, never a smaller sample. Over several suites the mean is a
macro mean (each suite weighs the same, as in the paper's multi-task means), resampled within suites.

**Verdict rule** (:func:`verdict`), on the 95% percentile-bootstrap interval of the difference, oriented
so that the claimed direction is positive:

1. fewer than ``MIN_PAIRS`` pairs: *inconclusive* (a bootstrap of so few values covers less than it says);
2. the interval lies entirely above 0: *reproduced*;
3. it lies entirely below 0: *contradicted* (the opposite effect);
4. it lies inside ±``MARGIN`` and the run has the pairs an equivalence reading needs at the planning SD
   (:func:`pairs_for_equivalence`): *contradicted*, no effect of ``MARGIN`` or more (TOST-style: two
   one-sided tests at 2.5% each). The pair count keeps a floor effect (every pair 0 - 0, an interval of
   width 0) from passing for proof of no effect;
5. otherwise *inconclusive*.

Percentile intervals because the statistic is a mean of bounded differences (near normal from ~20 pairs),
every other table of the book uses them (:func:`metrics.bootstrap_ci`), and BCa's acceleration estimate
is unstable on few, tied 0/1 values; their coverage is a little below 95% at small n (tested).

**Power** (:mod:`refinelib.analysis.power`): n pairs whose differences have SD σ detect, two-sided at
α = 0.05 with power 0.8, a mean difference of (z₀.₉₇₅ + z₀.₈) σ / √n = 2.80 σ / √n. Rule 2 is that test
(an interval above 0 is a one-sided test at 2.5%). The designs (:mod:`refinelib.analysis.design`) and
docs/experiment_design.md show the tables.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from refinelib.analysis import metrics, reference, tables, taxonomy
from refinelib.analysis.power import ALPHA, POWER, effective_pairs, pairs_for_equivalence, z
from refinelib.analysis.reference import paper_ablation_table
from refinelib.eval.evaluate import ORIGINAL
from refinelib.schema import EPISODE_KEY

# ----- the decision rule, fixed before any outcome is seen ----------------------------------------------
MARGIN = 0.10  # δ, 10 points: smaller than every difference the paper reports for these claims (tested)
MIN_PAIRS = 10  # rule 1
N_BOOT = 2000  # Monte Carlo SE of each interval end ≈ 0.06 standard errors: < 1 point from 20 pairs
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "reproduced", "contradicted", "inconclusive", "not run"
PAIR_KEY = [k for k in EPISODE_KEY if k != "policy"]  # the same game played by two models
UNIT_KEY = [k for k in PAIR_KEY if k != "perturbation"]  # one instance across the perturbation settings
HELD_OUT = ("babyai", "sciworld", "pddl", "textadventure")  # the paper's four held-out tasks of Agent-FLAN
FIVE_TASKS = ("household_held_in", *HELD_OUT)  # the paper's five tasks, ALFWorld first
RULES = ("R1", "R2", "R3", "R4", "R5")  # perturb-v1's household rules (R6 is a control)


# ----- planning SDs of a paired difference: the power calculation's σ, chosen before the run ------------
def success_sd(discordance: float = 0.5, effect: float = 0.0) -> float:
    """SD of a paired success difference (-1, 0 or +1 per pair): √(ψ - Δ²) for discordance ψ. ψ = 1/2 is
    the worst case for two models independent on an instance (both at 50%); the usual positive
    correlation (hard instances are hard for both) only lowers it."""
    return math.sqrt(discordance - effect**2)


SUCCESS_SD = success_sd()  # 0.71
# Progress and per-episode step rates lie in [0, 1]: planned as spread as a uniform (SD 1/√12), the two
# models independent: σ = √(2/12) = 0.41 (all mass on 0 and 1 would be the success case above).
RATE_SD = math.sqrt(2 / 12)


def did_sd(rules: int = len(RULES)) -> float:
    """Planning SD of claim (d)'s per-instance (F₀ - S₀) - mean over rules of (F_r - S_r), each model
    difference with variance 1/2 as for success."""
    return math.sqrt(0.5 * (1 + 1 / rules))


# ----- per-episode metrics: functions of an episode table, fractions --------------------------------------
def _column(column: str, t: pd.DataFrame) -> pd.Series:
    if column not in t.columns:
        raise ValueError(f"the table has no {column!r} column: build it with claims.claim_table(episodes)")
    return t[column].astype(float)


def _share(column: str, t: pd.DataFrame) -> pd.Series:
    return _column(column, t) / t["steps"].where(t["steps"] > 0)  # NaN for an episode with no step


success, progress, grounding = (partial(_column, c) for c in ("success", "progress", "grounding_accuracy"))
household_format_rate = partial(_share, "household_format_steps")  # memorised format (Fig. 2)
repeated_failed_action_rate = partial(_share, "repeated_failed_steps")  # one rejected action 3+ times


def invalid_action_rate(t: pd.DataFrame) -> pd.Series:
    """Share of steps the environment did not accept, rejected or unparsable (method.md §11)."""
    return 1 - grounding(t)


def claim_table(episodes: Iterable) -> pd.DataFrame:
    """:func:`metrics.episode_table` plus, from :func:`taxonomy.failure_modes`, the steps showing each
    mode: ``household_format_steps`` (memorised format) and ``repeated_failed_steps``."""
    episodes = list(episodes)
    table, found = metrics.episode_table(episodes), taxonomy.failure_modes(episodes)
    ids = ["policy", *PAIR_KEY]
    for mode, column in ((taxonomy.MEMORISED_FORMAT, "household_format_steps"),
                         (taxonomy.REPEATED_FAILED_ACTION, "repeated_failed_steps")):
        steps = found[found["mode"] == mode].set_index(ids)["n_steps"]
        table[column] = table.set_index(ids).index.map(steps).fillna(0).astype(int)
    return table


# ----- the paper's corresponding differences (fractions), from the reference tables ------------------------
def _paper_main(first: str, second: str, suites: Sequence[str], column: str) -> float:
    t = reference.paper_main_table()
    tasks = [tables.PAPER_TASK[s] for s in suites]
    mean = {m: t[(t.model == m) & t.task.isin(tasks)][column].mean() for m in (first, second)}
    return (mean[first] - mean[second]) / 100


def _paper_robustness(statistic: str) -> float:
    settings = reference.paper_robustness_table().xs("success", level="metric")[
        ["original", "P1", "P2", "P3", "P4", "P5"]]
    if statistic == "did":  # drop = original - mean over the rules; Agent-FLAN's minus AgentRefine's
        value = settings["original"] - settings.drop(columns="original").mean(axis=1)
    else:  # population std over the six settings, as ours (the printed column fits no formula)
        value = settings.std(axis=1, ddof=0)
    return (value["Agent-FLAN"] - value["AgentRefine"]) / 100


def _paper_ablation(column: str) -> float:
    t = paper_ablation_table().groupby("variant")[column].mean()
    return (t["AgentRefine"] - t["w erroneous loss"]) / 100


# ----- the claims -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One hypothesis: ``direction`` · (metric of ``models[0]`` - metric of ``models[1]``) > 0."""

    id: str  # "a" ... "e"; rows sharing an id are one claim, its ``primary`` row gives the verdict
    name: str
    metric: str  # the metric's name in tables and sentences
    measure: Callable[[pd.DataFrame], pd.Series]  # per-episode value, a fraction, from an episode table
    models: tuple[str, str]
    suites: tuple[str, ...]
    planning_sd: float | None  # the power calculation's σ (None: no closed form, no equivalence reading)
    paper: Callable[[], float] | None = None  # the paper's corresponding difference, a fraction
    paper_label: str = "the paper gives no number"
    statistic: str = "mean"  # "mean" of paired differences | "did" | "rule_std" (claim d)
    primary: bool = True
    direction: int = 1
    margin: float = MARGIN
    rules: tuple[str, ...] = ()  # perturbation rules (claim d)
    # Which episodes test it (a key of the mapping evaluate_claims takes): "evaluation", the shared logs of
    # chapters 01/04/05; "ablations", chapter 07's own (its variants are trained and played there).
    source: str = "evaluation"

    @property
    def hypothesis(self) -> str:
        rules = "/".join(self.rules)
        what = {"mean": self.metric, "did": f"drop in {self.metric} under {rules}",
                "rule_std": f"std of {self.metric} over the original and {rules}"}[self.statistic]
        return (f"({self.id}) {self.name}: {self.models[0]} - {self.models[1]}, {what} on "
                f"{', '.join(self.suites)}, {'>' if self.direction > 0 else '<'} 0")


_T1, _FIG2 = "the paper's Table 1", "the paper shows it qualitatively (Fig. 2)"
_T2 = "the paper's Table 2: AgentRefine - w erroneous loss, five-task mean"
_FLAN, _BASE, _REFINE = "Agent-FLAN (L3-8B)", "LLaMA-3-8B-Instruct", "AgentRefine (L3-8B)"
_T3 = "the paper's Table 3 (its P1-P5, not our R1-R5): Agent-FLAN - AgentRefine, ALFWorld success"
_HI, _EO_B = ("household_held_in",), ("expert_only", "base")  # suites; (first, second) model pairs
_EO_R, _R_EO = ("expert_only", "refine"), ("refine", "expert_only")
CLAIMS: tuple[Claim, ...] = (
    Claim("a", "memorisation", "progress", progress, _EO_B, _HI, RATE_SD,
          partial(_paper_main, _FLAN, _BASE, _HI, "progress_rate"), f"{_T1}: {_FLAN} - {_BASE}, ALFWorld"),
    Claim("a", "memorisation", "success", success, _EO_B, _HI, SUCCESS_SD,
          partial(_paper_main, _FLAN, _BASE, _HI, "success_rate"), f"{_T1}: {_FLAN} - {_BASE}, ALFWorld",
          primary=False),
    # (b): each rate is a share of rejected steps, and the invalid-action rate holds the other two; it is
    # primary (the most power), the two detectors say which failure it was.
    Claim("b", "held-out collapse", "invalid-action rate", invalid_action_rate, _EO_R, HELD_OUT, RATE_SD,
          paper_label=_FIG2),
    Claim("b", "held-out collapse", "household-format rate", household_format_rate, _EO_R, HELD_OUT,
          RATE_SD, paper_label=_FIG2, primary=False),
    Claim("b", "held-out collapse", "repeated-failed-action rate", repeated_failed_action_rate, _EO_R,
          HELD_OUT, RATE_SD, paper_label=_FIG2, primary=False),
    Claim("c", "refinement generalises", "progress", progress, _R_EO, HELD_OUT, RATE_SD,
          partial(_paper_main, _REFINE, _FLAN, HELD_OUT, "progress_rate"),
          f"{_T1}: {_REFINE} - {_FLAN}, mean progress over BabyAI, SciWorld, PDDL, Jericho"),
    Claim("c", "refinement generalises", "grounding accuracy", grounding, _R_EO, HELD_OUT, RATE_SD,
          primary=False),
    Claim("d", "robustness", "success", success, _EO_R, _HI, did_sd(), partial(_paper_robustness, "did"),
          f"{_T3}, difference of the drops", statistic="did", rules=RULES),
    Claim("d", "robustness", "success", success, _EO_R, _HI, None, partial(_paper_robustness, "rule_std"),
          f"{_T3}, difference of the population stds", statistic="rule_std", rules=RULES, primary=False),
    Claim("e", "the mask matters", "progress", progress, ("refine", "erroneous_loss"), FIVE_TASKS, RATE_SD,
          partial(_paper_ablation, "progress_rate"), _T2, source="ablations"),
    Claim("e", "the mask matters", "success", success, ("refine", "erroneous_loss"), FIVE_TASKS, SUCCESS_SD,
          partial(_paper_ablation, "success_rate"), _T2, primary=False, source="ablations"),
)


def with_models(models: Mapping[str, Sequence[str]], claims: Sequence[Claim] = CLAIMS) -> list[Claim]:
    """``claims`` with the models of some replaced: ``{claim id: (first, second)}`` (e.g. a smoke run's
    reference policies, to exercise the verdicts on what it played)."""
    return [dataclasses.replace(c, models=tuple(models[c.id])) if c.id in models else c for c in claims]


# ----- pairing --------------------------------------------------------------------------------------------
def paired_units(table: pd.DataFrame, claim: Claim) -> pd.DataFrame | None:
    """The claim's paired units: per pair key, columns ``first`` and ``second`` (the two models' values);
    for claim (d) per instance, columns ``(model, setting)``. None when a model has no episode on the
    claim's suites (not run); a key one model lacks (or has twice) raises one ValueError naming them."""
    settings = ["original", *claim.rules]
    rows = table[table.suite.isin(claim.suites) & table.policy.isin(claim.models)]
    rows = rows.assign(setting=rows.perturbation.map(tables.short_rule))
    rows = rows[rows.setting.isin(settings)]
    if set(rows.policy) != set(claim.models):
        return None
    ids = rows.groupby("setting").perturbation.nunique()  # e.g. two versions of the rule set
    if (ids > 1).any():
        raise ValueError(f"claim ({claim.id}): one rule under several ids: {sorted(ids.index[ids > 1])}")
    perturbation = {"original": ORIGINAL} | dict(zip(rows.setting, rows.perturbation, strict=True))
    if claim.rules and len(perturbation) == 1:  # the robustness chapter did not play these models
        return None
    if len(perturbation) < len(settings):
        raise ValueError(f"claim ({claim.id}): no episode under {sorted(set(settings) - set(perturbation))}")
    # The design's units: for (d) the instances played under some rule (the evaluation chapters also play
    # other instances with the original prompt only; those are outside the robustness design).
    perturbed = rows[rows.setting != "original"] if claim.rules else rows
    units = set(perturbed[UNIT_KEY].itertuples(index=False, name=None))
    rows = rows[rows.set_index(UNIT_KEY).index.isin(list(units))]
    expected = {(s, i, seed, perturbation[st], sample) for s, i, seed, sample in units for st in settings}
    problems = []
    for model in claim.models:
        keys = list(rows.loc[rows.policy == model, PAIR_KEY].itertuples(index=False, name=None))
        if len(keys) != len(set(keys)):
            problems.append(f"{model} has {len(keys) - len(set(keys))} duplicate episodes")
        if lacking := sorted(expected - set(keys), key=str):
            problems.append(f"{model} lacks {len(lacking)} of {len(expected)}: {lacking[:3]}")
    if problems:
        raise ValueError(f"claim ({claim.id}) {claim.metric}: episodes do not pair ({'; '.join(problems)}); "
                         f"every model must play the same {', '.join(PAIR_KEY)}")
    wide = rows.assign(value=claim.measure(rows)).pivot(
        index=UNIT_KEY if claim.rules else PAIR_KEY, columns=["policy", "setting"], values="value")
    if not claim.rules:
        wide.columns = ["first" if m == claim.models[0] else "second" for m, _ in wide.columns]
    return wide.dropna().reset_index()  # a NaN value (an episode with no step) leaves its pair out


# ----- statistics and the verdict -------------------------------------------------------------------------
def _estimate(units: pd.DataFrame, claim: Claim, n_boot: int, seed: int) -> tuple[float, float, float]:
    """(estimate, lo, hi) of the claim's statistic, resampling units (within suites: a macro mean)."""
    if claim.statistic == "rule_std":  # a function of per-setting means: resample instances here
        draws = np.random.default_rng(seed).integers(0, len(units), size=(n_boot, len(units)))
        point, boot = 0.0, np.zeros(n_boot)
        for model, sign in zip(claim.models, (1, -1), strict=True):
            m = units[model].to_numpy()  # (instances, settings)
            point += sign * m.mean(axis=0).std()
            boot += sign * m[draws].mean(axis=1).std(axis=1)
        lo, hi = np.percentile(boot, [50 * ALPHA, 100 - 50 * ALPHA])
        return point, float(lo), float(hi)
    if claim.statistic == "did":  # per instance: the first model's drop minus the second's
        drop = [units[m]["original"] - units[m][list(claim.rules)].mean(axis=1) for m in claim.models]
        diff = (drop[0] - drop[1]).to_numpy()
    else:
        diff = (units["first"] - units["second"]).to_numpy()
    strata = units["suite"].to_numpy()
    lo, hi = metrics.bootstrap_ci(diff, n_boot, seed, 1 - ALPHA, strata)
    return float(pd.Series(diff).groupby(strata).mean().mean()), lo, hi


def pairs_text(n: int) -> str:
    """``"1 pair"``, ``"12 pairs"``."""
    return "1 pair" if n == 1 else f"{n} pairs"


def verdict(lo: float, hi: float, n: int, direction: int = 1, margin: float = MARGIN,
            n_equivalence: float = math.inf, min_pairs: int = MIN_PAIRS) -> tuple[str, str]:
    """(verdict, reason) for a difference's interval [lo, hi] from n pairs, by the module docstring's rule;
    ``n_equivalence``: the pairs an equivalence reading needs (inf: never)."""
    lo, hi = sorted((direction * lo, direction * hi))  # the claimed direction is positive from here on
    points = f"±{100 * margin:.0f} points"
    if n < min_pairs:
        return INCONCLUSIVE, f"{pairs_text(n)}, fewer than the {min_pairs} a verdict needs"
    if lo > 0:
        return REPRODUCED, "the 95% interval lies on the claimed side of 0" + (
            f", all of it inside {points}" if hi < margin else "")
    if hi < 0:
        return CONTRADICTED, "the 95% interval lies on the opposite side of 0"
    if -margin < lo and hi < margin:
        if n >= n_equivalence:
            return CONTRADICTED, f"the 95% interval lies inside {points} (TOST-style equivalence)"
        why = (f"equivalence needs {n_equivalence} pairs" if math.isfinite(n_equivalence) else
               "this statistic has no equivalence reading")
        return INCONCLUSIVE, f"the interval lies inside {points}, but {why}"
    return INCONCLUSIVE, "the 95% interval includes 0"


def _scale(n: int, se: float, estimate: float, c: Claim, need_eq: float) -> dict:
    """What this run could detect and the pairs a decision would need, from the run's own standard error
    (read off the interval; for an interval of width 0, every pair alike, the planning SD stands in)."""
    se = se or (c.planning_sd or math.nan) / math.sqrt(n)
    if math.isnan(se):
        return {}
    detect, equivalent = z(1 - ALPHA / 2) + z(POWER), z(1 - ALPHA / 2) + z((1 + POWER) / 2)
    target = max(abs(estimate), c.margin)  # an effect below the margin is not worth detecting
    # at least MIN_PAIRS: rule 1 gives no verdict below it, however large the effect
    out = {"mde": 100 * detect * se,
           "pairs_to_detect": max(MIN_PAIRS, math.ceil(n * (detect * se / target) ** 2))}
    if c.planning_sd:
        out["pairs_for_equivalence"] = max(need_eq, math.ceil(n * (equivalent * se / c.margin) ** 2))
    return out


COLUMNS = ["claim", "name", "metric", "statistic", "primary", "hypothesis", "first", "second", "suites",
           "suite_pairs", "n_pairs", "difference", "ci_lo", "ci_hi", "margin", "direction", "verdict",
           "reason", "paper_difference", "paper_label", "mde", "pairs_to_detect", "pairs_for_equivalence"]


def evaluate_claims(table: pd.DataFrame | Mapping[str, pd.DataFrame], claims: Sequence[Claim] = CLAIMS,
                    n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One row per claim and metric (``COLUMNS``): the paired difference, its 95% interval, the verdict.

    Args:
        table: a :func:`claim_table` (a :func:`metrics.episode_table` when no claim needs the detectors),
            or ``{source: table}`` to test each claim on its :attr:`Claim.source`'s episodes (a source
            missing from the mapping: the claim was not run).
        claims: what to test (``dataclasses.replace`` a claim to change its models or suites).
        n_boot, seed: the bootstrap.

    Returns:
        Differences, intervals, the margin and the paper's difference in points (fractions x 100); ``mde``
        is the difference this run could detect, ``pairs_to_detect`` the pairs that would detect
        ``max(|difference|, margin)``, ``pairs_for_equivalence`` those an equivalence reading would need.
        A claim whose models were not both played gets the verdict "not run". ``suites`` names the suites
        the pairs come from (the claim's suites that were played), ``suite_pairs`` ``{suite: pairs}``.
    """
    tables = table if isinstance(table, Mapping) else None
    rows = []
    for c in claims:
        row = {"claim": c.id, "name": c.name, "metric": c.metric, "statistic": c.statistic,
               "primary": c.primary, "hypothesis": c.hypothesis, "first": c.models[0], "second": c.models[1],
               "suites": ", ".join(c.suites), "suite_pairs": {}, "margin": 100 * c.margin,
               "direction": c.direction, "paper_difference": 100 * c.paper() if c.paper else math.nan,
               "paper_label": c.paper_label}
        own = table if tables is None else tables.get(c.source)
        units = None if own is None else paired_units(own, c)
        if units is None or units.empty:
            rows.append(row | {"n_pairs": 0, "verdict": NOT_RUN, "reason": _not_run(own, c)})
            continue
        counts = units["suite"].value_counts()
        row |= {"suites": ", ".join(s for s in c.suites if s in counts.index),
                "suite_pairs": {s: int(counts[s]) for s in c.suites if s in counts.index}}
        estimate, lo, hi = _estimate(units, c, n_boot, seed)
        n = len(units)
        need_eq = math.inf  # in pairs of this run's shape: a macro mean over unequal suites is worth fewer
        if c.planning_sd:
            need_eq = math.ceil(pairs_for_equivalence(c.margin, c.planning_sd) * n
                                / effective_pairs(units["suite"].value_counts()))
        label, reason = verdict(lo, hi, n, c.direction, c.margin, need_eq)
        rows.append(row | {"n_pairs": n, "difference": 100 * estimate, "ci_lo": 100 * lo, "ci_hi": 100 * hi,
                           "verdict": label, "reason": reason,
                           **_scale(n, (hi - lo) / (2 * z(1 - ALPHA / 2)), estimate, c, need_eq)})
    counts = ["n_pairs", "pairs_to_detect", "pairs_for_equivalence"]  # whole numbers, missing where not run
    return pd.DataFrame(rows).reindex(columns=COLUMNS).astype(dict.fromkeys(counts, "Int64"))


def _not_run(table: pd.DataFrame | None, c: Claim) -> str:
    """Why claim ``c`` has no pairs in ``table``."""
    if table is None:
        return f"no {c.source} episodes in this build"
    played = table[table.suite.isin(c.suites)].policy
    missing = [m for m in c.models if not (played == m).any()]
    if missing:
        return f"no episodes of {', '.join(missing)}"
    return f"no episode under {'/'.join(c.rules)}" if c.rules else "no pair with a value"


def hypotheses_table(claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """The claims as stated before any outcome: per claim its hypothesis (primary metric), the secondary
    metrics reported next to it, the planning SD, and the paper's corresponding difference, labelled."""
    rows = []
    for c in (c for c in claims if c.primary):
        others = [o.metric + ("" if o.statistic == "mean" else f" ({o.statistic})")
                  for o in claims if o.id == c.id and not o.primary]
        rows.append({"hypothesis": c.hypothesis, "also reported": ", ".join(others),
                     "planning SD": round(c.planning_sd, 3),
                     "the paper's difference (points)": round(100 * c.paper(), 1) if c.paper else "",
                     "the paper's source": c.paper_label})
    return pd.DataFrame(rows)


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """:func:`evaluate_claims` for reading: per row the models, the suites the pairs come from, pairs,
    the difference and its interval (points, one decimal), the verdict and its reason, and the paper's
    corresponding difference in columns labelled as the paper's. Primary metrics first within a claim."""
    v = verdicts.sort_values(["claim", "primary"], ascending=[True, False], kind="stable")
    ran = v.verdict != NOT_RUN
    what = {"mean": "", "did": ", drop under the rules", "rule_std": ", std over the settings"}
    metric = [f"{m}{what[s]}{'' if p else ' *'}" for m, s, p in zip(v.metric, v.statistic, v.primary,
                                                                      strict=True)]
    return pd.DataFrame({
        "claim": [f"({c})" for c in v.claim], "metric": metric,
        "first - second": v["first"] + " - " + v["second"], "suites": v.suites, "pairs": v.n_pairs,
        "difference (points)": v.difference.where(ran).round(1),
        "95% CI (points)": [f"{lo:+.1f} to {hi:+.1f}" if r else "" for lo, hi, r in
                            zip(v.ci_lo, v.ci_hi, ran, strict=True)],
        "verdict": v.verdict, "reason": v.reason,
        "the paper's difference (points)": v.paper_difference.round(1), "the paper's source": v.paper_label,
    }).reset_index(drop=True)


