import json

import pytest
from safetensors.torch import load_file

from manytask.config import load_config
from manytask.runs import Run, train_run


def _weights(run_dir):
    info = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / info["weights"]))


def test_resume_after_kill_matches_uninterrupted_run(mini_glue, tiny_config, tmp_path):
    tiny_config["train"].update(steps=12, eval_every=None, checkpoint_every=4)
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
    result = Run.open(out).evaluate()
    for task, info in best.items():
        assert result["primary"][task] == pytest.approx(info["score"], abs=1e-6)
