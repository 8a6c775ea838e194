"""Flexible multi-task model (Wei et al. 2022): branches, partial fine-tuning, compression, selection,
and the bundle — one trunk, one directory per task, changed one task at a time."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from manytask.bundles import Bundle, BundleError, TaskPackage, load_package, package_from_run
from manytask.bundles import package as package_mod
from manytask.bundles import store as store_mod
from manytask.cli import app
from manytask.config import DistillConfig
from manytask.data.features import TaskBatch
from manytask.data.target_store import TeacherTargets
from manytask.flex.pipeline import best_partial, select_mixed
from manytask.inference import tokenize
from manytask.io import tensors_hash
from manytask.models.multitask import MultiTaskModel, TaskOutput
from manytask.report.flex import write_report
from manytask.runs import Run
from manytask.tasks import glue_task
from manytask.training.objectives import TeacherObjective, value

TEXTS = ["good fine lovely day", "awful dull grim cold", "warm bright great", "poor bad"]
PAIRS = ["good day", "cold grim", "bright warm", "bad"]


def tiny_encoder(layers: int = 4) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=32), add_pooling_layer=False)


def spec(name: str):
    return glue_task("sst2").model_copy(update={"name": name})


def test_a_branch_copies_the_top_layers_and_the_trunk_runs_once():
    enc = tiny_encoder()
    model = MultiTaskModel(enc, [spec("x"), spec("y"), spec("z")], {"x": 2, "y": 1, "z": 0}).eval()
    assert model.split_depth == {"x": 2, "y": 3, "z": 4}
    for i, layer in enumerate(model.branches["x"]):
        assert layer is not enc.encoder.layer[2 + i]  # a copy the task owns ...
        for a, b in zip(layer.parameters(), enc.encoder.layer[2 + i].parameters()):
            assert torch.equal(a, b)  # ... starting from the encoder's weights
    # x: trunk to 2 then 2 own layers; y: trunk to 3 then 1; z: all 4 shared -> 4 + 2 + 1 layers
    assert model.layers_run() == 7 and model.layers_run(["x"]) == 4 and model.layers_run(["x", "y"]) == 6
    calls = []
    hooks = [layer.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(enc.encoder.layer)]
    ids = torch.randint(0, 64, (3, 7))
    out = model(ids, torch.ones_like(ids), tasks=["x", "y"])
    assert calls == [0, 1, 2]  # trunk once, only as deep as the deepest split needed (3)
    for h in hooks:
        h.remove()
    # before any training the branched model equals the plain encoder
    plain = MultiTaskModel(enc, [spec("x")]).eval()
    plain.heads["x"].load_state_dict(model.heads["x"].state_dict())
    assert torch.allclose(out["x"].logits, plain(ids, torch.ones_like(ids))["x"].logits, atol=1e-6)


def test_a_compressed_branch_starts_on_the_teachers_split_with_its_bottom_layers():
    enc = tiny_encoder()
    teacher = MultiTaskModel(enc, [spec("x")], {"x": 3})
    student = MultiTaskModel(enc, [spec("x")], {"x": 1}, split_depth={"x": 1})
    assert student.split_depth["x"] == teacher.split_depth["x"] == 1 and student.layers_run(["x"]) == 2
    with pytest.raises(ValueError, match="does not fit"):
        MultiTaskModel(enc, [spec("x")], {"x": 2}, split_depth={"x": 3})


def test_selection_rules():
    v = {"kd-1": {"score": 0.800, "layers": 1}, "kd-2": {"score": 0.796, "layers": 2},
         "kd-3": {"score": 0.815, "layers": 3}, "partial-4": {"score": 0.822, "layers": 4},
         "partial-1": {"score": 0.79, "layers": 1}, "partial-2": {"score": 0.81, "layers": 2}}
    ladder = ["kd-1", "kd-2", "kd-3", "partial-4"]
    # per layer (the paper): KD-2 dips, but KD-3 gains 1.5 points over KD-1 in 2 layers, 0.75 a layer;
    # then the teacher adds 0.7 in one more layer
    assert select_mixed(v, ladder, 0.5) == "partial-4"
    assert select_mixed(v, ladder, 0.72) == "kd-3"
    assert select_mixed(v, ladder, 0.8) == "kd-1"  # nothing above KD-1 gains 0.8 a layer (KD-3: 0.75, teacher: 0.73)
    assert select_mixed(v, ladder, 0.0) == "partial-4"
    # the earlier rule stops at the first rung that gains less than delta: the dip at KD-2
    assert select_mixed(v, ladder, 0.5, rule="next_step") == "kd-1"
    with pytest.raises(ValueError, match="unknown mixed-selection rule"):
        select_mixed(v, ladder, 0.5, rule="greedy")
    assert best_partial({**v, "partial-3": {"score": 0.822, "layers": 3}}) == "partial-3"  # fewer layers on a tie


PAPER = Path(__file__).resolve().parents[2] / "shared" / "papers" / "flexible_multitask_tables.json"


@pytest.mark.skipif(not PAPER.exists(), reason="needs ../shared/papers/flexible_multitask_tables.json")
def test_selection_reproduces_the_papers_mixed_rows_and_overheads():
    """Wei et al. 2022, Table 1 (partial fine-tuning by k) and Table 2 (KD-1..3) fed to our selection give
    the paper's w/o-KD row (67 layers) and its three mixed rows (33, 20 and 18 layers) exactly."""
    from manytask.report.flex import layers_per_input

    paper = json.loads(PAPER.read_text())
    L, tasks = 12, paper["tasks"]
    mixed_rows = {}
    w_o_kd = []
    for i, task in enumerate(tasks):
        variants = {f"partial-{k}": {"score": paper["partial_finetuning_by_k"][str(k)][i] / 100, "layers": k}
                    for k in range(4, 11)}
        teacher = best_partial(variants)  # k_t: best k in [4, 10], fewest layers on a tie
        k_t = variants[teacher]["layers"]
        w_o_kd.append((variants[teacher]["score"], L - k_t, k_t))
        for n in (1, 2, 3):
            variants[f"kd-{n}"] = {"score": paper["kd"][str(n)]["scores"][i] / 100, "layers": n}
        ladder = [f"kd-{n}" for n in (1, 2, 3) if n < k_t] + [teacher]
        for delta in (1, 2, 3):
            chosen = select_mixed(variants, ladder, delta)
            mixed_rows.setdefault(delta, []).append((variants[chosen]["score"], L - k_t, variants[chosen]["layers"]))
    assert [round(100 * s, 1) for s, _, _ in w_o_kd] == paper["without_kd"]["scores"]
    assert layers_per_input([(split, k) for _, split, k in w_o_kd]) == paper["without_kd"]["layers"] == 67
    for delta, row in zip((1, 2, 3), paper["mixed"]["rows"]):
        assert [round(100 * s, 1) for s, _, _ in mixed_rows[delta]] == row["scores"], delta
        assert layers_per_input([(split, n) for _, split, n in mixed_rows[delta]]) == row["layers"], delta
        assert round(sum(100 * s for s, _, _ in mixed_rows[delta]) / len(tasks), 1) == row["avg"], delta


