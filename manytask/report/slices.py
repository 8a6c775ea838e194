"""A study report's slice tables: each slice's score per recipe (median over seeds) and the report's
comparisons repeated on each slice, flagged where the slice is under its task's ``slices.min_size``."""

from __future__ import annotations

import math

from manytask.config import SMALL_SLICE
from manytask.distill.recipes import StudyConfig
from manytask.evaluation.stats import holm, paired_test, spread


def slice_min_sizes(cfg: StudyConfig) -> dict[str, int]:
    """Each task's ``slices.min_size``: a slice with fewer members is flagged as too small to read."""
    return {e.name: e.slices.min_size for e in cfg.tasks if e.slices is not None}


def slice_rows(cfg: StudyConfig, scores: dict, primary: dict, min_sizes: dict[str, int]) -> list[dict]:
    """Per recipe, task and slice: the median over seeds of the task's primary metric on the slice's members."""
    rows = []
    for r in cfg.recipes:
        for (task, split, name), per_seed in slice_values(scores.get(r.name, {}), primary).items():
            values = [per_seed[s] for s in sorted(per_seed)]
            st = spread([v for _, v in values])
            rows.append({"recipe": r.name, "task": task, "split": split, "slice": name, "n": values[0][0],
                         "min_size": min_sizes.get(task, SMALL_SLICE),
                         "median": st.median, "half_range": st.half_range, "seeds": len(values)})
    return rows


def slice_values(per_seed: dict, primary: dict) -> dict[tuple[str, str, str], dict[int, tuple[int, float]]]:
    """(task, split, slice) -> seed -> (slice size, the task's primary metric x100 on the slice's members)."""
    found: dict[tuple[str, str, str], dict[int, tuple[int, float]]] = {}
    for seed, s in per_seed.items():
        for task, splits in s["tasks"].items():
            for split, metrics in splits.items():
                for name, m in metrics.get("slices", {}).items():
                    value = m.get(primary.get(task, ""))
                    found.setdefault((task, split, name), {})[seed] = (m["n"], math.nan if value is None else 100 * value)
    return found


def slice_comparisons(comparisons: list[dict], scores: dict, primary: dict, min_sizes: dict[str, int]) -> list[dict]:
    """The report's comparisons on each slice both recipes scored: mean paired difference over seeds and
    the paired t-test, Holm–Bonferroni over this table (a family of its own: slices are read apart from
    the task scores, and their few members make each test weak)."""
    rows = []
    for c in comparisons:
        a, b = slice_values(scores[c["recipe"]], primary), slice_values(scores[c["baseline"]], primary)
        for key in sorted(set(a) & set(b)):
            seeds = sorted(set(a[key]) & set(b[key]))
            diff, p = paired_test([a[key][s][1] for s in seeds], [b[key][s][1] for s in seeds])
            task, split, name = key
            rows.append({"recipe": c["recipe"], "baseline": c["baseline"], "task": task, "split": split,
                         "slice": name, "n": a[key][seeds[0]][0] if seeds else 0,
                         "min_size": min_sizes.get(task, SMALL_SLICE), "seeds": seeds, "diff": diff, "p": p})
    for r, q in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = q
    return rows
