"""Dev-score tables in Markdown: one column per evaluation set, GLUE metrics x 100, and the average."""

from __future__ import annotations

import math

SHORT = {"accuracy": "acc", "f1": "F1", "f1_macro": "F1m", "matthews": "mcc", "pearson": "P", "spearman": "S",
         "entity_f1": "entF1", "entity_precision": "entP", "entity_recall": "entR", "token_accuracy": "tokAcc"}


def _cell(metrics: dict, names: list[str]) -> str:
    text = "/".join(f"{100 * metrics[n]:.1f}" for n in names if n in metrics)
    return text + (" ⚠collapsed" if metrics.get("collapsed") else "")


def results_table(results: dict, specs: dict, label: str = "dev") -> str:
    """``results`` as written by evaluate(): tasks -> split -> metrics, plus titles and average."""
    headers, cells = [], []
    for name, per_split in results["tasks"].items():
        spec = specs[name]
        for split, metrics in per_split.items():
            title = results["titles"][name][split]
            headers.append(f"{title} ({'/'.join(SHORT.get(m, m) for m in spec.metrics)})")
            cells.append(_cell(metrics, spec.metrics))
    avg = results.get("average", math.nan)
    headers.append("Avg")
    cells.append("—" if avg is None or math.isnan(avg) else f"{100 * avg:.1f}")
    lines = [
        "| " + " | ".join([label] + headers) + " |",
        "|" + "---|" * (len(headers) + 1),
        "| " + " | ".join(["score"] + cells) + " |",
    ]
    return "\n".join(lines)


def slices_table(results: dict, specs: dict) -> str:
    """Per slice of every task that has slices: its size and the task's metrics on its members; slices
    under the task's min_size are flagged as too small to read. Empty when no task has slices."""
    lines = []
    for name, per_split in results["tasks"].items():
        spec = specs[name]
        for split, metrics in per_split.items():
            for slice_name, m in metrics.get("slices", {}).items():
                cell = _cell(m, spec.metrics) if m["n"] else "—"
                flag = " ⚠too small to read" if m["too_small"] else ""
                lines.append(f"| {results['titles'][name][split]} | {slice_name} | {m['n']} | {cell}{flag} |")
    if not lines:
        return ""
    return "\n".join(["| task | slice | n | " + "score |", "|---|---|---|---|", *lines])
