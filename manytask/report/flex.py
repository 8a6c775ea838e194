"""Table 2 of Wei et al. for a flex run: per task the dev score and the task's own layers, and the
overhead — transformer layers run per input for all tasks together, their FLOPs, and the share of
one full model per task; plus a score-vs-overhead plot."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from manytask.io import atomic_write_json, atomic_write_text

SETTINGS = [("full", "Full fine-tuning"), ("partial", "w/o KD (best k)")]


def layer_flops(hidden: int, intermediate: int, seq: int) -> int:
    """Multiply-adds x2 of one BERT layer on one input of ``seq`` tokens: Q, K, V and output
    projections, the two feed-forward matrices, and the attention scores and mixing."""
    return 2 * seq * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * seq * seq * hidden


def layers_per_input(branches: list[tuple[int, int]]) -> int:
    """Transformer layers one input runs through for all tasks: the shared frozen trunk once, up to the
    deepest split any task needs, plus every task's own layers. ``branches``: (split depth, layers)."""
    return max(split for split, _ in branches) + sum(layers for _, layers in branches)


def trunk_shape(out: Path) -> dict:
    cfg = json.loads((Path(out) / "bundle" / "trunk" / "config.json").read_text())
    return {"hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"]}


def build(out: Path) -> dict:
    sel = json.loads((Path(out) / "selection.json").read_text())
    flex = yaml.safe_load((Path(out) / "flex.yaml").read_text())
    seq = flex.get("model", {}).get("max_seq_length", 128)
    per_layer = layer_flops(**trunk_shape(out), seq=seq)
    L, tasks = sel["encoder_layers"], sel["tasks"]
    names = list(tasks)
    first = tasks[names[0]]
    settings = [(k, label) for k, label in SETTINGS if k == "partial" or "full" in first["variants"]]
    settings += [(k, k.upper()) for k in sorted(first["selected"]) if k.startswith("kd-")]
    settings.append(("mixed", "mixed"))
    rows = []
    for key, label in settings:
        cells = {}
        for t in names:
            v = tasks[t]["variants"]["full"] if key == "full" else tasks[t]["variants"][tasks[t]["selected"][key]]
            cells[t] = {"score": 100 * v["score"], "layers": v["layers"], "split_depth": v["split_depth"],
                        "variant": "full" if key == "full" else tasks[t]["selected"][key]}
        if key == "full":
            total = L * len(names)
        else:
            total = layers_per_input([(c["split_depth"], c["layers"]) for c in cells.values()])
        rows.append({"setting": key, "label": label, "tasks": cells,
                     "average": sum(c["score"] for c in cells.values()) / len(cells),
                     "layers_total": total, "overhead_pct": 100 * total / (L * len(names)),
                     "gflops_per_input": total * per_layer / 1e9})
    mixed = flex.get("mixed", {})
    return {"encoder_layers": L, "tasks": names, "rows": rows, "skipped": sel.get("skipped", []),
            "flops": {"seq_len": seq, "per_layer": per_layer},
            "teachers": {t: tasks[t].get("teacher") for t in names},
            "mixed_rule": {"delta": mixed.get("delta", 0.5), "rule": mixed.get("rule", "per_layer")}}


RULES = {
    "per_layer": "from the current choice, move to the first setting with more task layers whose gain per added "
                 "layer is ≥ {delta} points (the paper's rule; a dip does not stop the walk)",
    "next_step": "move one rung at a time while the next rung gains ≥ {delta} points in all (manytask's earlier rule)",
}


def markdown(rep: dict, delta: float, titles: dict) -> str:
    names = rep["tasks"]
    rule = rep.get("mixed_rule", {}).get("rule", "per_layer")
    teachers = rep.get("teachers", {})
    metrics = rep.get("primary", {})
    which = (" — " + ", ".join(f"{titles.get(t, t)} {metrics[t]}" for t in names if t in metrics)) if metrics else ""
    lines = [f"Dev score x100 (primary metric{which}; best checkpoint, chosen on dev as in the paper) and the task's own "
             f"layers in brackets. Overhead: layers run per input for all {len(names)} tasks — the frozen trunk once, "
             f"up to the deepest split, plus every branch — and as % of {len(names)} full {rep['encoder_layers']}-layer "
             f"models; GFLOPs for one input of {rep['flops']['seq_len']} tokens (transformer layers only). "
             f"KD-n: the teacher branch (the task's best k, k_t) distilled into n layers; † the teacher itself, "
             f"where k_t ≤ n. Mixed, per task over KD-1 … KD-(k_t − 1) then the teacher: "
             + RULES[rule].format(delta=delta) + ".", "",
             "| setting | " + " | ".join(titles.get(t, t) for t in names) + " | Avg | layers | overhead | GFLOPs |",
             "|---|" + "---|" * (len(names) + 4)]
    for r in rep["rows"]:
        label = r["label"] if r["setting"] != "mixed" else "mixed"
        cells = []
        for t in names:
            c = r["tasks"][t]
            mark = "†" if r["setting"].startswith("kd-") and not c["variant"].startswith("kd-") else ""
            cells.append(f"{c['score']:.1f} ({c['layers']}){mark}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['average']:.1f} | {r['layers_total']} | "
                     f"{r['overhead_pct']:.0f}% | {r['gflops_per_input']:.2f} |")
    if any(teachers.values()):
        lines += ["", "Teacher branch per task (k_t): " + ", ".join(
            f"{titles.get(t, t)} {teachers[t].split('-')[-1]}" for t in names if teachers.get(t)) + "."]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rep["rows"]:
        ax.scatter(r["overhead_pct"], r["average"], s=30)
        ax.annotate(r["setting"], (r["overhead_pct"], r["average"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.margins(x=0.12, y=0.15)  # room for the labels of the outermost points
    ax.set_xlabel("overhead (% of one full model per task)")
    ax.set_ylabel("average dev score (x100)")
    ax.set_title("score vs serving overhead")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, delta: float) -> dict:
    from manytask.flex.config import load_flex
    from manytask.tasks import glue_task

    out = Path(out)
    rep = build(out)
    entries = {e.name: e for e in load_flex(out / "flex.yaml", saved=True).tasks}
    rep["primary"] = {t: entries[t].resolve(Path.cwd()).primary for t in rep["tasks"] if t in entries}
    titles = {t: (glue_task(t).title if glue_task(t) else t) for t in rep["tasks"]}
    text = markdown(rep, delta, titles)
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "report.json", rep)
    plot(rep, out / "flex.png")
    rep["markdown"] = text
    return rep
