"""Data parallelism on torch.distributed, on the CPU (gloo), as `make test` runs it: 2 ranks x batch 8 train
the same weights as 1 process x batch 16, and a 2-rank run killed mid-way and resumed (by 2 ranks, or by
1) ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # several processes

TOLERANCE = 1e-5  # float sums in another order (per-rank partial sums, all-reduced): not bit-identical


def _cfg(tmp_path: Path, steps: int, checkpoint_every=None, batching: str = "per_task") -> Path:
    from tests.conftest import TINY

    # SST-2 capped at 17: its last batch has one example, so one rank sits that step out (weight 0)
    cfg = {"seed": 3, "tasks": [{"name": "sst2", "max_train": 17}, "stsb", "mrpc"], "model": {**TINY, "dropout": 0.0},
           "train": {"batch_size": 16, "steps": steps, "lr": 1e-3, "progress": False, "log_every": 5,
                     "device": "cpu", "checkpoint_every": checkpoint_every, "batching": batching}}
    path = tmp_path / f"c{steps}-{batching}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(mini_glue) -> dict:
    return {**os.environ, "MANYTASK_GLUE_DIR": str(mini_glue), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "manytask.cli", *args]


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and every rank at once. The ranks run in sessions of their own, so killing the
    launcher's process group would leave them training (and pruning checkpoints) under the resumed run."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in reversed(procs):
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _weights(run_dir: Path) -> dict:
    info = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / info["weights"]))


def _close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("batching", ["per_task", "mixed"])
def test_two_ranks_train_the_weights_of_one_process_with_the_whole_batch(mini_glue, tmp_path, batching):
    """Mixed batches too: each rank takes every W-th example of each task's part, a rank without any of a
    task's examples runs one with weight 0, and the counts are reduced once per step."""
    cfg = _cfg(tmp_path, 12, batching=batching)
    env = _env(mini_glue)
    one = subprocess.run([sys.executable, "-m", "manytask.cli", "train", "-c", str(cfg), "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(_torchrun(2, "train", "-c", str(cfg), "-o", str(tmp_path / "two")), env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _close(_weights(tmp_path / "one"), _weights(tmp_path / "two")) < TOLERANCE
    # every rank scored its share of the dev sets, gathered: the scores are the one process's
    scores = [json.loads((tmp_path / r / "results.json").read_text())["final"]["primary"] for r in ("one", "two")]
    assert scores[0].keys() == scores[1].keys()
    assert all(abs(scores[0][t] - scores[1][t]) < 1e-3 for t in scores[0])
    # rank 0 alone wrote the run: one metrics log, one results file, one table printed
    log = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    events = [e["event"] for e in log]
    assert events.count("plan") == 1 and events.count("end") == 1
    sst2 = log[0]["draws"]["sst2"]
    if batching == "per_task":
        assert sst2["examples"] < 16 * sst2["batches"]  # the plan held short SST-2 batches (one rank idle)
    assert two.stdout.count("| dev, last step (one model) |") == 1


def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_weights(mini_glue, tmp_path):
    steps = 200
    cfg = _cfg(tmp_path, steps, checkpoint_every=2)
    env = _env(mini_glue)
    full = subprocess.run(_torchrun(2, "train", "-c", str(cfg), "-o", str(tmp_path / "full")), env=env,
                          capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_torchrun(2, "train", "-c", str(cfg), "-o", str(cut)), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = cut / "checkpoints" / "last.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 6:
            _kill_tree(proc.pid)
            break
        time.sleep(0.02)
    proc.wait(60)
    killed_at = json.loads(pointer.read_text())["step"]
    if killed_at >= steps:
        pytest.skip("the run finished before it could be killed")
    for n, out in ((2, cut),):
        res = subprocess.run(_torchrun(n, "train", "-c", str(cfg), "-o", str(out), "--resume"), env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    assert _close(_weights(tmp_path / "full"), _weights(cut)) < TOLERANCE


def test_a_run_resumed_by_another_number_of_processes_carries_on(mini_glue, tmp_path):
    """Stopped at a checkpoint by 2 ranks, finished by 1: the plan and the weights carry on (no dropout here,
    so the result equals the uninterrupted 2-rank run's)."""
    cfg12, env = _cfg(tmp_path, 12, checkpoint_every=4), _env(mini_glue)
    full = subprocess.run(_torchrun(2, "train", "-c", str(cfg12), "-o", str(tmp_path / "full")), env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    part = subprocess.run(_torchrun(2, "train", "-c", str(cfg12), "-o", str(tmp_path / "part"), "--stop-at", "8"),
                          env=env, capture_output=True, text=True, timeout=600)
    assert part.returncode == 0, part.stderr[-3000:]
    assert json.loads((tmp_path / "part" / "checkpoints" / "last.json").read_text())["step"] == 8
    res = subprocess.run([sys.executable, "-m", "manytask.cli", "train", "-o", str(tmp_path / "part"), "--resume"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "re-seeded" in res.stderr
    assert _close(_weights(tmp_path / "full"), _weights(tmp_path / "part")) < TOLERANCE
