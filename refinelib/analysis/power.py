"""Power for paired differences: what n pairs can detect, and how many pairs an effect needs.

n pairs whose differences have SD σ detect, two-sided at α = 0.05 with power 0.8, a mean difference of
(z₀.₉₇₅ + z₀.₈) σ / √n = 2.80 σ / √n (:func:`mde`); an effect Δ needs (2.80 σ / Δ)² pairs
(:func:`pairs_needed`); an equivalence reading inside ±δ needs ((z₀.₉₇₅ + z₀.₉) σ / δ)² pairs
(:func:`pairs_for_equivalence`). With several suites of unequal size the macro mean's effective n is
K² / Σ 1/n_k (:func:`effective_pairs`). docs/experiment_design.md shows the tables.

>>> round(100 * mde(20, 0.41), 1)
25.7
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist

ALPHA, POWER = 0.05, 0.8  # the conventional pair; the designs are sized with them


def z(p: float) -> float:
    return NormalDist().inv_cdf(p)


def mde(n: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable mean paired difference: (z(1-α/2) + z(power)) · sd / √n.

    >>> round(mde(100, 1.0), 4)   # (1.96 + 0.8416) / 10
    0.2802
    """
    return (z(1 - alpha / 2) + z(power)) * sd / math.sqrt(n)


def pairs_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """The smallest n whose :func:`mde` is at most ``effect``."""
    return math.ceil(((z(1 - alpha / 2) + z(power)) * sd / abs(effect)) ** 2)


def pairs_for_equivalence(margin: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Pairs for the interval to fall inside ±margin with probability ``power`` when the truth is 0:
    ((z(1-α/2) + z((1+power)/2)) · sd / margin)²."""
    return math.ceil(((z(1 - alpha / 2) + z((1 + power) / 2)) * sd / margin) ** 2)


def effective_pairs(per_suite: Iterable[int]) -> float:
    """What a macro mean over suites of ``per_suite`` pairs is worth: K² / Σ 1/n_k (n for one suite)."""
    n = list(per_suite)
    return len(n) ** 2 / sum(1 / k for k in n)
