"""What a GPU run needs, checked on the CPU: each finding of the GPU review that a CPU can show, and the
training knobs GPU users expect (gradient accumulation, early stopping, tracking, prefetching)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from manytask import runtime
from manytask.config import load_config
from manytask.errors import ManytaskError
from manytask.runs import Run, train_run


def _weights(run_dir) -> dict:
    info = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / info["weights"]))


def _close(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_state_saved_on_a_gpu_loads_on_the_cpu(mini_glue, tiny_config, tmp_path):
    """The training state's tensors are tagged with the device they were saved from; one written on a GPU is
    read back onto the CPU (resuming a GPU run on a CPU failed with 'Attempting to deserialize ... CUDA')."""
    tiny_config["train"].update(steps=4, eval_every=None, checkpoint_every=2)
    train_run(load_config(data=tiny_config), tmp_path / "r", stop_at=2)
    info = json.loads((tmp_path / "r" / "checkpoints" / "last.json").read_text())
    state = tmp_path / "r" / "checkpoints" / info["state"]
    src, out = zipfile.ZipFile(state), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for n in src.namelist():
            data = src.read(n)
            if n.endswith("data.pkl"):  # as torch.save wrote it on a GPU: every storage on cuda:0
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(n, data)
    state.write_bytes(out.getvalue())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(state, weights_only=False)
    summary = train_run(load_config(data=tiny_config), tmp_path / "r", resume=True)
    assert summary["total_steps"] == 4


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(runtime.DeviceError, match="every rank would take that one GPU"):
        runtime.resolve_device("cuda:0")


def test_ray_stages_ask_for_a_gpu_where_the_cluster_has_them():
    from manytask.fanout import stage_gpus

    assert stage_gpus("auto", 4) == 1.0 and stage_gpus("cuda", 1) == 1.0
    assert stage_gpus("auto", 0) == 0.0 and stage_gpus("cpu", 4) == 0.0


def test_auto_precision_is_resolved_before_it_reaches_autocast(mini_glue, tiny_config, tmp_path):
    """``auto`` reached autocast raw (which read it as fp16): evaluating a run trained with ``precision: auto``
    moved its scores. Resolved (on a CPU: bf16 where it computes bf16, else fp32), the run records the resolved
    precision, and evaluation gives the training run's own scores."""
    tiny_config["train"].update(precision="auto", steps=4, eval_every=None)
    summary = train_run(load_config(data=tiny_config), tmp_path / "r")
    run = Run.open(tmp_path / "r")
    assert run.precision == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")
    assert run.evaluate()["primary"] == summary["final"]["primary"]


def test_bf16_is_chosen_only_where_the_gpu_computes_it():
    gpu = torch.device("cuda", 0)
    assert runtime.resolve_precision("auto", gpu, native_bf16=True) == "bf16"
    assert runtime.resolve_precision("auto", gpu, native_bf16=False) == "fp32"  # emulated on V100/T4
    assert runtime.inference_precision("fp16", torch.device("cpu")) == "fp32"


def test_a_skipped_fp16_step_leaves_the_learning_rate_schedule_where_it_was(mini_glue, tiny_config, tmp_path):
    from manytask.data.loading import load_tasks
    from manytask.encoders.loading import load_encoder, load_tokenizer
    from manytask.runs import build_model, featurize
    from manytask.training.step import prepare
    from manytask.training.trainer import Trainer

    class SkippingScaler:  # what GradScaler does on an overflow: no optimizer step, a lower scale
        scale_now = 1024.0

        def is_enabled(self):
            return True

        def scale(self, loss):
            return loss

        def unscale_(self, optimizer):
            pass

        def get_scale(self):
            return self.scale_now

        def step(self, optimizer):
            pass

        def update(self):
            self.scale_now /= 2

    cfg = load_config(data=tiny_config)
    data, _ = load_tasks(cfg)
    tok = load_tokenizer(cfg.model.encoder)
    model = build_model(cfg, [d.spec for d in data], load_encoder(cfg.model))
    trainer = Trainer(model, featurize(data, tok, 32), cfg.train, tmp_path, cfg.seed, tok.pad_token_id)
    before = trainer.scheduler.last_epoch
    prepared = prepare(trainer.step_tasks, trainer.plan.steps[0], tok.pad_token_id, trainer.device)
    trainer._optimizer_step(prepared)
    assert trainer.scheduler.last_epoch == before + 1  # a real scaler that did not skip
    trainer.scaler = SkippingScaler()
    trainer._optimizer_step(prepared)
    assert trainer.scheduler.last_epoch == before + 1  # skipped: the schedule waits


def _blind_rank(rank: int, root: str, port: int, results) -> None:
    import os

    from manytask.models.checkpoints import CheckpointDir
    from manytask.training.trainer import resume_point

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        resume_point(CheckpointDir(os.path.join(root, f"rank{rank}")))  # rank 1 sees an empty directory
        results.put((rank, "resumed"))
    except ManytaskError as e:
        results.put((rank, str(e)))
    finally:
        torch.distributed.destroy_process_group()


