"""Studies fanned out on Ray: the same scores as the sequential run, stages after the stages they need."""

from __future__ import annotations

import json

import pytest
import torch

from manytask.distill.recipes import StudyConfig
from manytask.distill.study import recipe_dir, run_study
from manytask.fanout import run_graph
from tests.conftest import TINY, write_mini_glue

pytestmark = pytest.mark.slow  # several processes

STUDY = {"name": "fan", "seeds": [1, 2], "tasks": [{"name": "sst2", "max_train": 24}, {"name": "stsb", "max_train": 24}],
         "model": dict(TINY), "single": {"batch_size": 8, "steps": 3, "progress": False},
         "multi": {"batch_size": 8, "steps": 3, "progress": False},
         "recipes": [{"name": "Single", "student": "single"}, {"name": "Multi", "student": "multi"},
                     {"name": "S→M", "student": "multi", "teacher": "Single"},
                     {"name": "Multi+FT", "student": "finetune", "init": "Multi"}]}


def test_sequential_graph_runs_in_order_and_refuses_unknown_dependencies():
    seen = []
    out = run_graph({"a": (seen.append, ("a",), []), "b": (seen.append, ("b",), ["a"])})
    assert seen == ["a", "b"] and set(out) == {"a", "b"}
    with pytest.raises(ValueError, match="unknown stage"):
        run_graph({"b": (print, (), ["a"])})


def test_a_study_on_ray_scores_what_the_sequential_run_scores(tmp_path):
    pytest.importorskip("ray")
    glue = write_mini_glue(tmp_path / "glue")
    cfg = StudyConfig.model_validate({**STUDY, "glue_dir": str(glue)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray stage runs
    try:
        run_study(cfg, tmp_path / "seq")
    finally:
        torch.set_num_threads(threads)
    run_study(cfg, tmp_path / "ray", workers=2)
    for seed in cfg.seeds:
        for r in cfg.recipes:
            a = json.loads((recipe_dir(tmp_path / "seq", seed, r) / "scores.json").read_text())
            b = json.loads((recipe_dir(tmp_path / "ray", seed, r) / "scores.json").read_text())
            assert b["primary"] == pytest.approx(a["primary"], abs=1e-6), (seed, r.name)
    # the student learnt from its own seed's teacher, written before it started
    student = json.loads((recipe_dir(tmp_path / "ray", 2, cfg.recipe("S→M")) / "run" / "data.json").read_text())
    assert student["tasks"]["sst2"]["train_examples"] == 24
    assert (recipe_dir(tmp_path / "ray", 2, cfg.recipe("Single")) / "targets" / "manifest.json").exists()