def hinton_loss(spec, student, gold, teacher, lam, temperature):
    cfg = DistillConfig(targets="-", schedule="constant", lam=lam, temperature=temperature, style="hinton")
    return value(TeacherObjective(spec, cfg, teacher), TaskOutput(student), TaskBatch(None, torch.arange(len(gold)), gold))


def test_hinton_loss_by_hand():
    import math

    sst2, stsb = glue_task("sst2"), glue_task("stsb")
    student, teacher, gold = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([0])
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax(student / 2)
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax(teacher / 2)
    kl = sum(t * math.log(t / s) for t, s in zip(pt, ps))
    ce = -math.log(math.e / (math.e + 1))  # gold loss: plain cross-entropy at T = 1
    assert hinton_loss(sst2, student, gold, teacher, 0.5, 2.0).item() == pytest.approx(0.5 * ce + 0.5 * 4 * kl, rel=1e-5)
    assert hinton_loss(sst2, student, gold, student, 0.0, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    # regression: L2 between sigmoid outputs, gold on the [0, 1] scale
    out, teach, label = torch.tensor([0.0]), torch.tensor([math.log(3.0)]), torch.tensor([0.2])  # head output: (B,)
    want = 0.25 * (0.5 - 0.2) ** 2 + 0.75 * (0.5 - 0.75) ** 2
    assert hinton_loss(stsb, out, label, teach, 0.25, 2.0).item() == pytest.approx(want, rel=1e-5)


# ---- the pipeline at debug scale ------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_runs_every_variant_and_keeps_the_trunk_frozen(flex_run):
    cfg, out, result = flex_run
    L = result["encoder_layers"]
    assert L == 4 and set(result["tasks"]) == {"sst2", "stsb", "mrpc"}
    teachers = set()
    for task, sel in result["tasks"].items():
        v = sel["variants"]
        assert set(v) == {"full", "partial-2", "partial-3", "kd-1"}
        # the teacher is the selected partial fine-tuning (best k on dev), and KD-1 sits on its split depth
        teacher = best_partial(v)
        teachers.add(teacher)
        k_t = v[teacher]["layers"]
        assert sel["teacher"] == teacher == sel["selected"]["partial"]
        assert (v["partial-2"]["split_depth"], v["partial-3"]["split_depth"], v["kd-1"]["split_depth"]) == (2, 1, L - k_t)
        assert sel["ladder"] == ["kd-1", teacher]
        assert sel["selected"]["mixed"] == select_mixed(v, sel["ladder"], cfg.mixed.delta, cfg.mixed.rule)
        kd_cfg = Run.open(out / v["kd-1"]["run"]).cfg
        assert kd_cfg.distill.style == "hinton" and kd_cfg.distill.temperature == 2.0
        assert Path(kd_cfg.model.init_from) == (out / task / f"partial-k{k_t}").resolve()
        assert kd_cfg.model.init_checkpoint == "best"
        targets = TeacherTargets.load(out / task / f"partial-k{k_t}" / "targets" / f"{task}.safetensors")
        assert targets.teacher["layers"] == k_t and targets.teacher["checkpoint"] == "best"
    # every partial and KD run leaves the trunk as it was: one trunk hash across them, another for full
    hashes = {tensors_hash(package_mod.trunk_tensors(Run.open(out / t / r).model_for(t).state_dict()))
              for t in result["tasks"] for r in ("partial-k2", "partial-k3", "kd-1")}
    assert len(hashes) == 1
    full = Run.open(out / "sst2" / "full").model_for("sst2").state_dict()
    assert tensors_hash(package_mod.trunk_tensors(full)) not in hashes


@pytest.mark.slow
def test_the_student_starts_from_the_teacher_branchs_bottom_layers(flex_run):
    """The KD student's initial weights are exactly the teacher's trunk, and the teacher branch's bottom
    layers from the checkpoint the teacher was scored with (built by the code path training uses)."""
    from manytask.runs import initial_model

    _, out, result = flex_run
    for task, sel in result["tasks"].items():
        teacher_run = Run.open(out / sel["variants"][sel["teacher"]]["run"])
        teacher = teacher_run.model_for(task, "best").state_dict()
        student_cfg = Run.open(out / sel["variants"]["kd-1"]["run"]).cfg
        student = initial_model(student_cfg).state_dict()
        own = [k for k in student if k.startswith(f"branches.{task}.")]
        assert own and all(k.startswith(f"branches.{task}.0.") for k in own)  # one layer: the teacher's first
        for k, v in student.items():
            assert torch.equal(v, teacher[k]), k
        assert any(k.startswith(f"branches.{task}.1.") for k in teacher)  # the teacher had more layers


@pytest.mark.slow
def test_report_has_table_2_rows_and_a_plot(flex_run):
    cfg, out, result = flex_run
    rep = write_report(out, cfg.mixed.delta)
    rows = {r["setting"]: r for r in rep["rows"]}
    assert list(rows) == ["full", "partial", "kd-1", "mixed"]
    assert rows["full"]["layers_total"] == 12 and rows["full"]["overhead_pct"] == 100
    deepest_split = max(4 - result["tasks"][t]["variants"][result["tasks"][t]["teacher"]]["layers"] for t in result["tasks"])
    assert rows["kd-1"]["layers_total"] == deepest_split + 3  # trunk to the deepest teacher split, one own layer each
    assert "| KD-1 |" in rep["markdown"] and (out / "flex.png").stat().st_size > 1000
    # tiny BERT: hidden 32, intermediate 64, 32 tokens -> 2*32*(4*32*32 + 2*32*64) + 4*32*32*32 FLOPs a layer
    per_layer = 2 * 32 * (4 * 32 * 32 + 2 * 32 * 64) + 4 * 32 * 32 * 32
    assert rows["kd-1"]["gflops_per_input"] == pytest.approx((deepest_split + 3) * per_layer / 1e9)
    assert json.loads((out / "report.json").read_text())["rows"][0]["setting"] == "full"
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and "| mixed |" in res.output and "GFLOPs" in res.output
    res = CliRunner().invoke(app, ["report", str(out / "sst2")])
    assert res.exit_code == 2 and "neither a study" in res.output


# ---- the bundle -------------------------------------------------------------------------------------------
def encode(bundle: Bundle, texts=TEXTS, pairs=None) -> dict:
    return tokenize(bundle.tokenizer(), texts, pairs, bundle.manifest["trunk"]["max_seq_length"])


def outputs(model, batch, tasks) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=tasks)
    return {t: o.logits for t, o in out.items()}


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def selected_run(flex_run, task: str) -> Path:
    _, out, result = flex_run
    sel = result["tasks"][task]
    return out / sel["variants"][sel["selected"][flex_run[0].bundle]]["run"]


