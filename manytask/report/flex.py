"""Table 2 of Wei et al. for a flex run: per task the dev score and the task's own layers, and the
overhead — transformer layers run per input for all tasks together, their FLOPs, and the share of
one full model per task; plus a score-vs-overhead plot."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from manytask.training.checkpoint import atomic_write_json, atomic_write_text

SETTINGS = [("full", "Full fine-tuning"), ("partial", "w/o KD (best k)")]


def layer_flops(hidden: int, intermediate: int, seq: int) -> int:
    """Multiply-adds x2 of one BERT layer on one input of ``seq`` tokens: Q, K, V and output
    projections, the two feed-forward matrices, and the attention scores and mixing."""
    return 2 * seq * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * seq * seq * hidden


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
            total = max(c["split_depth"] for c in cells.values()) + sum(c["layers"] for c in cells.values())
        rows.append({"setting": key, "label": label, "tasks": cells,
                     "average": sum(c["score"] for c in cells.values()) / len(cells),
                     "layers_total": total, "overhead_pct": 100 * total / (L * len(names)),
                     "gflops_per_input": total * per_layer / 1e9})
    return {"encoder_layers": L, "tasks": names, "rows": rows, "skipped": sel.get("skipped", []),
            "flops": {"seq_len": seq, "per_layer": per_layer}}


def markdown(rep: dict, delta: float, titles: dict) -> str:
    names = rep["tasks"]
    lines = [f"Dev score x100 (primary metric; best checkpoint, chosen on dev as in the paper) and the task's own "
             f"layers in brackets. Overhead: layers run per input for all {len(names)} tasks — the frozen trunk once, "
             f"up to the deepest split, plus every branch — and as % of {len(names)} full {rep['encoder_layers']}-layer "
             f"models; GFLOPs for one input of {rep['flops']['seq_len']} tokens (transformer layers only). "
             f"Mixed: add a task layer only while it gains ≥ {delta} points.", "",
             "| setting | " + " | ".join(titles.get(t, t) for t in names) + " | Avg | layers | overhead | GFLOPs |",
             "|---|" + "---|" * (len(names) + 4)]
    for r in rep["rows"]:
        label = r["label"] if r["setting"] != "mixed" else "mixed"
        cells = [f"{r['tasks'][t]['score']:.1f} ({r['tasks'][t]['layers']})" for t in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['average']:.1f} | {r['layers_total']} | "
                     f"{r['overhead_pct']:.0f}% | {r['gflops_per_input']:.2f} |")
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
    from manytask.tasks import glue_task

    out = Path(out)
    rep = build(out)
    titles = {t: (glue_task(t).title if glue_task(t) else t) for t in rep["tasks"]}
    text = markdown(rep, delta, titles)
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "report.json", rep)
    plot(rep, out / "flex.png")
    rep["markdown"] = text
    return rep
