"""Statistics over seeds: median and spread, paired tests between recipes, Holm–Bonferroni.

GLUE dev scores move by points between seeds, so a recipe is summarised by its median, and two
recipes are compared seed by seed: seed s of both shares the data, caps and (for students) the
teacher of seed s, which makes the comparison paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import ttest_rel


@dataclass
class Spread:
    median: float
    low: float
    high: float
    n: int

    @property
    def half_range(self) -> float:
        return (self.high - self.low) / 2


def spread(values: Sequence[float]) -> Spread:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(float(np.median(v)), float(v.min()), float(v.max()), len(v))


def paired_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean difference a - b over paired seeds, and the two-sided paired t-test p-value.

    Why a t-test: with 3-5 seeds the Wilcoxon signed-rank test cannot reach p < 0.05 at all
    (its smallest two-sided p with 3 pairs is 0.25), while the t-test on paired differences can;
    it assumes roughly normal differences, which we state next to every table. With fewer than
    two pairs, or identical differences, p is nan.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same seeds on both sides ({len(a)} vs {len(b)})")
    diff = a - b
    mean = float(diff.mean()) if len(diff) else math.nan
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return mean, math.nan
    return mean, float(ttest_rel(a, b).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (nan stays nan and does not count as a test).

    Sort the m p-values; the i-th smallest (0-based) is multiplied by m - i, and the adjusted
    values are made non-decreasing in that order and capped at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), math.nan)
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[int, int, float]:
    """Two classifiers on the same examples: (examples only a gets right, only b gets right, exact p).

    Why McNemar: an ensemble is one model, not a sample over seeds, so it is compared with each member
    example by example. Under "equally accurate" the discordant examples split 50/50; the exact two-sided
    binomial p-value on that split. p is nan when no example is discordant.
    """
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same examples on both sides ({len(a)} vs {len(b)})")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return only_a, only_b, math.nan
    from scipy.stats import binomtest

    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