def other_run(flex_run, task: str) -> Path:
    """A variant of the task that is not the one in the bundle (for updates)."""
    _, out, result = flex_run
    sel = result["tasks"][task]
    chosen = sel["selected"][flex_run[0].bundle]
    name = next(k for k in ("partial-2", "kd-1", "partial-3") if k != chosen)
    return out / sel["variants"][name]["run"]


def test_oracle_merged_model_equals_each_tasks_own_model(flex_run, bundle):
    merged = bundle.merged_model()
    assert sorted(merged.task_names) == ["mrpc", "sst2", "stsb"]
    for pairs in (None, PAIRS):
        batch = encode(bundle, TEXTS, pairs)
        together = outputs(merged, batch, merged.task_names)
        for task in merged.task_names:
            own = Run.open(selected_run(flex_run, task)).model_for(task)
            expected = outputs(own, batch, [task])[task]
            torch.testing.assert_close(together[task], expected, rtol=1e-5, atol=1e-5)
    # the merged model runs fewer layers than one model per task
    assert merged.layers_run() < 3 * 4


def files_of(root: Path, directory: str) -> dict[str, str]:
    d = root / directory
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_update_add_remove_leave_the_other_tasks_untouched(flex_run, bundle):
    before = {t: files_of(bundle.root, e["dir"]) for t, e in bundle.manifest["tasks"].items()}
    dirs = {t: e["dir"] for t, e in bundle.manifest["tasks"].items()}
    trunk = files_of(bundle.root, "trunk")
    batch = encode(bundle)
    ref = outputs(bundle.merged_model(), batch, ["sst2", "stsb"])

    # update sst2 with another variant
    bundle.put(package_from_run(other_run(flex_run, "sst2"), "sst2"), replace=True)
    after = bundle.manifest["tasks"]
    assert after["sst2"]["dir"] != dirs["sst2"] and not (bundle.root / dirs["sst2"]).exists()
    for t in ("stsb", "mrpc"):
        assert after[t]["dir"] == dirs[t] and files_of(bundle.root, dirs[t]) == before[t]
    assert files_of(bundle.root, "trunk") == trunk
    new = outputs(bundle.merged_model(), batch, ["sst2", "stsb"])
    assert torch.equal(new["stsb"], ref["stsb"])  # bit-identical
    assert not torch.equal(new["sst2"], ref["sst2"])
    expected = outputs(Run.open(other_run(flex_run, "sst2")).model_for("sst2"), batch, ["sst2"])["sst2"]
    torch.testing.assert_close(new["sst2"], expected, rtol=1e-5, atol=1e-5)

    # remove, then add back
    bundle.remove("stsb")
    assert bundle.task_names() == ["mrpc", "sst2"] and not (bundle.root / dirs["stsb"]).exists()
    assert files_of(bundle.root, dirs["mrpc"]) == before["mrpc"]
    with pytest.raises(BundleError, match="not in the bundle"):
        bundle.remove("stsb")
    with pytest.raises(BundleError, match="use add"):
        bundle.put(package_from_run(selected_run(flex_run, "stsb"), "stsb"), replace=True)
    bundle.put(package_from_run(selected_run(flex_run, "stsb"), "stsb"), replace=False)
    assert torch.equal(outputs(bundle.merged_model(), batch, ["stsb"])["stsb"], ref["stsb"])
    with pytest.raises(BundleError, match="already in the bundle"):
        bundle.put(package_from_run(selected_run(flex_run, "stsb"), "stsb"), replace=False)


