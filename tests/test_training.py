import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from manytask.config import load_config
from manytask.runs import Run, train_run


def _weights(run_dir):
    info = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / info["weights"]))


@pytest.mark.parametrize("batching", ["per_task", "mixed"])
def test_resume_after_kill_matches_uninterrupted_run(mini_glue, tiny_config, tmp_path, batching):
    tiny_config["train"].update(steps=12, eval_every=None, checkpoint_every=4, batching=batching)
    full = train_run(load_config(data=tiny_config), tmp_path / "full")

    class Killed(Exception):
        pass

    import manytask.training.trainer as trainer_mod

    original = trainer_mod.Trainer._emit

    def kill_after_step_8(self, event, payload):
        original(self, event, payload)
        if event == "log" and self.step == 9:
            raise Killed()

    trainer_mod.Trainer._emit = kill_after_step_8
    try:
        with pytest.raises(Killed):
            train_run(load_config(data=tiny_config), tmp_path / "cut")
    finally:
        trainer_mod.Trainer._emit = original
    assert json.loads((tmp_path / "cut" / "checkpoints" / "last.json").read_text())["step"] == 8
    resumed = train_run(load_config(data=tiny_config), tmp_path / "cut", resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed run diverged from the uninterrupted one"
    assert resumed["draws"] == full["draws"]


def test_existing_run_is_not_overwritten(mini_glue, tiny_config, tmp_path):
    tiny_config["train"].update(steps=2, eval_every=None)
    train_run(load_config(data=tiny_config), tmp_path / "r")
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(load_config(data=tiny_config), tmp_path / "r")


def test_best_checkpoint_per_task_and_run_files(mini_glue, tiny_config, tmp_path):
    out = tmp_path / "r"
    summary = train_run(load_config(data=tiny_config), out)
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert set(best) == {"cola", "sst2", "mrpc", "stsb", "mnli"}
    for task, info in best.items():
        assert (out / "checkpoints" / info["weights"]).exists()
    kept = sorted(p.name for p in (out / "checkpoints").glob("weights-*"))
    referenced = {i["weights"] for i in best.values()} | {json.loads((out / "checkpoints" / "last.json").read_text())["weights"]}
    assert set(kept) == referenced  # nothing stale left behind
    events = [json.loads(l)["event"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "plan" and events.count("eval") == 2 and events[-1] == "end"
    data = json.loads((out / "data.json").read_text())
    assert "re-split" in data["tasks"]["mnli"]["eval"]["dev_matched_heldout"]["title"]
    assert sum(d["batches"] for d in summary["draws"].values()) == 12
    result = Run.open(out).evaluate("best")
    for task, info in best.items():
        assert result["primary"][task] == pytest.approx(info["score"], abs=1e-6)


def test_a_mixed_batch_goes_through_the_trunk_once_and_each_example_through_its_own_head(mini_glue, tiny_config,
                                                                                       tmp_path):
    """The mixed-batch loss is the mean over the batch's examples of each one's own task loss."""
    import torch

    from manytask.data.features import collate
    from manytask.data.loading import load_tasks
    from manytask.encoders.loading import load_encoder, load_tokenizer
    from manytask.kinds import kind_of
    from manytask.runs import build_model, featurize
    from manytask.training.trainer import Trainer

    tiny_config["model"]["dropout"] = 0.0
    tiny_config["train"].update(batching="mixed", group_by_length=False)
    cfg = load_config(data=tiny_config)
    data, _ = load_tasks(cfg)
    tok = load_tokenizer(cfg.model.encoder)
    torch.manual_seed(0)
    model = build_model(cfg, [d.spec for d in data], load_encoder(cfg.model))
    feats = featurize(data, tok, cfg.model.max_seq_length)
    trainer = Trainer(model, feats, cfg.train, tmp_path, cfg.seed, tok.pad_token_id)
    mixed = [s for s in trainer.plan.steps if len(s) >= 3]
    assert mixed, "the plan should hold batches with several tasks"
    step = mixed[0]
    model.eval()
    loss, per_task = trainer.step_loss(step)
    by_name = {f.spec.name: f for f in feats}
    want, n = 0.0, sum(len(i) for i in step.values())
    for task, idx in step.items():
        inputs, batches = collate({task: (by_name[task].train, idx)}, tok.pad_token_id)  # the task's examples alone
        logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=[task])[task].logits
        kind = kind_of(by_name[task].spec)
        total, count = kind.loss(logits, batches[task].labels), kind.count(batches[task].labels)
        own = total / count
        assert per_task[task].item() == pytest.approx(own.item(), abs=1e-5), task
        want += own.item() * len(idx) / n
    assert loss.item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "pooler"])
def test_eval_scores_one_model_by_default(mini_glue, tiny_config, tmp_path, pooling):
    """The default average is one model's (the last checkpoint); per-task best checkpoints are asked for."""
    out = tmp_path / "r"
    tiny_config["model"]["pooling"] = pooling  # the reopened run rebuilds its pooler too
    summary = train_run(load_config(data=tiny_config), out)
    last = Run.open(out).evaluate()
    assert last["checkpoint"] == "last"
    for task, value in last["primary"].items():
        assert value == pytest.approx(summary["final"]["primary"][task], abs=1e-6)


def test_compiled_layers_train_and_keep_their_weight_names(mini_glue, tiny_config, tmp_path):
    """``train.compile`` compiles each encoder layer in place: the run trains (dropout draws differ from eager
    mode, so losses are not compared), its checkpoint has the weight names of an uncompiled run's, and compiled
    layers answer as eager ones on the same weights."""
    import manytask as mt
    from manytask.models.multitask import compile_layers

    tiny_config["tasks"] = ["sst2"]
    keys = {}
    for compiled in (False, True):
        seen = []
        mt.train(tiny_config, out=tmp_path / f"run-{compiled}", callbacks=[lambda e, r: seen.append(r) if e == "log" else 0],
                 overrides={"train.steps": 3, "train.eval_every": None, "train.log_every": 1, "train.compile": compiled})
        assert len(seen) == 3 and all(math.isfinite(r["loss"]["sst2"]) for r in seen)
        keys[compiled] = sorted(load_file(str(next((tmp_path / f"run-{compiled}" / "checkpoints").glob("*.safetensors")))))
    assert keys[True] == keys[False] and not any("_orig_mod" in k for k in keys[True])
    run = mt.open_run(tmp_path / "run-True")
    eager = run.model_for("sst2").eval()
    fast = copy.deepcopy(eager)
    compile_layers(fast)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        want = eager(ids, mask, torch.zeros_like(ids))["sst2"].logits
        got = fast(ids, mask, torch.zeros_like(ids))["sst2"].logits
    assert torch.allclose(got, want, atol=1e-4)
