"""A precision plan (``--precision auto``): which quantisable units of a bundle (trunk layers, each task's
branch layers) may be int8 (per channel) with every task within the tolerance of its fp32 dev score.

Each unit's effect is measured once, alone; then, from the least sensitive, a unit joins the plan when the
tasks it changes all stay within the tolerance with it and every unit already chosen (each step scores only
those tasks). An empty plan is fp32, so every task is within the tolerance by construction; a task none of
whose units could be int8 is served in fp32 and the plan says so. A task whose dev data is not on this machine
cannot be checked: its units stay fp32 (the search is refused unless forced).

The plan is cached beside the bundle's scores, keyed by the manifest's hash, the tolerance and the device type:
a changed task set is searched again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import torch

from manytask.bundles import Bundle
from manytask.io import atomic_write_json
from manytask.models.precision import apply_plan, cache_kind, int8_activation_bits, units
from manytask.serving.precision import (DATA_ERRORS, _eval_data, apply_precision, cache_root, check, dev_scores,
                                        task_score)

log = logging.getLogger(__name__)
SCHEME = "dynamic int8, one scale per output channel"


def manifest_hash(bundle: Bundle) -> str:
    return hashlib.sha256((bundle.root / "manifest.json").read_bytes()).hexdigest()[:16]


def plan_path(bundle: Bundle, tolerance: float, device_type: str = "cpu") -> Path:
    kind = cache_kind("auto", device_type)
    return cache_root(bundle) / f"plan-auto-{manifest_hash(bundle)}-tol{tolerance:g}.{kind}.json"


def load_plan(bundle: Bundle, tolerance: float, device_type: str = "cpu") -> Optional[dict]:
    path = plan_path(bundle, tolerance, device_type)
    return json.loads(path.read_text()) if path.exists() else None


def _points(base: dict, got: dict) -> float:
    return 100 * (base["score"] - got["score"])


def search_plan(bundle: Bundle, glue_dir: Path, tolerance: float, device: Optional[torch.device] = None,
                echo=log.info) -> dict:
    """Search the plan (see the module's docstring); returns it (nothing written)."""
    device = device or torch.device("cpu")
    base_model = bundle.merged_model().to(device).eval()
    tok, max_len = bundle.tokenizer(), bundle.manifest["trunk"]["max_seq_length"]
    data, unscored = {}, {}
    for name in bundle.manifest["tasks"]:
        try:
            data[name] = _eval_data(bundle.package(name), glue_dir)
        except DATA_ERRORS as e:
            unscored[name] = str(e).splitlines()[0][:300]
    base = dev_scores(bundle, base_model, "fp32", glue_dir, device=device)
    every = units(base_model)
    candidates = [u for u, (_, tasks) in every.items() if not tasks & set(unscored)]

    def trial(int8: list[str], tasks) -> dict[str, dict]:
        model = copy.deepcopy(base_model)
        apply_plan(model, int8)
        return {t: task_score(model, data[t], tok, max_len) for t in sorted(tasks)}

    sensitivity = {}
    for u in candidates:
        got = trial([u], every[u][1])
        sensitivity[u] = max(_points(base[t], got[t]) for t in got)
    echo(f"precision plan: {len(candidates)} units measured one at a time (worst task drop, points): "
         + ", ".join(f"{u} {sensitivity[u]:+.2f}" for u in sorted(candidates, key=lambda u: sensitivity[u])))
    chosen: list[str] = []
    current = {t: dict(base[t]) for t in data}
    for u in sorted(candidates, key=lambda u: (sensitivity[u], u)):
        got = trial(chosen + [u], every[u][1])
        if all(_points(base[t], got[t]) <= tolerance for t in got):
            chosen.append(u)
            current.update(got)
    tasks = {}
    for t in bundle.manifest["tasks"]:
        run = [u for u, (_, ts) in every.items() if t in ts]
        int8 = [u for u in run if u in chosen]
        entry = {"int8_layers": len(int8), "layers_run": len(run)}
        if t in unscored:
            entry["note"] = f"served in fp32: its dev data is not on this machine ({unscored[t]})"
        elif not int8:
            entry["note"] = f"served in fp32: no layer it runs stays within {tolerance:g} points in int8"
        tasks[t] = entry
    scheme = f"{SCHEME}, activations {int8_activation_bits()}-bit"
    return {"precision": "auto", "scheme": scheme, "tolerance": tolerance, "manifest": manifest_hash(bundle),
            "device": device.type, "int8": chosen, "fp32": [u for u in every if u not in chosen],
            "sensitivity": sensitivity, "tasks": tasks, "fp32_scores": base,
            "scores": {t: current[t] if t in data else {"unscored": unscored[t]} for t in bundle.manifest["tasks"]}}


def plan_for(bundle: Bundle, glue_dir: Path, tolerance: float, device: Optional[torch.device] = None,
             echo=log.info) -> dict:
    """The bundle's plan for this tolerance and device type: read from the cache, else searched and written."""
    device = device or torch.device("cpu")
    cached = load_plan(bundle, tolerance, device.type)
    if cached is not None:
        return cached
    plan = search_plan(bundle, glue_dir, tolerance, device, echo)
    atomic_write_json(plan_path(bundle, tolerance, device.type), plan)
    return plan


def plan_table(plan: dict) -> str:
    """Per task: fp32 and planned dev scores, int8 units of those it runs, and any note."""
    lines = ["| task | fp32 | auto | int8 layers | note |", "|---|---|---|---|---|"]
    for t, info in sorted(plan["tasks"].items()):
        base, got = plan["fp32_scores"].get(t, {}), plan["scores"].get(t, {})
        cell = (lambda d: f"{100 * d['score']:.1f}" if "score" in d else "unscored")
        lines.append(f"| {t} | {cell(base)} | {cell(got)} | {info['int8_layers']}/{info['layers_run']} | "
                     f"{info.get('note', '')} |")
    return "\n".join(lines)


def score_precisions(bundle: Bundle, precision: str, glue_dir: Path, device: Optional[torch.device] = None,
                     tolerance: float = 0.5, echo=log.info) -> dict:
    """fp32 and ``precision`` dev scores of every task (fresh models from the bundle), on the device that will
    serve them. ``auto`` finds (or reads) the bundle's precision plan for ``tolerance`` and scores under it."""
    device = device or torch.device("cpu")
    check(precision, device)
    if precision == "auto":
        plan = plan_for(bundle, glue_dir, tolerance, device, echo)
        return {"fp32": plan["fp32_scores"], "auto": plan["scores"]}
    scores = {}
    for p in dict.fromkeys(("fp32", precision)):
        model = bundle.merged_model().to(device).eval()
        apply_precision(model, p)
        scores[p] = dev_scores(bundle, model, p, glue_dir, device=device)
    return scores