def test_a_task_trained_on_another_trunk_is_refused(flex_run, bundle):
    _, out, _ = flex_run
    full = package_from_run(out / "sst2" / "full", "sst2")  # full fine-tuning changed its trunk
    with pytest.raises(BundleError, match="trained on trunk .* needs the same frozen encoder"):
        bundle.put(full)
    # a package whose recorded trunk was edited on disk is refused when served
    entry = bundle.manifest["tasks"]["mrpc"]
    meta_path = bundle.root / entry["dir"] / "task.json"
    meta = json.loads(meta_path.read_text())
    meta["trunk_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="damaged"):  # the manifest's file hash catches it first
        bundle.merged_model()


def test_an_interrupted_update_leaves_the_previous_bundle_intact(flex_run, bundle, monkeypatch):
    manifest = (bundle.root / "manifest.json").read_bytes()
    batch = encode(bundle)
    ref = outputs(bundle.merged_model(), batch, ["sst2", "mrpc", "stsb"])
    pkg = package_from_run(other_run(flex_run, "sst2"), "sst2")

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    # 1. killed while writing the new task's files
    monkeypatch.setattr(package_mod, "save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        bundle.put(pkg)
    monkeypatch.undo()
    assert (bundle.root / "manifest.json").read_bytes() == manifest
    assert not list((bundle.root / "tasks").glob(".staging-*"))
    # 2. killed after the new task directory was in place, before the manifest was replaced
    monkeypatch.setattr(store_mod, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        bundle.put(pkg)
    monkeypatch.undo()
    assert (bundle.root / "manifest.json").read_bytes() == manifest
    reopened = Bundle(bundle.root).merged_model()
    for t, v in outputs(reopened, batch, ["sst2", "mrpc", "stsb"]).items():
        assert torch.equal(v, ref[t])
    # the orphan directory is collected by the next change
    assert len(list((bundle.root / "tasks").iterdir())) == 4
    bundle.remove("mrpc")
    bundle.put(package_from_run(selected_run(flex_run, "mrpc"), "mrpc"))
    assert len(list((bundle.root / "tasks").iterdir())) == 3


def test_a_damaged_or_foreign_package_gives_a_clear_error(flex_run, bundle, tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle(tmp_path)
    with pytest.raises(BundleError, match="neither a task package"):
        load_package(tmp_path)
    with pytest.raises(BundleError, match="name the task"):
        load_package(selected_run(flex_run, "sst2"))
    with pytest.raises(BundleError, match="has no task 'cola'"):
        load_package(selected_run(flex_run, "sst2"), "cola")
    pkg = bundle.package("sst2")
    pkg.write(tmp_path / "pkg")
    assert TaskPackage.read(tmp_path / "pkg").tensors.keys() == pkg.tensors.keys()
    weights = bundle.root / bundle.manifest["tasks"]["sst2"]["dir"] / "task.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="task.safetensors: content hash differs"):
        bundle.package("sst2")


def test_bundle_cli(flex_run, bundle):
    runner = CliRunner()
    res = runner.invoke(app, ["bundle", "list", str(bundle.root)])
    assert res.exit_code == 0 and "sst2" in res.output and "trunk" in res.output
    res = runner.invoke(app, ["bundle", "remove", str(bundle.root), "mrpc"])
    assert res.exit_code == 0 and bundle.task_names() == ["sst2", "stsb"]
    res = runner.invoke(app, ["bundle", "add", str(bundle.root), "--from", str(selected_run(flex_run, "mrpc")),
                              "--task", "mrpc"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["bundle", "update", str(bundle.root), "--from", str(flex_run[1] / "sst2" / "full"),
                              "--task", "sst2"])
    assert res.exit_code == 2 and "trunk" in res.output
    res = runner.invoke(app, ["bundle", "list", str(bundle.root / "nope")])
    assert res.exit_code == 2 and "not a bundle" in res.output
