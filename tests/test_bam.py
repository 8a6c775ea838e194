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
from manytask.config import ConfigError, DistillConfig, SamplingConfig, load_config
from manytask.data.features import TaskBatch
from manytask.data.samplers import make_plan
from manytask.data.target_store import TargetError, TeacherTargets, targets_path
from manytask.distill.recipes import Recipe, load_study
from manytask.distill.study import prepare, recipe_dir, run_study
from manytask.evaluation.stats import holm, paired_test, spread
from manytask.kinds import get_kind
from manytask.models.multitask import TaskOutput
from manytask.report.bam import write_report
from manytask.runs import train_run
from manytask.tasks import glue_task
from manytask.training.objectives import TeacherObjective, task_objectives, teacher_annealing, value
from tests.conftest import write_mini_glue

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bam_debug.yaml"
SST2, STSB = glue_task("sst2"), glue_task("stsb")


# ---- loss and schedule: hand-computed values -----------------------------------------------------
def teacher_loss(spec, student, gold, teacher, lam, temperature=1.0, style="bam"):
    """The student's objective on one batch, with the teacher's logits given row by row and a constant lambda."""
    cfg = DistillConfig(targets="-", schedule="constant", lam=lam, temperature=temperature, style=style)
    objective = TeacherObjective(spec, cfg, teacher)
    return value(objective, TaskOutput(student), TaskBatch(None, torch.arange(len(gold)), gold))


@pytest.mark.parametrize("lam, expected", [
    (1.0, math.log(4)),                                       # target [1, 0]: -ln 0.25
    (0.0, 0.5 * math.log(4) + 0.5 * -math.log(0.75)),         # target [.5, .5]
    (0.5, 0.75 * math.log(4) + 0.25 * -math.log(0.75)),       # target [.75, .25]
])
def test_classification_loss_mixes_gold_and_teacher(lam, expected):
    student = torch.tensor([[0.0, math.log(3)]])  # softmax [0.25, 0.75]
    teacher = torch.tensor([[0.0, 0.0]])  # softmax [0.5, 0.5]
    gold = torch.tensor([0.0])
    assert teacher_loss(SST2, student, gold, teacher, lam).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_softens_the_teacher():
    teacher = torch.tensor([[0.0, 2 * math.log(3)]])  # softmax at T=1: [.1, .9]; at T=2: [.25, .75]
    target = get_kind("classification").soft_target(torch.tensor([0.0]), teacher, 0.0, temperature=2.0)
    assert target.tolist()[0] == pytest.approx([0.25, 0.75], abs=1e-6)


@pytest.mark.parametrize("lam, expected", [(1.0, 0.16), (0.0, 0.04), (0.5, 0.01)])
def test_regression_loss_is_l2_to_the_mixed_score(lam, expected):
    student = torch.tensor([0.0])  # sigmoid 0.5
    teacher = torch.tensor([[math.log(0.3 / 0.7)]])  # sigmoid 0.3
    gold = torch.tensor([0.9])  # already on [0, 1]
    assert teacher_loss(STSB, student, gold, teacher, lam).item() == pytest.approx(expected, abs=1e-6)


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


@pytest.mark.slow
def test_every_recipe_and_seed_is_scored(study):
    cfg, out = study
    for r in cfg.recipes:
        for seed in cfg.seeds:
            scores = json.loads((recipe_dir(out, seed, r) / "scores.json").read_text())
            assert set(scores["primary"]) == {"sst2", "stsb", "mrpc"}, r.name
            assert not math.isnan(scores["average"])


@pytest.mark.slow
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


