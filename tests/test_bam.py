"""BAM: the distillation loss, teacher annealing, the target store's checks, and every recipe at debug scale."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from manytask.cli import app
from manytask.config import ConfigError, load_config
from manytask.distill.recipes import Recipe, load_study
from manytask.distill.store import TargetError, TeacherTargets, targets_path
from manytask.distill.study import prepare, recipe_dir, run_study
from manytask.evaluation.stats import holm, paired_test, spread
from manytask.report.bam import write_report
from manytask.runs import train_run
from manytask.tasks import glue_task
from manytask.training.losses import distill_loss, mixed_target, teacher_annealing
from tests.conftest import write_mini_glue

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bam_debug.yaml"
SST2, STSB = glue_task("sst2"), glue_task("stsb")


# ---- loss and schedule: hand-computed values -----------------------------------------------------
@pytest.mark.parametrize("lam, expected", [
    (1.0, math.log(4)),                                       # target [1, 0]: -ln 0.25
    (0.0, 0.5 * math.log(4) + 0.5 * -math.log(0.75)),         # target [.5, .5]
    (0.5, 0.75 * math.log(4) + 0.25 * -math.log(0.75)),       # target [.75, .25]
])
def test_classification_loss_mixes_gold_and_teacher(lam, expected):
    student = torch.tensor([[0.0, math.log(3)]])  # softmax [0.25, 0.75]
    teacher = torch.tensor([[0.0, 0.0]])  # softmax [0.5, 0.5]
    gold = torch.tensor([0.0])
    assert distill_loss(SST2, student, gold, teacher, lam).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_softens_the_teacher():
    teacher = torch.tensor([[0.0, 2 * math.log(3)]])  # softmax at T=1: [.1, .9]; at T=2: [.25, .75]
    target = mixed_target(SST2, torch.tensor([0.0]), teacher, 0.0, temperature=2.0)
    assert target.tolist()[0] == pytest.approx([0.25, 0.75], abs=1e-6)


@pytest.mark.parametrize("lam, expected", [(1.0, 0.16), (0.0, 0.04), (0.5, 0.01)])
def test_regression_loss_is_l2_to_the_mixed_score(lam, expected):
    student = torch.tensor([0.0])  # sigmoid 0.5
    teacher = torch.tensor([[math.log(0.3 / 0.7)]])  # sigmoid 0.3
    gold = torch.tensor([0.9])  # already on [0, 1]
    assert distill_loss(STSB, student, gold, teacher, lam).item() == pytest.approx(expected, abs=1e-6)


def test_annealing_schedule():
    assert [teacher_annealing(p) for p in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]
    assert teacher_annealing(1.7) == 1.0
    assert [teacher_annealing(p, "constant", 0.3) for p in (0.0, 0.9)] == [0.3, 0.3]
    with pytest.raises(ValueError, match="unknown"):
        teacher_annealing(0.1, "cosine")


# ---- the store --------------------------------------------------------------------------------------
def _targets(**kw):
    args = dict(task="sst2", kind="classification", labels=SST2.labels, ids=["sst2/train/1", "sst2/train/2"],
                logits=np.array([[1.0, -1.0], [0.0, 2.0]]), teacher={"run": "x"})
    args.update(kw)
    return TeacherTargets(**args)


def test_store_round_trip_and_alignment(tmp_path):
    t = _targets()
    t.save(tmp_path / "sst2.safetensors")
    back = TeacherTargets.load(tmp_path / "sst2.safetensors")
    assert back.hash == t.hash and back.teacher == {"run": "x"}
    aligned = back.aligned(SST2, ["sst2/train/2", "sst2/train/1"])
    assert aligned.tolist() == [[0.0, 2.0], [1.0, -1.0]]


def test_store_names_missing_ids(tmp_path):
    with pytest.raises(TargetError, match=r"no target for 1 of 2 training examples \(first: sst2/train/9\)"):
        _targets().aligned(SST2, ["sst2/train/1", "sst2/train/9"])


def test_store_rejects_other_label_space_kind_and_shape():
    with pytest.raises(TargetError, match="label space differs"):
        _targets(labels=["no", "yes"]).aligned(SST2, ["sst2/train/1"])
    with pytest.raises(TargetError, match="teacher is classification"):
        _targets(task="stsb").aligned(STSB, ["sst2/train/1"])
    with pytest.raises(TargetError, match="3 outputs"):
        _targets(logits=np.zeros((2, 3))).aligned(SST2, ["sst2/train/1"])
    with pytest.raises(TargetError, match="made for task 'sst2'"):
        _targets().aligned(glue_task("cola"), ["sst2/train/1"])


def test_store_detects_edited_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sst2.safetensors"
    _targets().save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({"logits": torch.zeros(2, 2)}, str(path), metadata=meta)  # same metadata, other numbers
    with pytest.raises(TargetError, match="hash mismatch"):
        TeacherTargets.load(path)


def test_student_refuses_a_teacher_that_saw_other_data(mini_glue, tiny_config, tmp_path):
    teacher_cfg = {**tiny_config, "tasks": [{"name": "sst2", "max_train": 20}]}
    train_run(load_config(data=teacher_cfg), tmp_path / "teacher")
    from manytask.distill.teacher import write_targets

    write_targets(tmp_path / "teacher", tmp_path / "store")
    student = {**tiny_config, "tasks": [{"name": "sst2", "max_train": 30}],
               "distill": {"targets": str(tmp_path / "store")}}
    with pytest.raises(TargetError, match=r"no target for \d+ of 30 training examples"):
        train_run(load_config(data=student), tmp_path / "student")
    assert not (tmp_path / "student" / "checkpoints" / "last.json").exists()


# ---- statistics ---------------------------------------------------------------------------------------
def test_holm_bonferroni():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.02, math.nan])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_paired_test_and_spread():
    diff, p = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert diff == 2.0 and p == pytest.approx(0.0742, abs=1e-3)  # t = 3.46, 2 dof
    assert math.isnan(paired_test([1.0], [0.0])[1])
    s = spread([3.0, 1.0, 2.0, math.nan])
    assert (s.median, s.low, s.high, s.n, s.half_range) == (2.0, 1.0, 3.0, 3, 1.0)


# ---- the whole study, debug scale ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = write_mini_glue(tmp_path_factory.mktemp("glue"))
    cfg = load_study(CONFIG, [f"glue_dir={root}"])
    out = tmp_path_factory.mktemp("study") / "bam"
    run_study(cfg, out)
    return load_study(out / "study.yaml"), out


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_recipe_and_seed_is_scored(study):
    cfg, out = study
    for r in cfg.recipes:
        for seed in cfg.seeds:
            scores = json.loads((recipe_dir(out, seed, r) / "scores.json").read_text())
            assert set(scores["primary"]) == {"sst2", "stsb", "mrpc"}, r.name
            assert not math.isnan(scores["average"])


def test_teachers_write_targets_that_cover_their_students(study):
    cfg, out = study
    teachers = {r.teacher for r in cfg.recipes if r.teacher}
    for r in cfg.recipes:
        store = recipe_dir(out, 1, r) / "targets"
        assert (store / "manifest.json").exists() == (r.name in teachers), r.name
    store = recipe_dir(out, 1, cfg.recipe("Single")) / "targets"
    student_run = recipe_dir(out, 1, cfg.recipe("S→M")) / "run"
    ids = json.loads((student_run / "data.json").read_text())["tasks"]["stsb"]["train_examples"]
    t = TeacherTargets.load(targets_path(store, "stsb"))
    assert len(t.ids) == ids and t.teacher["recipe"] == "Single" and t.logits.shape == (ids, 1)


def test_annealing_is_applied_at_start_middle_and_end(study):
    cfg, out = study
    logs = [e for e in _log(recipe_dir(out, 1, cfg.recipe("S→M")) / "run") if e["event"] == "log"]
    total = next(e for e in _log(recipe_dir(out, 1, cfg.recipe("S→M")) / "run") if e["event"] == "plan")["total_steps"]
    lam = {e["step"]: e["lambda"] for e in logs}
    assert lam[1] == 0.0  # the first step learns from the teacher only
    assert lam[total // 2 + 1] == pytest.approx(0.5, abs=1 / total)
    assert lam[total] == pytest.approx((total - 1) / total)  # the last step is (almost) all gold
    constant = [e["lambda"] for e in _log(recipe_dir(out, 1, cfg.recipe("S→M (λ=0)")) / "run") if e["event"] == "log"]
    assert set(constant) == {0.0}
    assert all("lambda" not in e for e in _log(recipe_dir(out, 1, cfg.recipe("Multi")) / "run") if e["event"] == "log")


def test_rounds_and_finetuning_chain_their_recipes(study):
    cfg, out = study
    round3 = load_config(recipe_dir(out, 1, cfg.recipe("S→M→S")) / "sst2" / "config.yaml")
    assert Path(round3.distill.targets) == (recipe_dir(out, 1, cfg.recipe("S→M")) / "targets").resolve()
    round4 = load_config(recipe_dir(out, 1, cfg.recipe("S→M→S→M")) / "run" / "config.yaml")
    assert Path(round4.distill.targets) == (recipe_dir(out, 1, cfg.recipe("S→M→S")) / "targets").resolve()
    ft = load_config(recipe_dir(out, 2, cfg.recipe("Multi+FT")) / "mrpc" / "config.yaml")
    assert Path(ft.model.init_from) == (recipe_dir(out, 2, cfg.recipe("Multi")) / "run").resolve()
    assert ft.train.lr == cfg.finetune.lr and len(ft.tasks) == 1


def test_finished_stages_are_reused_and_seeds_can_be_added(study):
    cfg, out = study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed-*/*/scores.json")}
    run_study(cfg, out)
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed-*/*/scores.json")} == stamps
    extended = prepare(cfg, out, [1, 2, 5])
    assert extended.seeds == [1, 2, 5]
    with pytest.raises(ConfigError, match="other settings"):
        prepare(cfg.model_copy(update={"data_seed": 7}), out)
    prepare(cfg.model_copy(update={"seeds": [1, 2]}), out)  # back to what ran, for the other tests


def test_a_study_can_gain_recipes_but_not_change_them(study):
    cfg, out = study
    saved = (out / "study.yaml").read_text()
    try:
        extra = Recipe(name="M→S", student="single", teacher="Multi")
        grown = prepare(cfg.model_copy(update={"recipes": [*cfg.recipes, extra]}), out)
        assert [r.name for r in grown.recipes] == [r.name for r in cfg.recipes] + ["M→S"]
        # an older config without the new recipe still resumes the grown study
        assert "M→S" in [r.name for r in prepare(cfg, out).recipes]
        altered = [r.model_copy(update={"lam": 0.5}) if r.name == "S→M" else r for r in cfg.recipes]
        with pytest.raises(ConfigError, match="S→M defined otherwise"):
            prepare(cfg.model_copy(update={"recipes": altered}), out)
    finally:
        (out / "study.yaml").write_text(saved)


def test_report_table_tests_and_plots(study):
    cfg, out = study
    rep = write_report(out)
    text = (out / "report.md").read_text()
    for r in cfg.recipes:
        assert f"| {r.name} |" in text
    assert "Holm–Bonferroni" in text and "S→M vs Single" in text and "Single vs Multi" not in text
    assert rep["rows"]["Single"]["seeds"] == [1, 2]
    assert "all-MiniLM-L6-v2" in text and "random init" in text
    for name in ("scores.png", "annealing.png"):
        assert (out / name).stat().st_size > 1000
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "median over seeds" in result.output


def test_finetuning_starts_from_the_multitask_weights(mini_glue, tiny_config, tmp_path):
    base = {**tiny_config, "tasks": ["sst2", "stsb"]}
    train_run(load_config(data=base), tmp_path / "multi")
    ft = {**tiny_config, "tasks": ["stsb"], "model": {**tiny_config["model"], "init_from": str(tmp_path / "multi")},
          "train": {**tiny_config["train"], "lr": 0.0, "steps": 2}}  # lr 0: the weights stay the initial ones
    train_run(load_config(data=ft), tmp_path / "ft")
    best = json.loads((tmp_path / "multi" / "checkpoints" / "best.json").read_text())["stsb"]["weights"]
    source = load_file(str(tmp_path / "multi" / "checkpoints" / best))
    info = json.loads((tmp_path / "ft" / "checkpoints" / "last.json").read_text())
    tuned = load_file(str(tmp_path / "ft" / "checkpoints" / info["weights"]))
    assert "heads.sst2.out.weight" in source and "heads.sst2.out.weight" not in tuned
    for k, v in tuned.items():
        assert torch.equal(v, source[k]), k
    other = {**ft, "model": {**ft["model"], "random_init": {**tiny_config["model"]["random_init"], "hidden_size": 16}}}
    with pytest.raises(ConfigError, match="does not fit"):
        train_run(load_config(data=other), tmp_path / "wrong")