def test_a_rank_that_cannot_see_the_checkpoint_fails_with_the_others(tmp_path):
    """Rank 0 decides where to resume; a rank that cannot see that checkpoint (another machine, no shared
    directory) makes every rank fail naming it, instead of waiting alone at a barrier."""
    import socket

    import torch.multiprocessing as mp

    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank1").mkdir()
    for f in ("weights-00000002.safetensors", "state-00000002.pt"):
        (tmp_path / "rank0" / f).write_bytes(b"x")
    (tmp_path / "rank0" / "last.json").write_text(json.dumps({"step": 2, "weights": "weights-00000002.safetensors",
                                                              "state": "state-00000002.pt"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_blind_rank, args=(r, str(tmp_path), port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert set(got) == {0, 1}
    assert all("rank(s) [1] cannot see checkpoint step 2" in v for v in got.values()), got


def test_a_non_finite_loss_stops_the_run_before_any_checkpoint_past_it(mini_glue, tiny_config, tmp_path):
    from manytask.training.objectives import task_objectives

    class Poisoned:
        def __init__(self, own):
            self.own, self.calls = own, 0
            self.name, self.weight = own.name, own.weight

        def counts(self, batch):
            return self.own.counts(batch)

        def sums(self, out, batch, progress):
            self.calls += 1
            sums = self.own.sums(out, batch, progress)
            return [s * float("nan") for s in sums] if progress >= 0.5 else sums

        def combine(self, means):
            return self.own.combine(means)

        def log_state(self, progress):
            return {}

    def objectives(spec, entry, train, distill):
        built = task_objectives(spec, entry, train, distill)
        built.own = Poisoned(built.own)
        return built

    tiny_config["train"].update(steps=8, eval_every=None, checkpoint_every=2, log_every=2)
    with pytest.raises(FloatingPointError, match="not finite"):
        train_run(load_config(data=tiny_config), tmp_path / "r", objectives=objectives)
    assert json.loads((tmp_path / "r" / "checkpoints" / "last.json").read_text())["step"] == 4


def test_tf32_and_determinism_are_set_from_the_config(tiny_config):
    from manytask.config import TrainConfig
    from manytask.training.trainer import _numerics

    before = torch.get_float32_matmul_precision()
    try:
        _numerics(TrainConfig(tf32=False), torch.device("cuda", 0))
        assert torch.get_float32_matmul_precision() == "highest"
        _numerics(TrainConfig(tf32=True), torch.device("cuda", 0))
        assert torch.get_float32_matmul_precision() == "high"
        _numerics(TrainConfig(deterministic=True), torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_float32_matmul_precision(before)
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("batching", ["per_task", "mixed"])
def test_gradient_accumulation_and_prefetching_train_the_same_weights(mini_glue, tiny_config, tmp_path, batching):
    """Two micro-batches of 4 (counts of the whole step reduced once) give the weights of one batch of 8, and
    collating ahead in a thread changes nothing."""
    tiny_config["model"]["dropout"] = 0.0
    tiny_config["train"].update(steps=6, eval_every=None, batching=batching)
    runs = {}
    for name, extra in {"one": {}, "acc": {"gradient_accumulation_steps": 2},
                        "noprefetch": {"prefetch": 0}}.items():
        cfg = {**tiny_config, "train": {**tiny_config["train"], **extra}}
        train_run(load_config(data=cfg), tmp_path / name)
        runs[name] = _weights(tmp_path / name)
    assert _close(runs["one"], runs["acc"]) < 1e-5
    assert _close(runs["one"], runs["noprefetch"]) == 0.0


def test_early_stopping_keeps_the_best_and_a_resume_does_not_train_on(mini_glue, tiny_config, tmp_path):
    tiny_config["train"].update(steps=24, eval_every=2, patience=1, min_delta=100.0, lr=1e-3)  # no gain is enough
    summary = train_run(load_config(data=tiny_config), tmp_path / "r")
    assert summary["early_stopped"] and summary["steps_run"] == 4  # first evaluation sets the best, the second stops
    events = [json.loads(l)["event"] for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "early_stop" in events and events.count("eval") == 2
    again = train_run(load_config(data=tiny_config), tmp_path / "r", resume=True)
    assert again["steps_run"] == 4  # finished: the results, not more training


def test_tensorboard_tracks_where_installed_and_a_missing_tracker_is_named(mini_glue, tiny_config, tmp_path):
    from manytask.training.tracking import TrackingError, installed

    tiny_config["train"].update(steps=4, eval_every=2, log_every=2)
    if installed("tensorboard"):
        train_run(load_config(data=tiny_config), tmp_path / "r")
        assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    missing = next((n for n in ("wandb", "mlflow") if not installed(n)), None)
    if missing:
        tiny_config["train"]["report_to"] = [missing]
        with pytest.raises(TrackingError, match=f"{missing} is not installed .pip install {missing}"):
            train_run(load_config(data=tiny_config), tmp_path / "r2")


def test_serving_workers_take_the_gpus_in_turn_and_fp16_needs_a_gpu(tmp_path):
    from manytask.models.precision import PrecisionError, check
    from manytask.serving.factory import worker_device

    slots = str(tmp_path / "slots")
    assert [worker_device("cuda", slots, count=2) for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cpu", slots, count=2) == "cpu" and worker_device("cuda", slots, count=1) == "cuda"
    with pytest.raises(PrecisionError, match="fp16 serves on a CUDA GPU"):
        check("fp16", torch.device("cpu"))