@pytest.mark.parametrize("schedule, batching", [("linear", "per_task"), ("linear", "mixed"), ("constant", "per_task")])
def test_the_loss_receives_the_annealed_lambda_at_every_step(mini_glue, tiny_config, tmp_path, schedule, batching):
    """Not the logged λ: the λ that the distillation loss is called with, step by step (a spy injected into each
    task's teacher objective through train_run's objectives seam)."""
    from manytask.distill.teacher import write_targets

    tasks = [{"name": "sst2", "max_train": 24}, {"name": "stsb", "max_train": 24}]
    train_run(load_config(data={**tiny_config, "tasks": tasks}), tmp_path / "teacher")
    write_targets(tmp_path / "teacher", tmp_path / "store")
    received: list[tuple[str, float]] = []

    def objectives(spec, entry, train, distill):
        built = task_objectives(spec, entry, train, distill)
        real = built.own.soft_loss

        def spy(logits, labels, teacher, lam, temperature):
            received.append((spec.name, lam))
            return real(logits, labels, teacher, lam, temperature)

        built.own.soft_loss = spy
        return built

    steps = 10
    student = {**tiny_config, "tasks": tasks,
               "train": {**tiny_config["train"], "steps": steps, "eval_every": None, "batching": batching,
                         "group_by_length": False},
               "distill": {"targets": str(tmp_path / "store"), "schedule": schedule, "lam": 0.0}}
    train_run(load_config(data=student), tmp_path / "student", objectives=objectives)
    plan = [json.loads(l) for l in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()][0]
    assert plan["event"] == "plan" and plan["batching"] == batching
    expected = [s / steps if schedule == "linear" else 0.0 for s in range(steps)]
    # one call per task in each step's batch (several in a mixed batch), each with that step's λ; without
    # length grouping the plan depends only on the sizes, so it can be redrawn here
    by_step, i = [], 0
    sizes = {"sst2": 24, "stsb": 24}
    for step in make_plan({t: [0] * n for t, n in sizes.items()}, 8, steps, SamplingConfig(), tiny_config["seed"],
                          False, batching).steps:
        by_step.append([lam for _, lam in received[i:i + len(step)]])
        i += len(step)
    assert i == len(received)
    assert [set(l) for l in by_step] == [{e} for e in expected]
    if schedule == "linear":
        assert by_step[0] == [0.0] * len(by_step[0]) and by_step[steps // 2][0] == 0.5
        assert by_step[-1][0] == pytest.approx((steps - 1) / steps)


@pytest.mark.slow
def test_rounds_and_finetuning_chain_their_recipes(study):
    cfg, out = study
    round3 = load_config(recipe_dir(out, 1, cfg.recipe("S→M→S")) / "sst2" / "config.yaml")
    assert Path(round3.distill.targets) == (recipe_dir(out, 1, cfg.recipe("S→M")) / "targets").resolve()
    round4 = load_config(recipe_dir(out, 1, cfg.recipe("S→M→S→M")) / "run" / "config.yaml")
    assert Path(round4.distill.targets) == (recipe_dir(out, 1, cfg.recipe("S→M→S")) / "targets").resolve()
    ft = load_config(recipe_dir(out, 2, cfg.recipe("Multi+FT")) / "mrpc" / "config.yaml")
    assert Path(ft.model.init_from) == (recipe_dir(out, 2, cfg.recipe("Multi")) / "run").resolve()
    assert ft.train.lr == cfg.finetune.lr and len(ft.tasks) == 1
    assert ft.model.init_checkpoint == "last"
    mixed = load_config(recipe_dir(out, 1, cfg.recipe("Multi (mixed batches)")) / "run" / "config.yaml")
    assert mixed.train.batching == "mixed" and mixed.train.lr == cfg.multi.lr


@pytest.mark.slow
def test_finished_stages_are_reused_and_seeds_can_be_added(study):
    cfg, out = study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed-*/*/scores.json")}
    run_study(cfg, out)
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed-*/*/scores.json")} == stamps
    # the command resumes the finished study (nothing retrained) and prints its report
    (out.parent / "study.yaml").write_text((out / "study.yaml").read_text())
    res = CliRunner().invoke(app, ["bam", "-c", str(out.parent / "study.yaml"), "-o", str(out)])
    assert res.exit_code == 0 and f"report: {out / 'report.md'}" in res.output, res.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed-*/*/scores.json")} == stamps
    extended = prepare(cfg, out, [1, 2, 5])
    assert extended.seeds == [1, 2, 5]
    with pytest.raises(ConfigError, match="other settings"):
        prepare(cfg.model_copy(update={"data_seed": 7}), out)
    prepare(cfg.model_copy(update={"seeds": [1, 2]}), out)  # back to what ran, for the other tests


@pytest.mark.slow
def test_a_study_can_gain_recipes_but_not_change_them(study):
    cfg, out = study
    saved = (out / "study.yaml").read_text()
    try:
        extra = Recipe(name="M→S", student="single", teacher="Multi")
        grown = prepare(cfg.model_copy(update={"recipes": [*cfg.recipes, extra]}), out)
        assert [r.name for r in grown.recipes] == [r.name for r in cfg.recipes] + ["M→S"]
        # an older config without the new recipe still resumes the grown study
        assert "M→S" in [r.name for r in prepare(cfg, out).recipes]
        # what the report tests may change; how runs train may not
        assert prepare(cfg.model_copy(update={"comparisons": [("S→S", "M→M")]}), out).comparisons == [("S→S", "M→M")]
        with pytest.raises(ConfigError, match="unknown|not a recipe"):
            prepare(cfg.model_copy(update={"comparisons": [("S→S", "nope")]}), out)
        altered = [r.model_copy(update={"lam": 0.5}) if r.name == "S→M" else r for r in cfg.recipes]
        with pytest.raises(ConfigError, match="S→M defined otherwise"):
            prepare(cfg.model_copy(update={"recipes": altered}), out)
    finally:
        (out / "study.yaml").write_text(saved)


@pytest.mark.slow
def test_report_of_the_debug_study(study):
    """The report rebuilt from the runs: every recipe's medians are the medians of its seeds' scores.json."""
    cfg, out = study
    rep = write_report(out)
    for r in cfg.recipes:
        per_seed = [json.loads((recipe_dir(out, s, r) / "scores.json").read_text()) for s in cfg.seeds]
        avg = sorted(100 * x["average"] for x in per_seed)
        assert rep["rows"][r.name]["median"]["Avg"]["median"] == pytest.approx(sum(avg) / 2), r.name  # 2 seeds
    found = {(c["recipe"], c["baseline"]): c["why"] for c in rep["comparisons"]}
    assert found[("S→M", "S→M (λ=0)")] == "annealing ablation" and ("Single", "Multi") not in found
    assert rep["headline"]["recipes"] == ["Single", "Multi", "S→M"]
    assert "all-MiniLM-L6-v2" in rep["markdown"] and "random init" in rep["markdown"]
    for name in ("scores.png", "annealing.png"):
        assert (out / name).stat().st_size > 1000
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "median over seeds" in result.output


def _checkpoint(run_dir: Path, which: str, task: str = "") -> dict:
    ckpt = run_dir / "checkpoints"
    info = json.loads((ckpt / "best.json").read_text())[task] if which == "best" else \
        json.loads((ckpt / "last.json").read_text())
    return load_file(str(ckpt / info["weights"]))


@pytest.mark.parametrize("which", ["last", "best"])
def test_finetuning_starts_from_the_multitask_models_weights(mini_glue, tiny_config, tmp_path, which):
    """By default the trained multi-task model (its last weights, as BAM and MeTaL fine-tune it), not the
    checkpoint that happened to be best on dev; ``init_checkpoint: best`` takes that one instead."""
    base = {**tiny_config, "tasks": ["sst2", "stsb"], "train": {**tiny_config["train"], "steps": 12, "eval_every": 3}}
    train_run(load_config(data=base), tmp_path / "multi")
    best_step = json.loads((tmp_path / "multi" / "checkpoints" / "best.json").read_text())["stsb"]["step"]
    ft = {**tiny_config, "tasks": ["stsb"],
          "model": {**tiny_config["model"], "init_from": str(tmp_path / "multi"), "init_checkpoint": which},
          "train": {**tiny_config["train"], "lr": 0.0, "steps": 2}}  # lr 0: the weights stay the initial ones
    train_run(load_config(data=ft), tmp_path / "ft")
    source = _checkpoint(tmp_path / "multi", which, "stsb")
    tuned = _checkpoint(tmp_path / "ft", "last")
    assert "heads.sst2.out.weight" in source and "heads.sst2.out.weight" not in tuned
    for k, v in tuned.items():
        assert torch.equal(v, source[k]), k
    other = _checkpoint(tmp_path / "multi", "best" if which == "last" else "last", "stsb")
    if best_step != 12:  # the two checkpoints differ: the fine-tuned run started from the one asked for
        assert any(not torch.equal(tuned[k], other[k]) for k in tuned)
    bad = {**ft, "model": {**ft["model"], "random_init": {**tiny_config["model"]["random_init"], "hidden_size": 16}}}
    with pytest.raises(ConfigError, match="does not fit"):
        train_run(load_config(data=bad), tmp_path / "wrong")


def test_finetune_settings_are_the_single_task_ones_at_lr_1e_5(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("tasks: [rte]\nsingle: {batch_size: 16, epochs: 3, lr: 1.0e-4}\n"
                 "recipes: [{name: Single, student: single}, {name: Multi, student: multi}]\n")
    cfg = load_study(p)
    assert (cfg.finetune.batch_size, cfg.finetune.epochs, cfg.finetune.lr) == (16, 3.0, 1e-5)
    p.write_text(p.read_text() + "finetune: {epochs: 1}\n")
    cfg = load_study(p)
    assert (cfg.finetune.batch_size, cfg.finetune.epochs, cfg.finetune.lr) == (16, 1.0, 1e-5)
    again = load_study(p, ["single.lr=2e-4"])  # a saved study reloads to the same settings
    assert again.finetune == cfg.finetune
    from manytask.distill.recipes import dump_study
    (tmp_path / "saved.yaml").write_text(dump_study(cfg))
    assert load_study(tmp_path / "saved.yaml").finetune == cfg.finetune


# ---- the report's numbers, from a hand-made table of scores --------------------------------------------------
HAND = {  # recipe -> seed -> (sst2, rte) as fractions; Avg = their mean
    "Single": {1: (0.80, 0.50), 2: (0.82, 0.54), 3: (0.78, 0.52), 4: (0.81, 0.49)},
    "Multi": {1: (0.81, 0.55), 2: (0.82, 0.57), 3: (0.80, 0.53), 4: (0.83, 0.56)},
    "S→M": {1: (0.83, 0.56), 2: (0.82, 0.60), 3: (0.82, 0.55), 4: (0.84, 0.57)},
    "S→M (λ=0)": {1: (0.80, 0.52), 2: (0.81, 0.55), 3: (0.80, 0.50), 4: (0.82, 0.53)},
}


def _hand_study(tmp_path: Path, family: str = "report", rte="rte") -> Path:
    out = tmp_path / "study"
    recipes = [{"name": "Single", "student": "single"}, {"name": "Multi", "student": "multi"},
               {"name": "S→M", "student": "multi", "teacher": "Single"},
               {"name": "S→M (λ=0)", "student": "multi", "teacher": "Single", "schedule": "constant", "lam": 0.0}]
    cfg = load_study.__globals__["StudyConfig"].model_validate(
        {"name": "hand", "seeds": [1, 2, 3, 4], "tasks": ["sst2", rte], "recipes": recipes, "holm_family": family})
    prepare(cfg, out)
    for r in cfg.recipes:
        for seed, (a, b) in HAND[r.name].items():
            d = recipe_dir(out, seed, r)
            d.mkdir(parents=True)
            tasks = {"sst2": {"dev": {"accuracy": a, "collapsed": False}}, "rte": {"dev": {"accuracy": b, "collapsed": seed == 4}}}
            (d / "scores.json").write_text(json.dumps({"tasks": tasks, "primary": {"sst2": a, "rte": b},
                                                       "average": (a + b) / 2, "runs": {}, "recipe": r.name, "seed": seed}))
    return out


def test_report_medians_differences_and_p_values_by_hand(tmp_path):
    from scipy.stats import t as student_t

    from manytask.report.bam import build

    rep = build(_hand_study(tmp_path))
    # medians of four seeds: the mean of the middle two
    assert rep["rows"]["Single"]["median"]["sst2"]["median"] == pytest.approx(80.5)
    assert rep["rows"]["Multi"]["median"]["rte"]["median"] == pytest.approx(55.5)
    assert rep["rows"]["S→M"]["median"]["Avg"]["median"] == pytest.approx(70.0)  # avgs 69.5, 71, 68.5, 70.5
    assert rep["rows"]["S→M"]["median"]["Avg"]["half_range"] == pytest.approx(1.25)
    assert rep["rows"]["Single"]["collapsed"] == {"sst2": 0, "rte": 1}
    pairs = {(c["recipe"], c["baseline"]): c for c in rep["comparisons"]}
    assert list(pairs) == [("Multi", "Single"), ("S→M", "Single"), ("S→M (λ=0)", "Single"), ("S→M", "Multi"),
                           ("S→M (λ=0)", "Multi"), ("S→M", "S→M (λ=0)")]
    assert pairs[("S→M", "S→M (λ=0)")]["why"] == "annealing ablation"
    # S→M − Multi on RTE, seeds 1-4: differences 1, 3, 2, 1 points; mean 1.75, sd 0.957, t = 3.656, 3 dof
    c = pairs[("S→M", "Multi")]
    d = [1.0, 3.0, 2.0, 1.0]
    mean = sum(d) / 4
    sd = (sum((x - mean) ** 2 for x in d) / 3) ** 0.5
    p = 2 * student_t.sf(mean / (sd / 2), 3)
    assert c["diff"]["rte"] == pytest.approx(1.75) and c["p"]["rte"] == pytest.approx(p, rel=1e-6)
    assert c["median_diff"]["Avg"] == pytest.approx(70.0 - 68.75)  # Multi's avgs 68, 69.5, 66.5, 69.5
    # Holm over the whole report: 6 comparisons x 3 columns = 18 tests; the smallest p is multiplied by 18
    ps = [(x["p"][k], x["p_holm"][k]) for x in rep["comparisons"] for k in rep["columns"] if not math.isnan(x["p"][k])]
    smallest = min(ps)
    assert smallest[1] == pytest.approx(min(1.0, len(ps) * smallest[0]))
    assert all(q >= p - 1e-12 for p, q in ps)
    # per comparison: within one comparison's 3 columns
    per = build(_hand_study(tmp_path / "per", "comparison"))
    c = next(x for x in per["comparisons"] if (x["recipe"], x["baseline"]) == ("S→M", "Multi"))
    assert c["p_holm"] == dict(zip(per["columns"], holm([c["p"][k] for k in per["columns"]])))
    # the headline: Single < Multi < S→M on the medians of Avg (65 < 68.75 < 70), and in every seed
    h = rep["headline"]
    assert h["holds_on_medians"] and h["seeds_where_it_holds"] == [1, 2, 3, 4]
    assert h["steps"]["S→M − Multi"]["median_diff"] == pytest.approx(1.25)
    from manytask.report.bam import markdown

    md = markdown(rep)
    assert "| S→M vs S→M (λ=0) | annealing ablation |" in md and "**holds** on the medians" in md


def test_report_does_not_compare_the_avg_of_recipes_that_scored_other_tasks(tmp_path):
    """A fine-tuned RTE-only recipe's Avg is its RTE score: against Multi's mean of two tasks it means nothing,
    so the report neither shows that difference nor counts it as a test in Holm's family."""
    from manytask.distill.recipes import dump_study
    from manytask.report.bam import build, markdown

    out = _hand_study(tmp_path)
    cfg = load_study(out / "study.yaml", saved=True)
    rte_only = {1: 0.58, 2: 0.60, 3: 0.57, 4: 0.59}
    data = cfg.model_dump()
    data["recipes"].append({"name": "Multi+FT", "student": "finetune", "init": "Multi", "only": ["rte"]})
    data["comparisons"] = [["Multi+FT", "Multi"]]
    cfg = load_study.__globals__["StudyConfig"].model_validate(data)
    (out / "study.yaml").write_text(dump_study(cfg))
    r = next(x for x in cfg.recipes if x.name == "Multi+FT")
    for seed, b in rte_only.items():
        d = recipe_dir(out, seed, r)
        d.mkdir(parents=True)
        (d / "scores.json").write_text(json.dumps({"tasks": {"rte": {"dev": {"accuracy": b}}}, "primary": {"rte": b},
                                                   "average": b, "runs": {}, "recipe": r.name, "seed": seed}))
    rep = build(out)
    c = next(x for x in rep["comparisons"] if (x["recipe"], x["baseline"]) == ("Multi+FT", "Multi"))
    assert not c["same_tasks"]
    assert c["diff"]["rte"] == pytest.approx(100 * (sum(rte_only.values()) / 4 - (0.55 + 0.57 + 0.53 + 0.56) / 4))
    assert math.isnan(c["diff"]["Avg"]) and math.isnan(c["p"]["Avg"]) and math.isnan(c["median_diff"]["Avg"])
    same = next(x for x in rep["comparisons"] if (x["recipe"], x["baseline"]) == ("S→M", "Multi"))
    assert same["same_tasks"] and not math.isnan(same["diff"]["Avg"])
    # Holm's family: every test with a p-value; the left-out Avg is not one of them
    ps = [x["p"][k] for x in rep["comparisons"] for k in rep["columns"] if not math.isnan(x["p"][k])]
    smallest = min(ps)
    q = min(x["p_holm"][k] for x in rep["comparisons"] for k in rep["columns"] if x["p"][k] == smallest)
    assert q == pytest.approx(min(1.0, len(ps) * smallest))
    line = next(l for l in markdown(rep).splitlines() if l.startswith("| Multi+FT vs Multi |"))
    assert line.rstrip().endswith("| — | — |")  # Avg and Δ median Avg


def test_report_compares_recipes_on_each_slice_by_hand(tmp_path):
    """The report's comparisons repeated on each slice: mean paired difference, t-test, Holm over the slice table."""
    from scipy.stats import t as student_t

    from manytask.report.bam import build, markdown

    out = _hand_study(tmp_path)
    cfg = load_study(out / "study.yaml", saved=True)
    pronoun = {"Multi": {1: 0.50, 2: 0.55, 3: 0.52, 4: 0.50}, "S→M": {1: 0.52, 2: 0.58, 3: 0.54, 4: 0.53}}
    for name, per_seed in pronoun.items():
        for seed, v in per_seed.items():
            p = recipe_dir(out, seed, cfg.recipe(name)) / "scores.json"
            s = json.loads(p.read_text())
            s["tasks"]["rte"]["dev"]["slices"] = {"pronoun": {"n": 40, "accuracy": v}, "tiny": {"n": 7, "accuracy": v}}
            p.write_text(json.dumps(s))
    rep = build(out)
    rows = {(r["recipe"], r["baseline"], r["slice"]): r for r in rep["slice_comparisons"]}
    assert set(rows) == {("S→M", "Multi", "pronoun"), ("S→M", "Multi", "tiny")}  # only recipes that scored it
    d = [2.0, 3.0, 2.0, 3.0]
    mean = sum(d) / 4
    sd = (sum((x - mean) ** 2 for x in d) / 3) ** 0.5
    p = 2 * student_t.sf(mean / (sd / 2), 3)
    r = rows[("S→M", "Multi", "pronoun")]
    assert r["diff"] == pytest.approx(2.5) and r["p"] == pytest.approx(p, rel=1e-6) and r["n"] == 40
    assert r["p_holm"] == pytest.approx(min(1.0, 2 * p))  # two slice tests in this table's family
    md = markdown(rep)
    assert "## Slices: paired comparisons" in md and "| S→M vs Multi | rte | tiny | 7 ⚠ | +2.5 |" in md


def _with_tiny_slice(out: Path) -> Path:
    """Give Multi and S→M a 7-member RTE slice in every seed's scores."""
    cfg = load_study(out / "study.yaml", saved=True)
    for name in ("Multi", "S→M"):
        for seed in (1, 2, 3, 4):
            p = recipe_dir(out, seed, cfg.recipe(name)) / "scores.json"
            s = json.loads(p.read_text())
            s["tasks"]["rte"]["dev"]["slices"] = {"tiny": {"n": 7, "accuracy": 0.5 + seed / 100}}
            p.write_text(json.dumps(s))
    return out


def test_report_flags_a_slice_by_its_tasks_own_min_size(tmp_path):
    """'Too small to read' is the task's ``slices.min_size``, the rule evaluation flags by, not a second constant."""
    from manytask.report.bam import build, markdown

    rte = {"name": "rte", "slices": {"functions": [{"name": "tiny", "kind": "regex", "pattern": "x"}], "min_size": 5}}
    md = markdown(build(_with_tiny_slice(_hand_study(tmp_path / "own", rte=rte))))
    assert "| Multi | rte | tiny | 7 |" in md and "7 ⚠" not in md  # 7 members, min_size 5: readable
    default = markdown(build(_with_tiny_slice(_hand_study(tmp_path / "default"))))
    assert "| S→M vs Multi | rte | tiny | 7 ⚠ |" in default  # no min_size set: the default 30 flags it
